"""Structured channel pruning: ``prune_channels`` and the ``prune.channels`` Stage.

``prune_channels(model, example_input, config, data=None)`` returns a physically smaller copy
of ``model``: the dependency graph (``graph``) says which channels go together, a criterion
(``criteria``) scores them, ``selection`` picks the ones to drop, ``planning`` verifies the
pruned model by simulation and ``surgery`` cuts the weights.

Exactness: the pruned model computes what the original computes with the removed channels'
BatchNorm scale and shift set to zero, as long as every activation on a removed channel maps 0
to 0 (ReLU, ReLU6, hardtanh, SiLU, hardswish, GELU); after e.g. a sigmoid a removed channel
would have contributed a constant, which is dropped rather than folded into the next bias.

The Stage (``ChannelPruneStage``) does the same inside a recipe and records the pruned channel
counts in its ``describe()`` record, so ``rebuild`` recreates the pruned shapes on a freshly
built model before a checkpoint's weights load. With ``soft=True`` it is soft filter pruning
(He et al. 2018): after every training epoch the currently selected filters are zeroed but keep
training (so they can recover); after the last epoch the final selection is removed physically.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from netshrink.core import (
    Stage,
    check_choice,
    check_float,
    check_int,
    count_macs,
    deprecated_alias,
    register_stage,
)
from netshrink.prune.criteria import CriterionContext, list_criteria, score_classes
from netshrink.prune.graph import DependencyGraph
from netshrink.prune.planning import ChannelPlan, PlanViolation, make_plan
from netshrink.prune.pruners import find_pruner
from netshrink.prune.selection import select_dropped, whole_group_cells
from netshrink.prune.surgery import (
    apply_plan_,
    apply_structure_,
    channel_structure,
    tensor_structure,
)

SCOPES: tuple[str, ...] = ("global", "per_layer")
DEFAULT_AMOUNT = 0.5
#: Bisection steps of the ``macs_target`` search (the amount is found to within 2**-12).
MACS_SEARCH_STEPS = 12
MODES: tuple[str, ...] = ("normal", "regular", "group")


@dataclasses.dataclass(frozen=True)
class ChannelPruneConfig:
    """How to prune channels.

    ``criterion``: a registered criterion (``list_criteria()``). ``amount``: fraction of the
    prunable channels to remove, in [0, 1] (default 0.5; in global scope a channel group tied
    across several layers, e.g. a residual stream, counts each of their filters, see
    ``selection``). ``macs_target``: instead of an
    amount, the fraction of the model's MACs (on the example input) to keep, in (0, 1]: the
    amount is then searched (bisection) for the pruned model with the most MACs not above the
    target, so criteria and modes can be compared at the same cost; give one or the other.
    ``scope``: ``"global"`` (one threshold across
    layers, as network slimming) or ``"per_layer"``. ``mode``: ``"normal"`` (exact fraction),
    ``"regular"`` (kept counts rounded to multiples of ``round_to`` >= 2) or ``"group"`` (also
    prune grouped convs / shuffles / chunks, each group losing the same count).
    ``ignored_layers``: module names or fnmatch patterns whose output channels are kept.
    ``min_channels``: the floor every layer keeps. ``max_batches``: batches used by the
    criteria that need data; ``seed``: for ``random``.
    """

    criterion: str = "bn_gamma"
    amount: float | None = None
    macs_target: float | None = None
    scope: str = "global"
    mode: str = "normal"
    round_to: int = 1
    ignored_layers: tuple[str, ...] = ()
    min_channels: int = 1
    max_batches: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("criterion", self.criterion, list_criteria())
        if self.macs_target is None:
            if self.amount is None:
                object.__setattr__(self, "amount", DEFAULT_AMOUNT)
            check_float("amount", self.amount, min_value=0.0, max_value=1.0)
        else:
            if self.amount is not None:
                raise ValueError(f"amount={self.amount!r} and macs_target={self.macs_target!r} "
                                 "were both given; give one of them")
            check_float("macs_target", self.macs_target, min_value=0.0, max_value=1.0,
                        min_exclusive=True)
        check_choice("scope", self.scope, SCOPES)
        check_choice("mode", self.mode, MODES)
        check_int("round_to", self.round_to, min_value=1)
        if self.mode == "regular" and self.round_to < 2:
            raise ValueError(f"round_to={self.round_to!r} must be at least 2 in regular mode")
        if self.mode != "regular" and self.round_to != 1:
            raise ValueError(f"round_to={self.round_to!r} is only used by mode='regular'; "
                             f"leave it at 1 for mode={self.mode!r}")
        layers = self.ignored_layers
        if isinstance(layers, str) or not all(isinstance(x, str) for x in layers):
            raise ValueError(f"ignored_layers={layers!r} must be a list of module names")
        object.__setattr__(self, "ignored_layers", tuple(layers))
        check_int("min_channels", self.min_channels, min_value=1)
        check_int("max_batches", self.max_batches, min_value=1)
        check_int("seed", self.seed, min_value=0)


def plan_channels(model: nn.Module, example_input: torch.Tensor, config: ChannelPruneConfig,
                  data: Iterable[Any] | None = None) -> ChannelPlan:
    """Score, select and verify: which channels ``prune_channels`` would remove."""
    graph = DependencyGraph.build(model, example_input)
    context = CriterionContext(model, graph, data, config.max_batches, config.seed)
    scores = score_classes(config.criterion, context)
    pinned = ignored_classes(graph, config.ignored_layers)
    reasons: dict[int, str] = {}

    def plan_for(amount: float) -> ChannelPlan:
        nonlocal pinned
        while True:
            dropped = select_dropped(graph, scores, amount=amount, scope=config.scope,
                                     mode=config.mode, round_to=config.round_to,
                                     min_channels=config.min_channels, pinned=pinned)
            try:
                return make_plan(graph, dropped)
            except PlanViolation as violation:
                if not (violation.classes & dropped):
                    raise RuntimeError(f"pruning {type(model).__name__} failed at node "
                                       f"{violation}") from violation
                pinned = pinned | violation.classes  # keep them and select again
                for c in violation.classes:
                    reasons.setdefault(c, f"the pruned model's check at node {violation}")

    if config.macs_target is None:
        plan = plan_for(config.amount)
    else:
        plan = _search_macs(model, example_input, config.macs_target, plan_for)
    blocked = blocking_modules(graph, config.mode, reasons)
    plan = dataclasses.replace(plan, blocked=blocked)
    asked = (config.amount or 0.0) + (config.macs_target or 0.0) > 0
    model_io = ("the model's input", "the model's output")
    candidates = sum(1 for c in graph.classes() if graph.pin_reasons.get(c) not in model_io)
    held = sum(blocked.values())
    bound = _bound(graph) if config.mode != "group" else set()
    if config.mode == "normal":
        bound -= {c for cells in whole_group_cells(graph, graph.pinned).values()
                  for cell in cells for c in cell}
    free = [c for c in graph.classes()
            if c not in graph.pinned and c not in pinned and c not in bound]
    if asked and plan.removed_channels == 0 and held and not free:
        raise PruningBlockedError(
            f"pruning {type(model).__name__} removed no channels: {held} of its {candidates} "
            f"channel groups are held by {_shown(blocked)}. A layer type that reads its own "
            "tensors per channel needs a pruner (netshrink.prune.register_pruner, see "
            "docs/extending.md); an op the analysis does not follow keeps its channels")
    if asked and candidates and held > candidates / 2:
        warnings.warn(f"pruning {type(model).__name__}: {held} of its {candidates} channel "
                      f"groups cannot be pruned, held by {_shown(blocked)}; the amount applies "
                      "to the rest", PruningBlockedWarning, stacklevel=2)
    return plan


def _bound(graph: DependencyGraph) -> set[int]:
    return {c for blocks in graph.partitions for block in blocks for c in block}


class PruningBlockedError(TypeError):
    """Channels were asked for but none could be removed; the message names what holds them
    (a TypeError for compatibility: it used to be raised for unregistered layer types)."""


class PruningBlockedWarning(UserWarning):
    """Most channel groups of the model cannot be pruned; the message names what holds them."""


def blocking_modules(graph: DependencyGraph, mode: str = "normal",
                     extra: Mapping[int, str] | None = None) -> dict[str, int]:
    """What keeps prunable channel groups from being pruned: where each was pinned (a module
    without a pruner, an op the analysis does not follow, a module called twice, ...) or, in
    the normal and regular modes, the grouped conv / chunk / shuffle binding it -> how many
    groups, most first. The model's own input and output channels are not counted; ``extra``
    gives the reasons of classes pinned by the caller (ignored layers, failed checks)."""
    extra = extra or {}
    counts: Counter[str] = Counter()
    bound: dict[int, str] = {}
    whole: set[int] = set()
    if mode == "normal":  # grouped convs that lose whole groups do not hold their channels
        whole = {c for cells in whole_group_cells(graph, graph.pinned).values()
                 for cell in cells for c in cell}
    if mode != "group":
        for blocks, why in zip(graph.partitions, graph.partition_reasons, strict=True):
            for block in blocks:
                for c in block:
                    if c not in whole:
                        bound.setdefault(c, f"{why} (mode='group' prunes it)")
    for c in graph.classes():
        if c in graph.pinned:
            reason = graph.pin_reasons.get(c, "the analysis")
            if reason not in ("the model's input", "the model's output"):
                counts[reason] += 1
        elif c in bound:
            counts[bound[c]] += 1
        elif c in extra:
            counts[extra[c]] += 1
    return dict(counts.most_common())


def _shown(blocked: dict[str, int], limit: int = 6) -> str:
    items = [f"{where} ({n})" for where, n in list(blocked.items())[:limit]]
    more = len(blocked) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def _search_macs(model: nn.Module, example_input: torch.Tensor, target: float,
                 plan_for: Callable[[float], ChannelPlan]) -> ChannelPlan:
    """Bisection on the amount: the plan with the most MACs not above ``target`` x the
    original's. MACs fall as the amount grows except for rounding (regular / group modes), so
    every plan tried is kept and the best feasible one wins."""
    def macs_of(plan: ChannelPlan | None) -> int:
        # on the meta device: shapes only, so no weights are copied and no conv is computed
        meta = copy.deepcopy(model).to("meta")
        if plan is not None:
            apply_plan_(meta, plan)
        return count_macs(meta, example_input.to("meta"))

    original = macs_of(None)
    limit = target * original
    best: tuple[int, ChannelPlan] | None = None
    lo, hi = 0.0, 1.0
    for _ in range(MACS_SEARCH_STEPS):
        mid = (lo + hi) / 2
        plan = plan_for(mid)
        macs = macs_of(plan)
        if macs <= limit:
            hi = mid
            if best is None or macs > best[0]:
                best = (macs, plan)
        else:
            lo = mid
    if best is None:
        plan = plan_for(1.0)
        macs = macs_of(plan)
        if macs > limit:
            raise ValueError(
                f"macs_target={target!r} cannot be reached: pruning every prunable channel "
                f"(down to min_channels) leaves {macs / original:.3f} of the "
                f"{original:,} MACs; allowed: a target of at least that")
        best = (macs, plan)
    return best[1]


def ignored_classes(graph: DependencyGraph, patterns: Iterable[str]) -> frozenset[int]:
    """Classes of the producers / BatchNorms whose names match ``patterns``."""
    patterns = list(patterns)
    out: set[int] = set()
    for table in (graph.producers, graph.followers):
        for name, classes in table.items():
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                out.update(classes)
    return frozenset(out)


def prune_channels(model: nn.Module, example_input: torch.Tensor, config: ChannelPruneConfig,
                   data: Iterable[Any] | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` (``model`` itself is left unchanged)."""
    plan = plan_channels(model, example_input, config, data)
    return apply_plan_(copy.deepcopy(model), plan)


