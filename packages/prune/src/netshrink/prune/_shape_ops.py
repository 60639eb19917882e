"""How ops that move, split or reduce elements move channel labels.

``ShapeOps`` is a mixin of ``propagation.LabelPropagator``. Each handler runs the op on the
label tensor itself where it can. It calls ``self.pin`` where pruning could not follow the op (a
literal size on a channel dimension, a reduction across channels, indexing part of the
channels) and ``self.partition`` where blocks of channels must keep equal counts (chunk, a
channel dimension split in two by a reshape, as in a channel shuffle). A split or slice along the
channels with literal sizes calls ``self.resizable``: the channels flow through it and its
sizes are rewritten after pruning (``forward_edits``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx.node import Node

from netshrink.prune import _labels as L
from netshrink.prune.forward_edits import slice_dim, split_size_position


class ShapeOps:
    """Label handlers for shape ops; the host class provides ``pin``, ``partition``,
    ``resizable``, ``fresh_like``, ``unknown`` and ``elementwise``."""

    def move(self, n: Node, lab: torch.Tensor, args: tuple, kwargs: dict,
             value: torch.Tensor) -> torch.Tensor:
        """transpose / permute / squeeze / flatten ...: run the op on the labels."""
        full = lab.expand(args[0].shape)
        out = self.run_on_labels(n, full, args, kwargs)
        return self.check_batch(n, lab, L.compress(out))

    def run_on_labels(self, n: Node, full: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        rest = args[1:]
        if n.op == "call_method":
            return getattr(full, n.target)(*rest, **kwargs)
        return n.target(full, *rest, **kwargs)

    def check_batch(self, n: Node, lab_in: Any, out: torch.Tensor) -> torch.Tensor:
        """Labels moved into the batch dimension (a reshape mixing batch and channels): pin."""
        if out.ndim and out.shape[0] > 1:
            self.pin(lab_in, out)
        return out

    def reshape(self, n: Node, lab: torch.Tensor, x: torch.Tensor, value: torch.Tensor,
                spec: dict[int, Any] | None) -> torch.Tensor:
        """view / reshape / flatten / unflatten / expand, executed on the labels.

        Pruning changes the size of the channel dimensions, so each one must get its size at
        run time (``-1`` or a value read from ``x.size()``). When a channel dimension is split
        in several (a channel shuffle's ``(g, C/g)``), exactly one of them may be sized at run
        time; the others are fixed, and the fibres along the free one are blocks that must keep
        equal channel counts. Anything else pins the channels.
        """
        full = lab.expand(x.shape)
        expand = n.target in ("expand", "expand_as")
        out = full.expand(value.shape) if expand else full.reshape(value.shape)
        out = L.compress(out)
        axes = [d for d in range(out.ndim) if out.shape[d] > 1]
        if 0 in axes:
            self.pin(lab)
            return out
        spec = spec or {}
        free = [d for d in axes if spec.get(d) is None or spec.get(d) == -1
                or isinstance(spec.get(d), Node)]
        if len(free) != 1:
            if axes:
                self.pin(lab)
            return out
        if len(axes) > 1:
            f = free[0]
            others = [d for d in axes if d != f]
            order = others + [f] + [d for d in range(out.ndim) if d not in axes]
            rows = out.permute(order).reshape(-1, out.shape[f])
            self.partition(n, [torch.unique(r) for r in rows],
                           f"channel split by {L.op_name(n.target)} at {n.name}")
        return out

    def reduce(self, n: Node, name: str, lab: torch.Tensor, args: tuple, kwargs: dict,
               value: Any) -> Any:
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if name in L.SHAPE_KEEPING_REDUCTIONS:
            return self.mix_along(n, lab, args[0], [dims])
        x = args[0]
        if dims is None:
            if L.varying_dims(lab):
                self.pin(lab)
            return self.fresh_like(n, value)
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % x.ndim for d in dims)
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        c = L.compress(lab)
        if any(c.shape[d] > 1 for d in dims):
            if name in L.SLICE_REDUCTIONS and len(dims) == 1 and self.across_slices(n, c, dims[0]):
                out = self.merge_slices(n, c, dims[0])
                return out if keepdim else out.squeeze(dims[0])
            self.pin(lab)
            return self.fresh_like(n, value)
        for d in reversed(dims):
            if not keepdim:
                c = c.squeeze(d)
        return L.tree_map(value, lambda t: c) if isinstance(value, tuple) else c

    def mix_along(self, n: Node, lab: torch.Tensor, x: torch.Tensor,
                  dims: list[Any]) -> torch.Tensor:
        """An op mixing values along ``dims`` (softmax): fine unless a channel dim mixes."""
        c = L.compress(lab)
        for d in dims:
            if d is not None and self.across_slices(n, c, d % x.ndim):
                self.merge_slices(n, c, d % x.ndim)
            elif d is None or c.shape[d % x.ndim] > 1:
                self.pin(lab)
        return lab

    def across_slices(self, n: Node, c: torch.Tensor, d: int) -> bool:
        """Labels vary along ``d`` and along another dim (the channels): an op along ``d``
        combines whole slices position by position (SKNet's sum and softmax over its stacked
        paths), as an element-wise op does, not channels with each other."""
        return c.shape[d] > 1 and any(e != d for e in L.varying_dims(c))

    def merge_slices(self, n: Node, c: torch.Tensor, d: int) -> torch.Tensor:
        """Combine the slices of ``c`` along ``d`` like element-wise operands (``d`` kept,
        size 1)."""
        out = c.narrow(d, 0, 1)
        for i in range(1, c.shape[d]):
            out = self.combine_pair(n, out, c.narrow(d, i, 1))
        return out

    def spatial(self, n: Node, lab: torch.Tensor, x: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
        """Pooling / interpolation: each channel's positions are processed independently."""
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            return self.unknown(n, value)
        vec = L.channel_vector(lab, x.shape[1], 1)
        if vec is None:
            return self.unknown(n, value)
        return L.along(vec, value.ndim, 1)

    def pad(self, n: Node, lab: torch.Tensor, args: tuple, kwargs: dict,
            value: torch.Tensor) -> torch.Tensor:
        pads = kwargs.get("pad", args[1] if len(args) > 1 else ())
        padded = range(args[0].ndim - len(pads) // 2, args[0].ndim)
        c = L.compress(lab)
        if any(c.shape[d] > 1 for d in padded):
            self.pin(lab)
            return self.fresh_like(n, value)
        return c

    def cat(self, n: Node, labs: Any, xs: Any, dim: int, value: torch.Tensor,
            stack: bool) -> torch.Tensor:
        if not all(isinstance(lab, torch.Tensor) for lab in labs):
            return self.unknown(n, value)
        dim = dim % value.ndim
        if dim == 0 and not stack:  # along the batch: the same channels side by side
            return self.elementwise(n, list(labs), value)
        fulls = [lab.expand(x.shape) for lab, x in zip(labs, xs, strict=True)]
        out = torch.stack(fulls, dim) if stack else torch.cat(fulls, dim)
        return self.check_batch(n, list(labs), L.compress(out))

    def split(self, n: Node, lab: torch.Tensor, args: tuple, kwargs: dict, value: Any,
              chunk: bool) -> Any:
        """chunk / split along a channel dim: chunks must keep equal counts; literal split
        sizes are rewritten after pruning (``resizable``)."""
        x = args[0]
        dim = dim_arg(args, kwargs, 2, 0) % x.ndim
        full = lab.expand(x.shape)
        pieces = self.run_on_labels(n, full, args, kwargs)
        out = tuple(L.compress(p) for p in pieces)
        if L.compress(lab).shape[dim] == 1:
            return out
        size_arg = args[1] if len(args) > 1 else kwargs.get(
            "chunks", kwargs.get("split_size_or_sections", kwargs.get("split_size")))
        node_arg = n.args[1] if len(n.args) > 1 else None
        sizes = {p.shape[dim] for p in pieces}
        equal = len(sizes) == 1
        if (chunk and equal) or (not chunk and equal and isinstance(node_arg, Node)
                                 and isinstance(size_arg, int)):
            self.partition(n, [torch.unique(p) for p in pieces],
                           f"{L.op_name(n.target)} at {n.name}")
        elif not chunk and _literal_sizes(n) and _only_dim(lab, dim, x.ndim):
            bounds, start = [], 0
            for p in pieces:
                bounds.append((start, start + p.shape[dim]))
                start += p.shape[dim]
            self.resizable(n, lab, x, dim, bounds)
        else:
            self.pin(lab)
        return out

    def getitem(self, n: Node, lab: Any, x: Any, idx: Any, value: Any) -> Any:
        if isinstance(lab, (tuple, list)):  # an element of a chunk/split result
            return lab[idx]
        if not isinstance(lab, torch.Tensor):
            return self.unknown(n, value)
        full = lab.expand(x.shape)
        out = L.compress(full[idx])
        labelled = set(L.varying_dims(lab))
        touched = _indexed_dims(idx, tuple(x.shape))
        if labelled & touched:
            dim = slice_dim(idx)
            if dim is not None and labelled == touched == {dim} and _literal_slice(idx[dim]):
                start, stop, _ = idx[dim].indices(x.shape[dim])
                self.resizable(n, lab, x, dim, [(start, max(start, stop))])
            else:
                self.pin(lab)
        return self.check_batch(n, lab, out)



def _literal_sizes(n: Node) -> bool:
    """A split whose sizes are literal numbers (recorded by fx from the block's attributes)."""
    pos, kw = split_size_position(n)
    sizes = n.args[pos] if pos is not None else n.kwargs.get(kw) if kw else None
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        return True
    return isinstance(sizes, (list, tuple)) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in sizes)


def _only_dim(lab: torch.Tensor, dim: int, ndim: int) -> bool:
    """The labels vary along ``dim`` only."""
    return [d % ndim for d in L.varying_dims(lab)] == [dim]


def _literal_slice(s: slice) -> bool:
    def plain(v: Any) -> bool:
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    return plain(s.start) and plain(s.stop) and s.step in (None, 1)


def _indexed_dims(idx: Any, shape: tuple[int, ...]) -> set[int]:
    """Dimensions of the input that ``x[idx]`` does not take whole. A slice reaching past the
    end (``x[:, :k]`` with ``k >= size``, as GhostNet's cut after its concat when nothing is
    cut) takes the whole dimension, before pruning and after."""
    ndim = len(shape)
    items = idx if isinstance(idx, tuple) else (idx,)
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    touched: set[int] = set()
    d = 0
    for it in items:
        if it is Ellipsis:
            d += ndim - consumed
        elif it is None:
            continue
        elif isinstance(it, slice) and _whole(it, shape[d] if d < ndim else 0):
            d += 1
        else:
            width = it.ndim if isinstance(it, torch.Tensor) and it.dtype == torch.bool else 1
            touched.update(range(d, d + max(width, 1)))
            d += max(width, 1)
    return touched


def _whole(s: slice, size: int) -> bool:
    """``s`` takes every index of a dimension of ``size`` (or more): ``:``, ``0:k`` with
    ``k >= size`` (literal bounds only)."""
    start_ok = s.start is None or (isinstance(s.start, int) and s.start == 0)
    stop_ok = s.stop is None or (isinstance(s.stop, int) and s.stop >= size)
    step_ok = s.step is None or s.step == 1
    return start_ok and stop_ok and step_ok


def size_spec(n: Node, name: str, args: tuple) -> dict[int, Any]:
    """For reshape-like ops: output dim -> the size argument given for it (literal int, -1,
    or an fx Node when computed at run time); dims missing from the map are copied."""
    raw = n.args[1:]
    if name == "unflatten":
        dim = raw[0] % (args[0].ndim)
        return {dim + i: s for i, s in enumerate(raw[1])}
    if len(raw) == 1 and isinstance(raw[0], (tuple, list)):
        raw = raw[0]
    if name == "expand":
        return {d: (None if s == -1 else s) for d, s in enumerate(raw)}
    if name.endswith("_as"):  # sizes of another tensor, read at run time
        return {}
    return dict(enumerate(raw))


def dim_arg(args: tuple, kwargs: dict, position: int, default: int) -> int:
    dim = kwargs.get("dim", args[position] if len(args) > position else default)
    return int(dim)

