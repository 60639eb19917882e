"""Budget-driven pruning: per-group amounts chosen from the sensitivity curves.

Two modes (the compression survey's AMC modes):

* resource-constrained: the best accuracy with at most ``macs_target`` x the model's MACs, or
  within a CPU latency (``latency_target`` x the float model's measured latency, or
  ``latency_seconds``);
* ``max_loss`` (accuracy-guaranteed): the smallest model (fewest MACs) whose accuracy, as
  measured by the caller's ``evaluate``, is at most ``max_loss`` below the original's.

Search (a NetAdapt-style greedy walk, with the sensitivity curves standing in for NetAdapt's
short fine-tunes): start unpruned; at each step try raising every group's amount by ``step``,
count each trial's MACs on the real pruned structure (meta device, no weights), and take the
trial with the least predicted accuracy loss per MAC removed (the loss of a group at an amount
is its measured single-group drop, linearly interpolated: ``SensitivityResult.prune_loss``).
In ``macs_target`` mode the walk stops at the first step under the target, and that last
step's amount is bisected so the result keeps as many MACs as the target allows. A latency
target walks the same way on the latency predicted by a per-layer lookup table measured on
this machine (``latency.LatencyModel``, NetAdapt's method), then times the result; while the
measured latency is over the target, the predicted limit is set that far under the result's
prediction and the walk is redone (at most ``LATENCY_ROUNDS``), so the target holds as
measured. In ``max_loss`` mode the walk goes on until no group can shrink (or the predicted
loss exceeds ``3 x max_loss + 0.05``), then the longest prefix of the walk whose *measured*
accuracy loss is within ``max_loss`` is found by bisection over the walk (log2(steps)
evaluations; accuracy is assumed to fall along the walk).

Cost: steps x groups plan-and-count calls (a few milliseconds each: ``fast_macs``), plus
one evaluation in ``macs_target`` mode or ~log2(steps) + 1 in ``max_loss`` mode; the
sensitivity analysis itself is separate. A latency target adds the lookup table (layers x
levels^2 layer timings) and one whole-model timing per round (``BudgetReport.latency``). The
MACs of the returned model are counted on it (``BudgetReport.macs``), and its latency timed on
it, never estimated.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netshrink.auto.groups import GroupPruner
from netshrink.auto.latency import LatencyModel
from netshrink.auto.sensitivity import Evaluate, Prepare, SensitivityResult, _score
from netshrink.core import check_float, check_int, count_macs

#: Bisection steps that fit the last greedy step to the MACs target.
FIT_STEPS = 10
#: Walks allowed for a latency target while the measured result is over it.
LATENCY_ROUNDS = 6

Cost = Callable[[dict[str, float]], float]


@dataclasses.dataclass(frozen=True)
class BudgetPruneConfig:
    """Give exactly one budget: ``macs_target`` (fraction of MACs kept, in (0, 1]),
    ``latency_target`` (fraction of the float model's measured CPU latency, in (0, 1]),
    ``latency_seconds`` (a CPU latency on the example input, > 0) or ``max_loss`` (accuracy
    loss allowed, >= 0). ``step``: amount added to one group per greedy step; ``max_amount``:
    the most of any group's channels that may go; ``latency_levels``: channel counts per axis
    of the latency lookup table."""

    macs_target: float | None = None
    max_loss: float | None = None
    step: float = 0.05
    max_amount: float = 0.9
    latency_target: float | None = None
    latency_seconds: float | None = None
    latency_levels: int = 6

    def __post_init__(self) -> None:
        budgets = {"macs_target": self.macs_target, "latency_target": self.latency_target,
                   "latency_seconds": self.latency_seconds, "max_loss": self.max_loss}
        if sum(v is not None for v in budgets.values()) != 1:
            given = ", ".join(f"{k}={v!r}" for k, v in budgets.items())
            raise ValueError(f"{given}: give exactly one of them")
        for name in ("macs_target", "latency_target"):
            if budgets[name] is not None:
                check_float(name, budgets[name], min_value=0.0, max_value=1.0,
                            min_exclusive=True)
        if self.latency_seconds is not None:
            check_float("latency_seconds", self.latency_seconds, min_value=0.0,
                        min_exclusive=True)
        check_int("latency_levels", self.latency_levels, min_value=2)
        if self.max_loss is not None:
            check_float("max_loss", self.max_loss, min_value=0.0)
        check_float("step", self.step, min_value=0.0, max_value=1.0, min_exclusive=True)
        check_float("max_amount", self.max_amount, min_value=0.0, max_value=1.0,
                    min_exclusive=True)


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """The chosen amounts, the MACs counted on the result, and the search's cost."""

    amounts: dict[str, float]
    base_macs: int
    macs: int
    predicted_loss: float
    accuracy: float | None
    baseline: float | None
    steps: int
    evaluations: int
    seconds: float

    # latency mode: seconds measured on the result / the float model / the target, rounds
    # (walks), lookup-table timings and their seconds
    latency: dict[str, float] | None = None

    @property
    def latency_met(self) -> bool | None:
        if self.latency is None:
            return None
        return self.latency["seconds"] <= self.latency["target_seconds"]

    @property
    def macs_fraction(self) -> float:
        return self.macs / self.base_macs

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["macs_fraction"] = self.macs_fraction
        return out


def _walk(pruner: GroupPruner, sens: SensitivityResult, config: BudgetPruneConfig,
          cost: Cost, base: float, limit: float | None,
          ) -> list[tuple[dict[str, float], float, float]]:
    """The greedy walk: (amounts, cost, predicted loss) after each step, the start first.
    ``cost``: MACs or predicted latency of some amounts (``base`` unpruned); the walk stops
    at ``limit`` (``None``: when no group can shrink or the loss ceiling is passed)."""
    amounts = dict.fromkeys(pruner.groups, 0.0)
    macs = base
    ceiling = None if config.max_loss is None else 3 * config.max_loss + 0.05
    loss = 0.0
    path = [(dict(amounts), macs, loss)]
    while limit is None or macs > limit:
        best: tuple[float, str, float, int, float] | None = None
        for g, amount in amounts.items():
            new, m = amount, macs
            while m >= macs and new < config.max_amount - 1e-9:  # until a channel goes
                new = round(min(config.max_amount, new + config.step), 9)
                m = cost({**amounts, g: new})
            if m >= macs:
                continue
            dl = sens.prune_loss(g, new) - sens.prune_loss(g, amount)
            score = max(dl, 0.0) / (macs - m)
            if best is None or score < best[0]:
                best = (score, g, new, m, dl)
        if best is None:
            break
        _, g, new, macs, dl = best
        amounts[g] = new
        loss += dl
        path.append((dict(amounts), macs, loss))
        if ceiling is not None and loss > ceiling:
            break
    return path


def _fit(before: dict[str, float], after: dict[str, float], limit: float, cost: Cost,
         ) -> dict[str, float]:
    """Bisect the one group that changed between ``before`` (over ``limit``) and ``after``
    (within it): the amounts with the highest ``cost`` not above ``limit``."""
    (g,) = [k for k in after if after[k] != before[k]]
    lo, hi = before[g], after[g]
    for _ in range(FIT_STEPS):
        mid = (lo + hi) / 2
        if cost({**before, g: mid}) <= limit:
            hi = mid
        else:
            lo = mid
    return {**before, g: hi}


def prune_to_budget(model: nn.Module, example_input: torch.Tensor, sensitivity: SensitivityResult,
                    config: BudgetPruneConfig, *, evaluate: Evaluate | None = None,
                    prepare: Prepare | None = None, data: Any = None,
                    pruner: GroupPruner | None = None, latency: LatencyModel | None = None,
                    ) -> tuple[nn.Module, BudgetReport]:
    """A pruned copy of ``model`` and its report (see the module docstring). ``evaluate`` is
    needed in ``max_loss`` mode (optional otherwise: it fills ``BudgetReport.accuracy``);
    ``prepare`` runs on each pruned copy before it is evaluated (BatchNorm re-estimation);
    ``latency``: the latency model of a latency target (built on ``example_input`` when not
    given; pass one to reuse its lookup table or to inject a timing function)."""
    start = time.perf_counter()
    pruner = pruner or GroupPruner(model, example_input, criterion=sensitivity.criterion,
                                   data=data)
    unknown = [g for g in pruner.groups if g not in sensitivity.prune]
    if unknown:
        raise ValueError(f"the sensitivity result has no pruning curve for group(s) {unknown}; "
                         "analyse this model first")
    if config.max_loss is not None and evaluate is None:
        raise ValueError("max_loss mode measures accuracy: pass evaluate=")
    evaluations = 0
    baseline = accuracy = None
    latency_record = None
    if config.macs_target is not None:
        limit = config.macs_target * pruner.base_macs
        path = _walk(pruner, sensitivity, config, pruner.fast_macs, pruner.base_macs, limit)
        amounts, macs, loss = path[-1]
        if macs > limit:
            raise ValueError(
                f"macs_target={config.macs_target!r} cannot be reached: with every group "
                f"pruned by up to max_amount={config.max_amount} the model keeps "
                f"{macs / pruner.base_macs:.3f} of its MACs; allowed: at least that")
        if len(path) > 1:
            amounts = _fit(path[-2][0], amounts, limit, pruner.macs)
        pruned = pruner.prune(amounts)
    elif config.max_loss is None:
        pruned, amounts, path, latency_record = _to_latency(pruner, sensitivity, config,
                                                            latency, example_input)
    if config.max_loss is None:
        if evaluate is not None:
            baseline = sensitivity.baseline
            accuracy = _score(pruned, evaluate, prepare)
            evaluations = 1
    else:
        path = _walk(pruner, sensitivity, config, pruner.fast_macs, pruner.base_macs, None)
        baseline = sensitivity.baseline
        tolerance = config.max_loss
        lo, hi = 0, len(path) - 1  # path[lo] is within the loss (the unpruned model is)
        cache: dict[int, tuple[nn.Module, float]] = {}

        def measure(i: int) -> float:
            nonlocal evaluations
            if i not in cache:
                m = pruner.prune(path[i][0])
                cache[i] = (m, _score(m, evaluate, prepare))
                evaluations += 1
            return cache[i][1]

        while lo < hi:
            mid = (lo + hi + 1) // 2
            if baseline - measure(mid) <= tolerance:
                lo = mid
            else:
                hi = mid - 1
        amounts, _, loss = path[lo]
        pruned = pruner.prune(amounts) if lo not in cache else cache[lo][0]
        accuracy = measure(lo) if lo else baseline
    macs = count_macs(pruned, example_input)
    loss = sum(sensitivity.prune_loss(g, a) for g, a in amounts.items())
    report = BudgetReport(amounts={g: a for g, a in amounts.items() if a > 0}, base_macs=
                          pruner.base_macs, macs=macs, predicted_loss=loss, accuracy=accuracy,
                          baseline=baseline, steps=len(path) - 1, evaluations=evaluations,
                          seconds=time.perf_counter() - start, latency=latency_record)
    if config.macs_target is not None and macs > config.macs_target * pruner.base_macs:
        raise RuntimeError(f"internal error: the pruned model has {macs} MACs, over the "
                           f"target {config.macs_target} x {pruner.base_macs}")
    return pruned, report


def _to_latency(pruner: GroupPruner, sens: SensitivityResult, config: BudgetPruneConfig,
                latency: LatencyModel | None, example_input: torch.Tensor,
                ) -> tuple[nn.Module, dict[str, float], list, dict[str, float]]:
    """Latency mode: walk on the predicted latency, time the result, tighten until it holds."""
    lat = latency or LatencyModel(pruner.model, example_input, levels=config.latency_levels)
    target = (config.latency_seconds if config.latency_seconds is not None
              else config.latency_target * lat.base)
    given = (f"latency_seconds={config.latency_seconds!r}" if config.latency_seconds is not None
             else f"latency_target={config.latency_target!r}")

    def estimate(amounts: dict[str, float]) -> float:
        return lat.estimate(pruner, amounts)

    limit = target
    measured: list[float] = []
    for _ in range(LATENCY_ROUNDS):
        path = _walk(pruner, sens, config, estimate, lat.base, limit)
        amounts, predicted, _ = path[-1]
        if predicted > limit:
            raise ValueError(
                f"{given} cannot be reached: with every group pruned by up to max_amount="
                f"{config.max_amount} the model is predicted at {predicted:.3g} s (float "
                f"model: {lat.base:.3g} s measured; target {target:.3g} s after "
                f"{len(measured)} over-target result(s)); allowed: a larger target")
        if len(path) > 1:
            amounts = _fit(path[-2][0], amounts, limit, estimate)
        pruned = pruner.prune(amounts)
        measured.append(lat.measure(pruned))
        if measured[-1] <= target:
            record = {"seconds": measured[-1], "base_seconds": lat.base,
                      "target_seconds": target, "predicted_seconds": estimate(amounts),
                      "rounds": len(measured), **lat.as_dict()}
            return pruned, amounts, path, record
        # under the result's own prediction by the excess: the next walk must go further
        limit = min(limit, estimate(amounts)) - (measured[-1] - target)
    raise ValueError(f"{given} cannot be met as measured: the results timed "
                     f"{', '.join(f'{m:.3g}' for m in measured)} s against {target:.3g} s "
                     f"after {LATENCY_ROUNDS} walks; allow more time")
