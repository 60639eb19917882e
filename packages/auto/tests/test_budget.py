"""Budget-driven pruning: the MACs target holds on the pruned model (counted, not estimated),
the sensitive bottleneck is spared, and the accuracy-loss mode stays within its loss."""

from __future__ import annotations

import pytest
import torch
from auto_testing import accuracy, recalibrate

from netshrink.auto import (
    BudgetPruneConfig,
    SensitivityConfig,
    analyze_sensitivity,
    prune_to_budget,
)
from netshrink.core import count_macs

X = torch.zeros(1, 3, 8, 8)


@pytest.fixture
def sensitivity(bottleneck_model):
    return analyze_sensitivity(bottleneck_model, X, accuracy,
                               SensitivityConfig(prune_ratios=(0.25, 0.5, 0.75), precisions=()),
                               prepare=recalibrate)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_macs_target_is_met_on_the_result(bottleneck_model, sensitivity, target) -> None:
    base = count_macs(bottleneck_model, X)
    pruned, report = prune_to_budget(bottleneck_model, X, sensitivity,
                                     BudgetPruneConfig(macs_target=target))
    macs = count_macs(pruned, X)
    assert macs == report.macs <= target * base
    assert macs >= (target - 0.05) * base  # the last step is fitted to the target
    assert "3" not in report.amounts  # the 2-channel bottleneck keeps both channels
    assert pruned[3].out_channels == 2
    assert report.accuracy is None and report.evaluations == 0


def test_accuracy_mode_keeps_the_loss(bottleneck_model, sensitivity) -> None:
    base = count_macs(bottleneck_model, X)
    pruned, report = prune_to_budget(bottleneck_model, X, sensitivity,
                                     BudgetPruneConfig(max_loss=0.02), evaluate=accuracy,
                                     prepare=recalibrate)
    assert report.baseline - accuracy(pruned) <= 0.02
    assert report.accuracy == accuracy(pruned)
    assert count_macs(pruned, X) == report.macs < 0.9 * base
    assert 1 <= report.evaluations <= 6  # bisection over the walk, not one per step


def test_unreachable_target_and_bad_configs_are_named(bottleneck_model, sensitivity) -> None:
    with pytest.raises(ValueError, match="macs_target=0.01 cannot be reached"):
        prune_to_budget(bottleneck_model, X, sensitivity, BudgetPruneConfig(macs_target=0.01))
    with pytest.raises(ValueError, match="give exactly one of them"):
        BudgetPruneConfig()
    with pytest.raises(ValueError, match="give exactly one of them"):
        BudgetPruneConfig(macs_target=0.5, max_loss=0.01)
    with pytest.raises(ValueError, match="pass evaluate="):
        prune_to_budget(bottleneck_model, X, sensitivity, BudgetPruneConfig(max_loss=0.01))
