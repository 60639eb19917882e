"""Rewriting the channel sizes written into a block's forward: splits and slices.

Blocks of real model zoos split their input along the channels with sizes computed in their
constructor: MixNet's ``torch.split(x, self.splits, 1)``, CSP's ``x.split(self.expand_chs // 2,
dim=1)``, FasterNet's ``torch.split(x, [self.dim_conv3, self.dim_untouched], 1)``, DPN's
``x[:, :self.num_1x1_c]``, MambaOut's channels-last split. torch.fx records those sizes as
literal numbers, and after pruning they no longer match the channel counts. The analysis lets
channel classes flow through such an op (each channel of the input lands in exactly one piece)
and the planning simulation computes the pruned sizes: piece ``i`` keeps the kept channels of
piece ``i``. Surgery then gives the block (the innermost module whose forward holds the op, never
the model itself) a forward that runs its own fx graph with the new sizes:

* ``ForwardEdit``: which op of which block (``owner``, its ``op`` kind and its ``index`` among
  that block's own ops of that kind, in graph order) gets which numbers (``values``: the piece
  sizes of a split, ``(start, stop)`` of a slice);
* ``apply_forward_edits_(model, edits)``: traces each block alone, rewrites the ops and installs
  ``GraphForward`` as the instance's ``forward``. It looks its submodules and tensors up on the
  block at every call, so a later stage that replaces a submodule (quantization) is honoured,
  and torch.fx traces through it (a second pruning, fusion, export);
* ``forward_structure`` / ``apply_forward_structure_``: the edits as entries of the Stage's
  recorded structure (``"OWNER#OP.INDEX"``), so a fresh model gets them back before a
  checkpoint's weights load.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter, defaultdict
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.node import Node

from netshrink.prune import _labels as L

#: ops whose literal channel sizes can be rewritten
OPS = ("split", "getitem")


@dataclasses.dataclass(frozen=True)
class ForwardEdit:
    """New literal sizes for one split / slice op of block ``owner`` (see the module
    docstring)."""

    owner: str
    op: str
    index: int
    values: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.owner}#{self.op}.{self.index}"


def op_kind(n: Node) -> str | None:
    """``"split"`` (torch.split / Tensor.split), ``"getitem"`` or None."""
    if n.op == "call_function" and n.target is operator.getitem:
        return "getitem"
    if (n.op == "call_function" and n.target in L.SPLIT_FUNCTIONS) or (
            n.op == "call_method" and n.target == "split"):
        return "split"
    return None


def owner_of(n: Node) -> str:
    """The innermost module whose forward holds ``n`` ("" for the model's own forward)."""
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return str(path)


def edit_for(gm: torch.fx.GraphModule, node_name: str,
             values: tuple[int, ...]) -> ForwardEdit:
    """The ForwardEdit addressing node ``node_name`` of the whole model's graph ``gm``."""
    counts: Counter[tuple[str, str]] = Counter()
    for n in gm.graph.nodes:
        kind = op_kind(n)
        if kind is None:
            continue
        owner = owner_of(n)
        if n.name == node_name:
            return ForwardEdit(owner, kind, counts[(owner, kind)], tuple(values))
        counts[(owner, kind)] += 1
    raise KeyError(f"no split or slice node {node_name!r} in the traced graph")


def split_size_position(n: Node) -> tuple[int | None, str | None]:
    """Where a split node holds its sizes: (position in args, None) or (None, kwarg name)."""
    if len(n.args) > 1:
        return 1, None
    for name in ("split_size_or_sections", "split_size"):
        if name in n.kwargs:
            return None, name
    return None, None


class GraphForward:
    """A block's forward as an fx graph run on the block itself (see the module docstring).
    Not a module: it is an instance attribute, outside the state dict."""

    def __init__(self, owner: nn.Module, graph: torch.fx.Graph) -> None:
        self.owner = owner
        self.graph = graph
        self.names = [n.target for n in graph.nodes if n.op == "placeholder"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            args = args + tuple(kwargs.pop(name) for name in self.names[len(args):]
                                if name in kwargs)
        if kwargs:
            raise TypeError(f"{type(self.owner).__name__}.forward got unexpected arguments "
                            f"{sorted(kwargs)}")
        return torch.fx.Interpreter(self.owner, graph=self.graph).run(*args)


def _own_graph(owner: nn.Module) -> torch.fx.Graph:
    """The block's forward as an fx graph: a copy of its GraphForward's, else a trace."""
    from netshrink.prune.tracing import trace_graph  # tracing imports the pruner registry

    current = owner.__dict__.get("forward")
    if isinstance(current, GraphForward):
        graph = torch.fx.Graph()
        out = graph.graph_copy(current.graph, {})
        graph.output(out)
        return graph
    if current is not None:  # a forward chosen in __init__ (FasterNet's Partial_conv3)
        return trace_graph(_Borrowed(owner, current))
    return trace_graph(owner)


class _Borrowed(nn.Module):
    """Traces a module whose forward is an instance attribute: it shares the module's
    submodules, parameters and buffers (so the graph's names are the module's own) and calls
    that forward with one input."""

    def __init__(self, owner: nn.Module, fn: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_modules", owner._modules)
        object.__setattr__(self, "_parameters", owner._parameters)
        object.__setattr__(self, "_buffers", owner._buffers)
        object.__setattr__(self, "fn", fn)

    def forward(self, x: Any) -> Any:
        return self.__dict__["fn"](x)


def _rewrite(n: Node, edit: ForwardEdit, owner_name: str) -> None:
    if edit.op == "split":
        pos, kw = split_size_position(n)
        if pos is not None:
            n.args = (n.args[0], list(edit.values), *n.args[2:])
        elif kw is not None:
            n.kwargs = {**n.kwargs, kw: list(edit.values)}
        else:
            raise ValueError(f"split {n.name} in {owner_name!r} has no sizes to rewrite")
        return
    idx = n.args[1]
    dim = slice_dim(idx)
    if dim is None or len(edit.values) != 2:
        raise ValueError(f"op {n.name} in {owner_name!r} is not a channel slice to rewrite")
    items = list(idx)
    items[dim] = slice(edit.values[0], edit.values[1])
    n.args = (n.args[0], tuple(items), *n.args[2:])


def slice_dim(idx: Any) -> int | None:
    """The one dimension a tuple of plain slices cuts (None when not exactly one)."""
    if not isinstance(idx, tuple) or not all(isinstance(it, slice) for it in idx):
        return None
    cut = [d for d, it in enumerate(idx) if it != slice(None)]
    return cut[0] if len(cut) == 1 else None


def apply_forward_edits_(model: nn.Module, edits: list[ForwardEdit]) -> nn.Module:
    """Rewrite the split / slice sizes of ``edits`` in their blocks' forwards (in place)."""
    by_owner: dict[str, dict[tuple[str, int], ForwardEdit]] = defaultdict(dict)
    for e in edits:
        if not e.owner:
            raise ValueError(f"{e.key}: the model's own forward cannot be rewritten")
        by_owner[e.owner][(e.op, e.index)] = e
    for owner_name, wanted in by_owner.items():
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError as err:
            raise ValueError(f"block {owner_name!r} of a split to rewrite does not exist in "
                             f"{type(model).__name__}") from err
        graph = _own_graph(owner)
        counts: Counter[str] = Counter()
        done = set()
        for n in graph.nodes:
            kind = op_kind(n)
            if kind is None or (n.meta.get("nn_module_stack") or {}):
                continue
            e = wanted.get((kind, counts[kind]))
            counts[kind] += 1
            if e is not None:
                _rewrite(n, e, owner_name)
                done.add((e.op, e.index))
        missing = sorted(set(wanted) - done)
        if missing:
            raise ValueError(f"block {owner_name!r} ({type(owner).__name__}) has no "
                             f"{missing[0][0]} number {missing[0][1]} to rewrite")
        graph.lint()
        owner.forward = GraphForward(owner, graph)
    return model


def forward_structure(edits: list[ForwardEdit]) -> dict[str, dict[str, int]]:
    """The edits as structure entries: ``"OWNER#OP.INDEX" -> {"0": v0, "1": v1, ...}``."""
    return {e.key: {str(i): int(v) for i, v in enumerate(e.values)} for e in edits}


def is_forward_entry(name: str) -> bool:
    return "#" in name


def edits_from_structure(structure: dict[str, dict[str, int]]) -> list[ForwardEdit]:
    """The ForwardEdits recorded by ``forward_structure`` (a ValueError names a bad entry)."""
    out = []
    for name, values in structure.items():
        if not is_forward_entry(name):
            continue
        owner, _, rest = name.rpartition("#")
        op, _, index = rest.partition(".")
        keys = [str(i) for i in range(len(values))]
        if op not in OPS or not index.isdigit() or sorted(values) != sorted(keys):
            raise ValueError(f"recorded forward edit {name!r}: {values} is not "
                             "'OWNER#split.N' / 'OWNER#getitem.N' with values '0', '1', ...")
        out.append(ForwardEdit(owner, op, int(index), tuple(int(values[k]) for k in keys)))
    return out