# -- the Stage ------------------------------------------------------------------------------

Structure = tuple[tuple[str, tuple[tuple[str, int], ...]], ...]


@dataclasses.dataclass(frozen=True)
class ChannelPruneStageConfig:
    """``prune`` settings, the ``input_shape`` used to trace, ``soft`` filter pruning, and the
    pruned ``structure`` (module -> shape numbers), recorded by the stage for rebuilding."""

    prune: ChannelPruneConfig = ChannelPruneConfig()
    input_shape: tuple[int, ...] = (1, 3, 32, 32)
    soft: bool = False
    structure: Structure = ()

    def __post_init__(self) -> None:
        if isinstance(self.prune, Mapping):
            object.__setattr__(self, "prune", ChannelPruneConfig(**self.prune))
        if not isinstance(self.prune, ChannelPruneConfig):
            raise ValueError(f"prune={self.prune!r} must be a ChannelPruneConfig or a dict")
        shape = tuple(self.input_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"input_shape={self.input_shape!r} must be positive integers")
        object.__setattr__(self, "input_shape", shape)
        check_choice("soft", self.soft, (False, True))
        object.__setattr__(self, "structure", _as_structure(self.structure))


def _as_structure(raw: Any) -> Structure:
    items = raw.items() if isinstance(raw, Mapping) else raw
    try:
        return tuple((str(name), tuple((str(k), int(v)) for k, v in
                                       (shape.items() if isinstance(shape, Mapping) else shape)))
                     for name, shape in items)
    except (TypeError, ValueError) as err:
        raise ValueError(f"structure={raw!r} must map module names to shape numbers") from err


