"""Channel importance criteria: a pure rule per paper, and a registry that scores classes.

Each rule is a small function on tensors (tested on hand-made tensors); a lower score means a
less important channel. ``score_classes`` applies the registered criterion to a model and its
``DependencyGraph`` and averages the scores of all channels of a class (e.g. the BatchNorms of a
residual stream). A class the criterion cannot score (``bn_gamma`` on a linear neuron without a
BatchNorm, ``apoz`` on a channel that never passes an activation) gets no score and is kept.
Non-finite weights or scores are an error (``NonFiniteScoreError``, naming the layer): ranking
NaNs would prune nothing (or anything) without a word.

==================  ======================================================================
``bn_gamma``        |gamma| of the BatchNorm after the channel (network slimming, Liu 2017)
``l1`` / ``l2``     L1 / L2 norm of the producing filter (Li et al. 2017)
``fpgm``            sum of distances to the layer's other filters: filters closest to the
                    geometric median are the most replaceable (He et al. 2019)
``taylor``          first-order Taylor: (sum over the filter of weight * grad)^2, averaged
                    over batches (Molchanov et al. 2019); needs (inputs, targets) batches
``apoz``            1 - average percentage of zeros after the activation (Hu et al. 2016)
``mean_activation`` mean activation after the activation (Molchanov et al. 2017)
``random``          uniform random scores (the baseline), seeded
==================  ======================================================================
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import Registry
from netshrink.prune.graph import DependencyGraph

# -- the rules ------------------------------------------------------------------------------


def bn_gamma_scores(gamma: torch.Tensor) -> torch.Tensor:
    """|gamma| per channel."""
    return gamma.detach().abs()


def l1_scores(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output filter (dim 0)."""
    return weight.detach().flatten(1).abs().sum(1)


