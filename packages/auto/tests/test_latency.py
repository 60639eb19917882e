"""Latency budgets: the per-layer lookup table is monotone even over noisy timings, and the
target holds on the result as re-measured (a deterministic timing function stands in for the
clock: no wall-clock value is asserted)."""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch
from auto_testing import accuracy, data, recalibrate
from torch import nn

import netshrink.auto.budget as budget
from netshrink.auto import (
    AutoPruneConfig,
    AutoPruneStage,
    BudgetPruneConfig,
    GroupPruner,
    LatencyModel,
    SensitivityConfig,
    analyze_sensitivity,
    prune_to_budget,
    time_forward,
)
from netshrink.auto.latency import LayerTable

X = torch.zeros(1, 3, 8, 8)


@torch.no_grad()
def fake_time(module: nn.Module, x: torch.Tensor) -> float:
    """Deterministic "seconds": per Conv2d / Linear call, a fixed cost plus sqrt(MACs), so a
    layer's time is concave in its channels (the table's interpolation then errs low and the
    result must be re-measured and the walk tightened)."""
    total = [0.0]

    def hook(m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        total[0] += 1e-6 * (5 + math.sqrt(out.numel() * m.weight[0].numel()))

    hooks = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        module.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


@pytest.fixture
def sensitivity(bottleneck_model):
    return analyze_sensitivity(bottleneck_model, X, accuracy,
                               SensitivityConfig(prune_ratios=(0.25, 0.5, 0.75), precisions=()),
                               prepare=recalibrate)


def _is_monotone(table: LayerTable, points: int = 12) -> bool:
    ins = [table.ins[0] + (table.ins[-1] - table.ins[0]) * i / points for i in range(points + 1)]
    outs = [table.outs[0] + (table.outs[-1] - table.outs[0]) * i / points
            for i in range(points + 1)]
    grid = [[table(a, b) for b in outs] for a in ins]
    return all(grid[i][j] <= grid[i + 1][j] + 1e-15 and grid[i][j] <= grid[i][j + 1] + 1e-15
               for i in range(points) for j in range(points))


def test_lookup_table_is_monotone_over_noisy_timings(bottleneck_model) -> None:
    rng = random.Random(0)

    def noisy(module: nn.Module, x: torch.Tensor) -> float:
        return fake_time(module, x) * rng.uniform(0.3, 1.7)  # a smaller layer may time slower

    model = LatencyModel(bottleneck_model, X, levels=5, time_fn=noisy)
    assert set(model.tables) == {"0", "3", "6", "11"}  # every conv and the linear
    assert all(_is_monotone(t) for t in model.tables.values())
    # a hand-made non-monotone grid (a larger layer timed faster) is corrected
    table = LayerTable([4, 8], [2, 6], [[1.0, 3.0], [2.0, 0.5]])
    assert table.grid == [[1.0, 3.0], [2.0, 3.0]]
    assert _is_monotone(table) and table(8, 6) == 3.0 and table(6, 2) == 1.5


def test_latency_target_holds_as_re_measured(bottleneck_model, sensitivity) -> None:
    lat = LatencyModel(bottleneck_model, X, levels=3, time_fn=fake_time)
    assert lat.base == fake_time(bottleneck_model, X)
    pruner = GroupPruner(bottleneck_model, X)
    assert lat.estimate(pruner, {}) == lat.base  # nothing pruned: the measured latency
    for target in (0.9, 0.75):
        pruned, report = prune_to_budget(bottleneck_model, X, sensitivity,
                                         BudgetPruneConfig(latency_target=target), latency=lat)
        measured = fake_time(pruned, X)  # timed again, on the returned model
        assert report.latency["seconds"] == measured <= target * lat.base
        assert report.latency_met and report.latency["target_seconds"] == target * lat.base
        assert "3" not in report.amounts  # the sensitive 2-channel bottleneck is spared
    assert report.latency["rounds"] >= 2  # the table erred low: the walk was tightened


def test_latency_in_seconds_and_unreachable_targets(bottleneck_model, sensitivity) -> None:
    lat = LatencyModel(bottleneck_model, X, levels=3, time_fn=fake_time)
    pruned, report = prune_to_budget(
        bottleneck_model, X, sensitivity,
        BudgetPruneConfig(latency_seconds=0.8 * lat.base), latency=lat)
    assert fake_time(pruned, X) == report.latency["seconds"] <= 0.8 * lat.base
    with pytest.raises(ValueError, match="latency_target=0.05 cannot be reached"):
        prune_to_budget(bottleneck_model, X, sensitivity,
                        BudgetPruneConfig(latency_target=0.05), latency=lat)


def test_budget_configs_are_validated() -> None:
    with pytest.raises(ValueError, match="give exactly one of them"):
        BudgetPruneConfig(macs_target=0.5, latency_target=0.5)
    with pytest.raises(ValueError, match="latency_target"):
        BudgetPruneConfig(latency_target=1.5)
    with pytest.raises(ValueError, match="latency_seconds"):
        BudgetPruneConfig(latency_seconds=0.0)


def test_real_timing_builds_a_monotone_table(bottleneck_model) -> None:
    seconds = time_forward(bottleneck_model, X, warmup=1, repeats=3)
    assert math.isfinite(seconds) and seconds > 0
    lat = LatencyModel(bottleneck_model, X, levels=2)
    assert lat.timings == 1 + sum(len(t.ins) * len(t.outs) for t in lat.tables.values())
    assert all(_is_monotone(t) for t in lat.tables.values())


def test_auto_prune_stage_meets_a_latency_target(bottleneck_model, monkeypatch) -> None:
    monkeypatch.setattr(budget, "LatencyModel",
                        functools.partial(LatencyModel, levels=3, time_fn=fake_time))
    x, y = data(256, seed=1)
    stage = AutoPruneStage(AutoPruneConfig(latency_target=0.8))
    stage.use_data([(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)])
    base = fake_time(bottleneck_model, x[:1])
    model = stage.apply(bottleneck_model)
    record = stage.describe()["config"]
    assert record["latency_target"] == 0.8
    assert fake_time(model, x[:1]) == record["latency"]["seconds"] <= 0.8 * base


@pytest.mark.parametrize("alone", [3.0, 1 / 3])
def test_layers_timed_alone_are_scaled_to_the_model(bottleneck_model, sensitivity,
                                                    alone) -> None:
    """Layers alone 3x slower than in the model (call overhead), or 3x faster (the model's
    remainder: BatchNorms, activations): the savings are scaled to the measured model, so the
    prediction stays positive and the target holds as measured."""
    def timing(module: nn.Module, x: torch.Tensor) -> float:
        return fake_time(module, x) * (alone if isinstance(module, (nn.Conv2d, nn.Linear))
                                       else 1)

    lat = LatencyModel(bottleneck_model, X, levels=3, time_fn=timing)
    assert lat.scale == pytest.approx(1 / alone)
    pruner = GroupPruner(bottleneck_model, X)
    assert 0 <= lat.estimate(pruner, dict.fromkeys(pruner.groups, 0.9)) < lat.base
    pruned, report = prune_to_budget(bottleneck_model, X, sensitivity,
                                     BudgetPruneConfig(latency_target=0.8), latency=lat)
    assert timing(pruned, X) == report.latency["seconds"] <= 0.8 * lat.base


def test_the_clock_is_the_threads_cpu_time_with_one_thread() -> None:
    import time

    from netshrink.auto.latency import clock

    assert clock() is time.thread_time  # the fixture runs torch on one thread
    torch.set_num_threads(2)
    assert clock() is time.perf_counter