@register_stage("prune.channels")
class ChannelPruneStage(Stage):
    """Channel pruning in a recipe. ``data`` feeds the criteria that need batches."""

    config_class = ChannelPruneStageConfig

    def __init__(self, config: ChannelPruneStageConfig,
                 data: Iterable[Any] | None = None) -> None:
        super().__init__(config)
        self.data = data
        self.structure: dict[str, dict[str, int]] = {
            name: dict(shape) for name, shape in config.structure}
        self.last_plan: ChannelPlan | None = None

    def use_data(self, batches: list[Any]) -> None:
        """Batches for the criteria that need them (taylor, apoz, mean_activation)."""
        self.data = batches

    def _plan(self, model: nn.Module) -> ChannelPlan:
        ref = next(iter(model.parameters()), torch.empty(0))
        example = torch.zeros(self.config.input_shape, dtype=ref.dtype, device=ref.device)
        self.last_plan = plan_channels(model, example, self.config.prune, self.data)
        return self.last_plan

    def apply(self, model: nn.Module) -> nn.Module:
        """Prune ``model`` in place (soft mode: leave it whole until the last epoch)."""
        return model if self.config.soft else self.finalize(model)

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove the selected channels physically (in place) and record the new shapes."""
        plan = self._plan(model)
        apply_plan_(model, plan)
        self.structure.update(channel_structure(model, list(plan.modules)))
        self.structure.update(tensor_structure(model, plan))
        return model

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Give a fresh model the recorded pruned shapes (weights are loaded afterwards)."""
        return apply_structure_(model, self.structure)

    def describe(self) -> dict[str, Any]:
        record = super().describe()
        record["config"]["structure"] = {name: dict(shape)
                                         for name, shape in self.structure.items()}
        return record

    @torch.no_grad()
    def after_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Soft mode: zero the selected filters; after the last epoch, remove them."""
        if not self.config.soft:
            return
        if epoch + 1 >= epochs:
            self.finalize(model)
            return
        zero_filters_(model, self._plan(model))


@torch.no_grad()
def zero_filters_(model: nn.Module, plan: ChannelPlan) -> None:
    """Zero the removed output filters (weight rows and bias) of every conv / linear (layers
    with a per-channel pruner, such as BatchNorms, are left alone)."""
    for name, idx in plan.removed.items():
        m = model.get_submodule(name)
        pruner = find_pruner(type(m))
        if not idx or pruner is None or pruner.per_channel:  # BatchNorms, channel scales
            continue
        index = torch.tensor(idx, dtype=torch.long, device=m.weight.device)
        m.weight[index] = 0
        if getattr(m, "bias", None) is not None:
            m.bias[index] = 0


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
zero_filters = deprecated_alias(zero_filters_, "zero_filters")