def l2_scores(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output filter (dim 0)."""
    return weight.detach().flatten(1).norm(dim=1)


def fpgm_scores(weight: torch.Tensor) -> torch.Tensor:
    """Sum of Euclidean distances from each filter to all others; the smallest sums belong to
    the filters nearest the geometric median (FPGM prunes those)."""
    flat = weight.detach().flatten(1).double()
    return torch.cdist(flat, flat).sum(1).to(weight.dtype)


def taylor_scores(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(sum over each filter of weight * grad)^2: the squared first-order change of the loss
    when the filter is removed."""
    return (weight.detach() * grad.detach()).flatten(1).sum(1).pow(2)


def apoz_scores(activation: torch.Tensor) -> torch.Tensor:
    """1 - fraction of zero activations per channel (dim 1) over batch and positions."""
    zeros = (activation.detach() == 0).transpose(0, 1).flatten(1).double().mean(1)
    return (1.0 - zeros).to(activation.dtype)


def mean_activation_scores(activation: torch.Tensor) -> torch.Tensor:
    """Mean activation per channel (dim 1) over batch and positions."""
    return activation.detach().transpose(0, 1).flatten(1).mean(1)


def random_scores(n: int, seed: int) -> torch.Tensor:
    """Uniform random scores, reproducible from ``seed``."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


# -- the registry ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CriterionContext:
    """What a criterion may use: the model, its graph, batches (if it needs data)."""

    model: nn.Module
    graph: DependencyGraph
    data: Iterable[Any] | None = None
    max_batches: int = 4
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Criterion:
    name: str
    needs_data: bool
    score: Callable[[CriterionContext], dict[int, float]]


CRITERIA: Registry[Criterion] = Registry("importance criterion")


def register_criterion(name: str, *, needs_data: bool = False):
    """Decorator: register ``fn(context) -> {class: score}`` as criterion ``name``."""
    def add(fn: Callable[[CriterionContext], dict[int, float]]):
        CRITERIA.register(name)(Criterion(name, needs_data, fn))
        return fn
    return add


def unregister_criterion(name: str) -> None:
    """Remove criterion ``name`` (ValueError listing the known names when it is unknown)."""
    CRITERIA.unregister(name)


def list_criteria() -> list[str]:
    return CRITERIA.names()


class NonFiniteScoreError(ValueError):
    """A layer's weights, or the importance scores computed from them, are NaN or infinite."""


def _check_finite_weights(name: str, context: CriterionContext) -> None:
    """Every parameter and floating buffer of the graph's producers and followers is finite."""
    graph = context.graph
    for layer in (*graph.producers, *graph.followers):
        for pname, t in (*context.model.get_submodule(layer).named_parameters(),
                         *context.model.get_submodule(layer).named_buffers()):
            if t.is_floating_point() and t.device.type != "meta" and not bool(
                    torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteScoreError(
                    f"cannot score channels with criterion {name!r}: layer {layer!r} has "
                    f"non-finite {pname} ({bad} of {t.numel()} values NaN or infinite); "
                    "prune a model whose weights are finite")


def score_classes(name: str, context: CriterionContext) -> dict[int, float]:
    """Score every class of ``context.graph`` with criterion ``name``.

    Raises NonFiniteScoreError (a ValueError) naming the layer if a weight of a prunable
    layer, or a score, is NaN or infinite."""
    criterion = CRITERIA.get(name)
    if criterion.needs_data and context.data is None:
        raise ValueError(f"criterion {name!r} needs data: pass a few batches as data=")
    _check_finite_weights(name, context)
    scores = criterion.score(context)
    bad = sorted(c for c, v in scores.items() if not math.isfinite(v))
    if bad:
        producers = context.graph.producers_of()
        layers = sorted({layer for c in bad for layer, _ in producers.get(c, [])})
        raise NonFiniteScoreError(
            f"criterion {name!r} gave {len(bad)} channel(s) a non-finite score (NaN or "
            f"infinite), in layer(s) {', '.join(map(repr, layers)) or '(no producer)'}; "
            "check the data given to the criterion and the model's outputs")
    return scores


def _average(per_channel: Iterable[tuple[list[int], torch.Tensor]]) -> dict[int, float]:
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for classes, values in per_channel:
        for c, v in zip(classes, values.tolist(), strict=True):
            sums[c] += v
            counts[c] += 1
    return {c: sums[c] / counts[c] for c in sums}


def _producer_weights(ctx: CriterionContext, rule: Callable[[torch.Tensor], torch.Tensor]):
    for name, classes in ctx.graph.producers.items():
        yield classes, rule(ctx.model.get_submodule(name).weight)


@register_criterion("bn_gamma")
def _bn_gamma(ctx: CriterionContext) -> dict[int, float]:
    pairs = []
    for name, classes in ctx.graph.followers.items():
        m = ctx.model.get_submodule(name)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            pairs.append((classes, bn_gamma_scores(m.weight)))
    return _average(pairs)


@register_criterion("l1")
def _l1(ctx: CriterionContext) -> dict[int, float]:
    return _average(_producer_weights(ctx, l1_scores))


@register_criterion("l2")
def _l2(ctx: CriterionContext) -> dict[int, float]:
    return _average(_producer_weights(ctx, l2_scores))


@register_criterion("fpgm")
def _fpgm(ctx: CriterionContext) -> dict[int, float]:
    return _average(_producer_weights(ctx, fpgm_scores))


@register_criterion("random")
def _random(ctx: CriterionContext) -> dict[int, float]:
    classes = ctx.graph.classes()
    return dict(zip(classes, random_scores(len(classes), ctx.seed).tolist(), strict=True))


def _batches(ctx: CriterionContext) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    for batch in itertools.islice(ctx.data, ctx.max_batches):
        if isinstance(batch, (tuple, list)):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            yield batch, None


@register_criterion("taylor", needs_data=True)
def _taylor(ctx: CriterionContext) -> dict[int, float]:
    model = ctx.model
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    n = 0
    try:
        for x, y in _batches(ctx):
            if y is None:
                raise ValueError("criterion 'taylor' needs (inputs, targets) batches")
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            for name in ctx.graph.producers:
                w = model.get_submodule(name).weight
                if w.grad is None:
                    continue
                s = taylor_scores(w, w.grad)
                totals[name] = totals[name] + s if name in totals else s
            n += 1
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("criterion 'taylor' got no batches")
    return _average((ctx.graph.producers[name], t / n) for name, t in totals.items())


class _ActivationRecorder(torch.fx.Interpreter):
    """Runs the traced model and hands the output of every activation node to ``sink``."""

    def __init__(self, gm: torch.fx.GraphModule, nodes: set[str],
                 sink: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(gm)
        self.nodes = nodes
        self.sink = sink

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        if n.name in self.nodes:
            self.sink(n.name, value)
        return value


def _activation_statistic(ctx: CriterionContext,
                          rule: Callable[[torch.Tensor], torch.Tensor]) -> dict[int, float]:
    graph = ctx.graph
    totals: dict[str, torch.Tensor] = {}
    weights: dict[str, int] = defaultdict(int)

    def sink(node: str, value: torch.Tensor) -> None:
        s = rule(value).double() * value.shape[0]
        totals[node] = totals[node] + s if node in totals else s
        weights[node] += value.shape[0]

    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            recorder = _ActivationRecorder(graph.gm, set(graph.activations), sink)
            for x, _ in _batches(ctx):
                recorder.run(x)
    finally:
        model.train(was_training)
    if not weights:
        raise ValueError("activation criteria got no batches")
    return _average((graph.activations[node], t / weights[node]) for node, t in totals.items())


@register_criterion("apoz", needs_data=True)
def _apoz(ctx: CriterionContext) -> dict[int, float]:
    return _activation_statistic(ctx, apoz_scores)


@register_criterion("mean_activation", needs_data=True)
def _mean_activation(ctx: CriterionContext) -> dict[int, float]:
    return _activation_statistic(ctx, mean_activation_scores)
