"""Let a ``BitConv2d`` take over the sign-preserving layers in front of it.

A binary-input conv only sees ``sign(x)`` (0 -> +1). Layers between the previous layer and it
that cannot change that sign are wasted float passes:

* ``Identity``, eval ``Dropout``, and ``Hardtanh`` with ``min_val < 0 <= max_val`` (negative
  values stay negative, the others non-negative): replaced by ``Identity``;
* one ``MaxPool2d`` (no dilation, no ceil mode, no indices): sign is non-decreasing, so it
  commutes with max, and the max of +-1 values is the OR of their bits: the conv packs the
  unpooled input and pools the packed words (``BitConv2d.pre_pool``).

Where another ``BitConv2d`` (not a linear) comes before those layers, with only elementwise
non-decreasing or BatchNorm layers and at most one such max-pool in between, the two are chained
on packed bits instead (``fuse_packed``): the first emits the second's input bits directly. Its
exact integer sum ``v`` decides each bit; the float epilogue and the layers in between (folded or
unfolded BatchNorm, hardtanh, ReLU, dropout, identity), all monotone in ``v``, are run once here
on every possible ``v`` of every channel, giving the interval of sums whose output is
non-negative. A max-pool in between becomes an OR of bits, or an AND for the channels whose
layers after the pool are decreasing (a BatchNorm with a negative scale: ``sign(f(max x)) =
min sign(f(x))``). No float tensor, float pool or packing pass is left between the two.

The result is bit-identical. Only layers whose output feeds nothing but the conv are touched:
the previous child of an ``nn.Sequential``, or an fx node with one user (a module called once).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from netshrink.kernels.layers import BitConv2d, BitLinear


def _keeps_sign(m: nn.Module) -> bool:
    if isinstance(m, nn.Identity | nn.Dropout):
        return isinstance(m, nn.Identity) or not m.training
    return isinstance(m, nn.Hardtanh) and m.min_val < 0 <= m.max_val


def _pool_args(m: nn.Module) -> tuple[int, int, int] | None:
    """``(kernel, stride, padding)`` of a square max-pool the kernels can do, else None."""
    if not isinstance(m, nn.MaxPool2d) or m.return_indices or m.ceil_mode:
        return None
    args = []
    for v in (m.kernel_size, m.stride if m.stride else m.kernel_size, m.padding, m.dilation):
        pair = tuple(v) if isinstance(v, tuple | list) else (v, v)
        if pair[0] != pair[1]:
            return None
        args.append(int(pair[0]))
    k, s, p, d = args
    return (k, s, p) if d == 1 else None


def _elementwise(m: nn.Module) -> bool:
    """An eval-mode layer applied to each element on its own, non-decreasing in it, or a
    BatchNorm with running statistics (monotone per channel): tabulated by ``fuse_packed``."""
    if _keeps_sign(m) or isinstance(m, nn.Hardtanh | nn.ReLU | nn.ReLU6):
        return True
    return (isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats
            and m.running_mean is not None)


def _direction(mods: list[nn.Module], channels: int) -> torch.Tensor:
    """Per channel, whether the layers ``mods`` (in order) are non-increasing (True) rather
    than non-decreasing: a BatchNorm flips with a negative weight (a zero one is constant)."""
    flip = torch.zeros(channels, dtype=torch.bool)
    for m in mods:
        if isinstance(m, nn.BatchNorm2d) and m.weight is not None:
            flip ^= m.weight.detach().cpu() < 0
    return flip


def _words(bits: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-channel booleans ``[C]`` -> the int64 words ``[groups * words]`` of a packed pixel."""
    cg = bits.numel() // groups
    words = -(-cg // 64)
    b = nn.functional.pad(bits.view(groups, cg).to(torch.int64), (0, words * 64 - cg))
    return (b.view(groups, words, 64) << torch.arange(64)).sum(-1).reshape(-1)


def fuse_packed(producer: BitConv2d, between: list[nn.Module], consumer: BitConv2d) -> bool:
    """Let ``producer`` emit ``consumer``'s input bits directly (see the module doc);
    ``between`` (in order) are the layers from one to the other, all ``_elementwise`` but at
    most one max-pool. False (nothing changed) when the chain does not qualify."""
    if (isinstance(producer, BitLinear) or isinstance(consumer, BitLinear)
            or producer.emit_lo is not None or consumer.pre_pool is not None
            or producer.out_channels != consumer.in_channels):
        return False
    pools = [i for i, m in enumerate(between) if not _elementwise(m)]
    if len(pools) > 1 or (pools and _pool_args(between[pools[0]]) is None):
        return False
    v, y = producer.emitted_values()
    with torch.no_grad():
        z = y.view(1, *y.shape, 1)  # (1, C, K, 1): every channel's every possible value
        for m in between:
            if _elementwise(m):
                z = m(z)
        bits = ~(z.view(y.shape) < 0)  # the consumer's sign: 0 -> +1
    lo = torch.ones(producer.out_channels, dtype=torch.int32)
    hi = torch.zeros(producer.out_channels, dtype=torch.int32)
    for c in range(producer.out_channels):
        on = torch.nonzero(bits[c]).view(-1)
        if on.numel() == 0:
            continue
        if int(on[-1] - on[0]) + 1 != on.numel():  # not an interval: cannot happen (monotone)
            return False
        lo[c], hi[c] = v[c, on[0]], v[c, on[-1]]
    producer.emit_lo, producer.emit_hi = lo, hi
    producer.emit_groups = consumer.groups
    if pools:
        consumer.pre_pool = _pool_args(between[pools[0]])
        consumer.pool_and = _words(_direction(between[pools[0] + 1:], consumer.in_channels),
                                   consumer.groups)
        producer.emit_pad = (0, 0)
    else:
        producer.emit_pad = consumer.padding
    return True


def _walk(conv: BitConv2d, before: list[nn.Module]) -> list[nn.Module]:
    """The modules (nearest first) ``conv`` takes over; sets its ``pre_pool``."""
    taken = []
    for m in before:
        pool = _pool_args(m)
        if _keeps_sign(m):
            taken.append(m)
        elif pool is not None and conv.pre_pool is None and not isinstance(conv, BitLinear):
            conv.pre_pool = pool
            taken.append(m)
        else:
            break
    return taken


def _take(conv: BitConv2d, before: list[nn.Module]) -> list[nn.Module]:
    """The modules (nearest first) ``conv`` takes over: with a ``BitConv2d`` producer behind
    elementwise layers and at most one max-pool, those layers (``fuse_packed``), else
    ``_walk``'s."""
    between: list[nn.Module] = []
    for m in before:
        if isinstance(m, BitConv2d):
            if fuse_packed(m, between[::-1], conv):
                return between
            break
        if not (_elementwise(m) or _pool_args(m) is not None):
            break
        between.append(m)
    return _walk(conv, before)


def absorb_sign_preserving(model: nn.Module) -> list[str]:
    """Fold the layers described above into the ``BitConv2d`` after them (in place); returns
    the names of the layers now ``Identity`` (or absorbed)."""
    names = {id(m): name for name, m in model.named_modules()}
    done: list[str] = []
    if isinstance(model, fx.GraphModule):
        calls: dict[str, int] = {}
        for node in model.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for node in model.graph.nodes:
            if node.op != "call_module" or not isinstance(
                    model.get_submodule(node.target), BitConv2d) or calls[node.target] != 1:
                continue  # a conv called twice would apply what it took over to both calls
            chain, cur = [], node.args[0] if node.args else None
            while (isinstance(cur, fx.Node) and cur.op == "call_module" and len(cur.users) == 1
                   and calls[cur.target] == 1 and len(cur.args) == 1 and not cur.kwargs):
                chain.append(model.get_submodule(cur.target))
                cur = cur.args[0]
            done += _replace(model, names, _take(model.get_submodule(node.target), chain))
        return done
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i, child in enumerate(children):
            if isinstance(child, BitConv2d):
                done += _replace(model, names, _take(child, children[:i][::-1]))
    return done


def _replace(model: nn.Module, names: dict[int, str], taken: list[nn.Module]) -> list[str]:
    out = []
    for m in taken:
        if isinstance(m, nn.Identity):
            continue
        name = names[id(m)]
        owner_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner_name) if owner_name else model, leaf, nn.Identity())
        out.append(name)
    return out
