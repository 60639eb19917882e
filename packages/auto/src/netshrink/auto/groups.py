"""Prune each layer group by its own amount, through netshrink.prune's dependency graph.

A *layer group* is one ``netshrink.prune.PruningGroup``: the producers (convs / linears) whose
output channels stand or fall together (a residual stage is one group). ``GroupPruner`` traces
the model and scores its channels once, then builds a verified ``ChannelPlan`` for any mapping
group name -> amount (the fraction of the group's prunable channels to remove, lowest scores
first), so a search can try many per-group amounts without tracing again. A group is named
after its first producer. Every result is a physically smaller deep copy (channel surgery);
``macs`` counts a plan's MACs on the meta device (shapes only, no weights copied).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from netshrink.auto.probe import record_layers
from netshrink.core import count_macs
from netshrink.prune import ChannelPlan, CriterionContext, DependencyGraph, apply_plan_
from netshrink.prune.criteria import score_classes
from netshrink.prune.planning import PlanViolation, make_plan
from netshrink.prune.selection import select_dropped


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    """A prunable layer group: its name (first producer), producers and prunable channels."""

    name: str
    producers: tuple[str, ...]
    classes: frozenset[int]
    channels: int  # prunable (not pinned) channels


class GroupPruner:
    """Per-group pruning plans for one model (see the module docstring).

    ``criterion``: a ``netshrink.prune`` criterion (``list_criteria()``); ``data``: batches for
    the criteria that need them; ``min_channels``: the floor every producer keeps.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, criterion: str = "l1",
                 data: Iterable[Any] | None = None, min_channels: int = 1) -> None:
        self.model = model
        self.example_input = example_input
        self.graph = DependencyGraph.build(model, example_input)
        self.scores = score_classes(criterion, CriterionContext(model, self.graph, data))
        self.min_channels = min_channels
        pinned = set(self.graph.pinned)
        bound = {c for blocks in self.graph.partitions for b in blocks for c in b}
        groups = []
        for g in self.graph.groups():
            free = frozenset(c for c in g.classes if c not in pinned and c not in bound)
            if free:
                groups.append(LayerGroup(g.producers[0], g.producers, free, len(free)))
        self.groups: dict[str, LayerGroup] = {g.name: g for g in groups}
        self._all = frozenset(c for g in groups for c in g.classes)
        self._extra_pinned: frozenset[int] = frozenset()
        self.base_macs = count_macs(model, example_input)
        self._meta = copy.deepcopy(model).to("meta")  # copied per MACs count: no weights
        self._positions = _output_positions(model, example_input)

    def plan(self, amounts: Mapping[str, float]) -> ChannelPlan:
        """A verified plan removing ``amounts[g]`` of each named group's prunable channels."""
        for name, amount in amounts.items():
            if name not in self.groups:
                raise ValueError(f"{name!r} is not a prunable layer group; allowed: "
                                 f"{', '.join(map(repr, self.groups))}")
            if not 0.0 <= amount <= 1.0:
                raise ValueError(f"amount {amount!r} for group {name!r} must be in [0, 1]")
        while True:
            dropped: set[int] = set()
            for name, amount in amounts.items():
                if amount <= 0.0:
                    continue
                group = self.groups[name]
                others = (self._all - group.classes) | self._extra_pinned
                dropped |= select_dropped(self.graph, self.scores, amount=amount,
                                          scope="global", mode="normal",
                                          min_channels=self.min_channels, pinned=others)
            try:
                return make_plan(self.graph, frozenset(dropped))
            except PlanViolation as violation:
                if not (violation.classes & dropped):
                    raise RuntimeError(f"pruning failed at node {violation}") from violation
                self._extra_pinned |= violation.classes & dropped  # keep them; select again

    def prune(self, amounts: Mapping[str, float]) -> nn.Module:
        """A physically smaller deep copy of the model (the model itself is unchanged)."""
        return apply_plan_(copy.deepcopy(self.model), self.plan(amounts))

    def macs(self, amounts: Mapping[str, float]) -> int:
        """MACs of the pruned model on the example input, counted on the meta device."""
        meta = copy.deepcopy(self._meta)
        apply_plan_(meta, self.plan(amounts))
        return count_macs(meta, self.example_input.to("meta"))

    def fast_macs(self, amounts: Mapping[str, float]) -> int:
        """``macs`` from the plan's shapes, ~100x faster: the original count less what each
        pruned Conv2d / Linear saves (its MACs are positions x out x in / groups x kernel,
        positions read once from a forward pass); ``macs`` itself when the plan changes a
        module of another kind. Equal to ``macs`` when the model's MACs are all in its
        Conv2d / Linear modules (tests check this)."""
        plan = self.plan(amounts)
        saved = 0
        for name, mp in plan.modules.items():
            m = self.model.get_submodule(name)
            if type(m) not in (nn.Conv2d, nn.Linear) or name not in self._positions:
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    continue  # no MACs counted for BatchNorms
                return self.macs(amounts)
            cin = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
            cout = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            groups = m.groups if isinstance(m, nn.Conv2d) else 1
            kernel = math.prod(m.kernel_size) if isinstance(m, nn.Conv2d) else 1
            new_in = cin if mp.in_idx is None else len(mp.in_idx)
            new_out = cout if mp.out_idx is None else len(mp.out_idx)
            new_groups = mp.groups if isinstance(m, nn.Conv2d) else 1
            pos = self._positions[name]
            saved += pos * kernel * (cout * (cin // groups) - new_out * (new_in // new_groups))
        return self.base_macs - saved


@torch.no_grad()
def _output_positions(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Output positions (batch x spatial) of every Conv2d / Linear called once on
    ``example_input`` (a module called twice is left out: ``fast_macs`` then counts exactly)."""
    found = record_layers(model, example_input,
                          lambda mod, _x, out: out.numel() // out.shape[_channel_dim(mod, out)])
    return {name: positions for name, (_, positions) in found.items()}


def _channel_dim(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return -1
    return 1 if out.dim() == 4 else 0  # batched or unbatched conv
