"""From a set of dropped channel classes to per-module index lists, verified by simulation.

``make_plan(graph, dropped)`` replays the fx graph with the *pruned* channel counts
(``Simulation``: convs and linears produce zero tensors holding only their kept channels; every
other op runs for real, so ``x.size()``, chunk, cat and channel shuffles behave exactly as in
the pruned model). At each conv / linear / BatchNorm it reads which original channels arrive, in
which order, and checks that they are exactly the kept ones, each in its original group. The
plan is then a list of index selections that surgery applies. A check that fails names the
channel classes involved (``PlanViolation``); the caller pins them and selects again.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import defaultdict, deque
from typing import Any

import torch
from torch.fx.node import Node

from netshrink.prune import _labels as L
from netshrink.prune.forward_edits import ForwardEdit, edit_for, split_size_position
from netshrink.prune.graph import DependencyGraph
from netshrink.prune.propagation import LabelPropagator, ModuleCall


@dataclasses.dataclass(frozen=True)
class ModulePlan:
    """What to keep of one module: input / output channel indices of the original module, in
    the order the pruned module uses them (None: all, unchanged), and the new group count."""

    in_idx: tuple[int, ...] | None
    out_idx: tuple[int, ...] | None
    groups: int = 1


@dataclasses.dataclass(frozen=True)
class ChannelPlan:
    """A verified pruning plan: per-module index selections and the removed channels.

    ``removed`` maps every producer, BatchNorm and depthwise conv to the original output
    channel indices it loses (what zeroing-based checks and reports need).
    """

    modules: dict[str, ModulePlan]
    removed: dict[str, tuple[int, ...]]
    dropped_classes: frozenset[int]
    #: stored tensors read in a traced forward and cut with their channels (a layer scale):
    #: qualified name -> (dimension, kept indices)
    tensors: dict[str, tuple[int, tuple[int, ...]]] = dataclasses.field(default_factory=dict)
    #: what holds the channel groups that could not be pruned -> how many (``plan_channels``)
    blocked: dict[str, int] = dataclasses.field(default_factory=dict)
    #: new literal sizes of channel splits / slices in blocks' forwards (``forward_edits``)
    forward_edits: tuple[ForwardEdit, ...] = ()

    @property
    def removed_channels(self) -> int:
        return sum(len(v) for v in self.removed.values())


class PlanViolation(Exception):
    """The simulated pruned model is not a slice of the original at ``node``."""

    def __init__(self, node: str, classes: set[int], reason: str) -> None:
        super().__init__(f"{node}: {reason}")
        self.node = node
        self.classes = classes


class Simulation(LabelPropagator):
    """Replays the graph with only the kept classes (see the module docstring)."""

    dummy_param_modules = True

    def __init__(self, graph: DependencyGraph, dropped: frozenset[int]) -> None:
        super().__init__(graph.gm)
        self.dep = graph
        self.ref = graph.analysis
        self.find = graph.find
        self.dropped = dropped
        self.counters: dict[str, int] = defaultdict(int)
        self.tensors: dict[str, tuple[int, tuple[int, ...]]] = {}
        #: resizable node -> its new literal sizes
        self.edits: dict[str, tuple[int, ...]] = {}

    def classes(self, tree: Any) -> set[int]:
        return {self.find(x) for x in L.unique_labels(tree)}

    def new_labels(self, n: Node, count: int, *, pinned: bool) -> torch.Tensor:
        k = self.counters[n.name]
        self.counters[n.name] += 1
        vec = self.ref.node_new_labels[n.name][k]
        keep = torch.tensor([self.find(x) not in self.dropped for x in vec.tolist()],
                            dtype=torch.bool)
        return vec[keep]

    def reference_shape(self, n: Node) -> tuple[int, ...]:
        return self.ref.shapes[n.name]

    def slides_along_channels(self, n: Node, m: Any, lab: torch.Tensor,
                              x: torch.Tensor) -> bool:
        return n.name in self.ref.sliding

    def across_slices(self, n: Node, c: torch.Tensor, d: int) -> bool:
        return n.name in self.ref.slice_ops

    def combine_pair(self, n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if torch.equal(a, b):
            return a
        pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)], 1), dim=0)
        fanned = self.ref.fanned
        for x, y in pairs.tolist():
            if x in fanned or y in fanned:
                continue
            if self.find(x) != self.find(y):
                raise PlanViolation(n.name, self.classes(a) | self.classes(b),
                                    "element-wise operands no longer line up")
        if not fanned:
            return a
        mask = torch.isin(a, torch.tensor(sorted(fanned), dtype=torch.long))
        return torch.where(mask, b, a)

    def label_node(self, n: Node, value: Any, args: tuple, kwargs: dict) -> Any:
        if n.op == "output":
            ref = self.ref.shapes[n.name]
            got = L.tree_map(value, lambda t: tuple(t.shape))
            if got != ref:
                raise PlanViolation(n.name, self.classes(self.arg_labels(n)[0]),
                                    f"model output shape changed from {ref} to {got}")
            return None
        return super().label_node(n, value, args, kwargs)

    def sliced_attr(self, n: Node) -> tuple[Any, Any]:
        """A stored tensor with the elements of dropped classes removed: they must lie along
        one dimension (the channels it scales), else the plan is refused."""
        value, lab = self.fetch_attr(n.target), self.ref.labels[n.name]
        if not isinstance(value, torch.Tensor) or not isinstance(lab, torch.Tensor):
            return value, lab
        classes = torch.tensor([self.find(x) for x in lab.reshape(-1).tolist()],
                               dtype=torch.long).reshape(lab.shape)
        keep = ~torch.isin(classes, torch.tensor(sorted(self.dropped), dtype=torch.long))
        if bool(keep.all()):
            return value, lab
        vary = L.varying_dims(classes)
        if len(vary) != 1 or lab.shape != value.shape:
            raise PlanViolation(n.name, self.classes(lab),
                                f"stored tensor {n.target} cannot be cut along one dimension")
        d = vary[0]
        idx = keep.movedim(d, 0).reshape(keep.shape[d], -1)[:, 0].nonzero().flatten()
        self.tensors[str(n.target)] = (d, tuple(idx.tolist()))
        return (value.index_select(d, idx.to(value.device)), lab.index_select(d, idx))

    def fetch_args_kwargs_from_env(self, n: Node) -> tuple[tuple, dict]:
        """A resizable split / slice gets the pruned sizes (recorded in ``edits``)."""
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if n.name not in self.ref.resizable_nodes:
            return args, kwargs
        dim, vec, bounds = self.ref.resizable_nodes[n.name]
        keep = [self.find(x) not in self.dropped for x in vec.tolist()]
        new = [(sum(keep[:a]), sum(keep[:b])) for a, b in bounds]
        if new == bounds:
            return args, kwargs
        if n.target is operator.getitem:
            items = list(args[1])
            items[dim] = slice(*new[0])
            self.edits[n.name] = new[0]
            return (args[0], tuple(items), *args[2:]), kwargs
        sizes = [b - a for a, b in new]
        self.edits[n.name] = tuple(sizes)
        pos, kw = split_size_position(n)
        if pos is not None:
            return (args[0], sizes, *args[2:]), kwargs
        return args, {**kwargs, kw: sizes}

    def run_node(self, n: Node) -> Any:
        if n.op == "get_attr":
            value, labels = self.sliced_attr(n)
            self.labels[n.name] = labels
            self.shapes[n.name] = L.tree_map(value, lambda t: tuple(t.shape))
            return value
        try:
            return super().run_node(n)
        except PlanViolation:
            raise
        except Exception as err:
            involved = set()
            for a in n.all_input_nodes:
                involved |= self.classes(self.labels.get(a.name))
            raise PlanViolation(n.name, involved,
                                f"{type(err).__name__} with pruned shapes: {err}") from err


def make_plan(graph: DependencyGraph, dropped: frozenset[int]) -> ChannelPlan:
    """Simulate the pruned model; return its plan or raise PlanViolation."""
    sim = Simulation(graph, dropped)
    sim.run(torch.zeros(_example_shape(graph), dtype=graph.analysis.input_dtype,
                        device=graph.analysis.input_device))
    ref_calls = {call.node: call for call in graph.analysis.calls}
    modules: dict[str, ModulePlan] = {}
    removed: dict[str, tuple[int, ...]] = {}
    for call in sim.calls:
        ref = ref_calls[call.node]
        plan, lost = _module_plan(graph, ref, call, dropped)
        if lost:
            removed[ref.module] = lost
        if plan is not None:
            modules[ref.module] = plan
    edits = tuple(edit_for(graph.gm, node, values) for node, values in sim.edits.items())
    return ChannelPlan(modules=modules, removed=removed, dropped_classes=dropped,
                       tensors=dict(sim.tensors), forward_edits=edits)


def _module_plan(graph: DependencyGraph, ref: ModuleCall, new: ModuleCall,
                 dropped: frozenset[int]) -> tuple[ModulePlan | None, tuple[int, ...]]:
    find = graph.find
    in_idx: list[int] | None = None
    if ref.in_vec is not None:
        in_idx = _match(graph, ref, new, dropped)
    out_idx: list[int] | None = None
    if ref.kind in ("dense", "grouped"):
        out_idx = [i for i, x in enumerate(ref.out_vec.tolist()) if find(x) not in dropped]
    elif ref.kind in ("depthwise", "bn"):
        out_idx = in_idx
    groups = ref.groups
    if ref.kind == "depthwise":
        groups = len(in_idx)
        mult = len(ref.out_vec) // len(ref.in_vec)
        if mult > 1:  # a channel multiplier: input i's outputs i*m .. i*m+m-1
            out_idx = [i * mult + k for i in in_idx for k in range(mult)]
    if ref.kind == "grouped":
        groups = _whole_groups(ref, in_idx, out_idx)
        if groups is None:
            groups = ref.groups
            _check_groups(graph, ref, in_idx, out_idx)
    n_out = len(ref.out_vec) if ref.out_vec is not None else 0
    lost = tuple(sorted(set(range(n_out)) - set(out_idx))) if out_idx is not None else ()
    if _identity(in_idx, ref.in_vec) and _identity(out_idx, ref.out_vec):
        return None, lost
    return ModulePlan(_tuple(in_idx), _tuple(out_idx), groups), lost


def _match(graph: DependencyGraph, ref: ModuleCall, new: ModuleCall,
           dropped: frozenset[int]) -> list[int]:
    """For each channel the pruned module receives, its index in the original input."""
    find = graph.find
    orig = [find(x) for x in ref.in_vec.tolist()]
    involved = set(orig)
    if new.in_vec is None:
        raise PlanViolation(new.node, involved, "input channels became unreadable")
    got = [find(x) for x in new.in_vec.tolist()]
    positions: dict[int, deque[int]] = defaultdict(deque)
    for i, c in enumerate(orig):
        positions[c].append(i)
    idx = []
    for c in got:
        if c in dropped or not positions[c]:
            raise PlanViolation(new.node, involved | set(got),
                                f"{ref.module} receives a channel it should not")
        idx.append(positions[c].popleft())
    missing = [c for c, left in positions.items() if left and c not in dropped]
    if missing:
        raise PlanViolation(new.node, involved, f"{ref.module} misses kept input channels")
    return idx


def _whole_groups(ref: ModuleCall, in_idx: list[int], out_idx: list[int]) -> int | None:
    """The new group count when whole groups were removed (each kept group keeps all its
    inputs and outputs, the same groups on both sides); None otherwise."""
    g = ref.groups
    block_in, block_out = len(ref.in_vec) // g, len(ref.out_vec) // g
    kept_in = sorted({i // block_in for i in in_idx})
    kept_out = sorted({o // block_out for o in out_idx})
    if not kept_in or kept_in != kept_out or len(kept_in) == g:
        return None
    whole_in = [j * block_in + i for j in kept_in for i in range(block_in)]
    whole_out = [j * block_out + o for j in kept_out for o in range(block_out)]
    if in_idx != whole_in or out_idx != whole_out:
        return None
    return len(kept_in)


def _check_groups(graph: DependencyGraph, ref: ModuleCall, in_idx: list[int],
                  out_idx: list[int]) -> None:
    """A grouped conv keeps its group count: equal counts per group, none empty, and every
    input channel still in its original group."""
    g = ref.groups
    involved = {graph.find(x) for x in ref.in_vec.tolist() + ref.out_vec.tolist()}
    n_in, n_out = len(ref.in_vec), len(ref.out_vec)
    if not in_idx or len(in_idx) % g or not out_idx or len(out_idx) % g:
        raise PlanViolation(ref.node, involved, f"{ref.module}: channels not divisible by "
                                                f"its {g} groups after pruning")
    block_in, new_block_in = n_in // g, len(in_idx) // g
    if any(i // block_in != p // new_block_in for p, i in enumerate(in_idx)):
        raise PlanViolation(ref.node, involved, f"{ref.module}: an input channel changed group")
    block_out, new_block_out = n_out // g, len(out_idx) // g
    if any(o // block_out != p // new_block_out for p, o in enumerate(out_idx)):
        raise PlanViolation(ref.node, involved, f"{ref.module}: output groups unbalanced")


def _identity(idx: list[int] | None, vec: torch.Tensor | None) -> bool:
    return idx is None or vec is None or idx == list(range(len(vec)))


def _tuple(idx: list[int] | None) -> tuple[int, ...] | None:
    return None if idx is None else tuple(idx)


def _example_shape(graph: DependencyGraph) -> tuple[int, ...]:
    for node in graph.gm.graph.nodes:
        if node.op == "placeholder":
            return graph.analysis.shapes[node.name]
    raise ValueError("the traced model has no input")
