"""Let a ``BitConv2d`` take over the sign-preserving layers in front of it.

A binary-input conv only sees ``sign(x)`` (0 -> +1). Layers between the previous layer and it
that cannot change that sign are wasted float passes:

* ``Identity``, eval ``Dropout``, and ``Hardtanh`` with ``min_val < 0 <= max_val`` (negative
  values stay negative, the others non-negative): replaced by ``Identity``;
* one ``MaxPool2d`` (no dilation, no ceil mode, no indices): sign is non-decreasing, so it
  commutes with max, and the max of +-1 values is the OR of their bits: the conv packs the
  unpooled input and pools the packed words (``BitConv2d.pre_pool``).

The result is bit-identical. Only layers whose output feeds nothing but the conv are touched:
the previous child of an ``nn.Sequential``, or an fx node with one user (a module called once).
"""

from __future__ import annotations

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
                    model.get_submodule(node.target), BitConv2d):
                continue
            chain, cur = [], node.args[0] if node.args else None
            while (isinstance(cur, fx.Node) and cur.op == "call_module" and len(cur.users) == 1
                   and calls[cur.target] == 1 and len(cur.args) == 1 and not cur.kwargs):
                chain.append(model.get_submodule(cur.target))
                cur = cur.args[0]
            done += _replace(model, names, _walk(model.get_submodule(node.target), chain))
        return done
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i, child in enumerate(children):
            if isinstance(child, BitConv2d):
                done += _replace(model, names, _walk(child, children[:i][::-1]))
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
