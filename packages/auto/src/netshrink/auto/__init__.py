"""netshrink.auto: per-layer sensitivity, and compression chosen to meet a budget.

* ``analyze_sensitivity(model, example_input, evaluate)``: accuracy with one layer group at a
  time pruned to several ratios and one layer at a time quantized to several precisions, no
  fine-tuning (``sensitivity``), as JSON and a plot;
* ``prune_to_budget(model, example_input, sensitivity, BudgetPruneConfig(macs_target=0.5))``:
  per-group pruning amounts for a MACs or CPU latency target (best accuracy within it) or for
  an accuracy loss (``max_loss``: the smallest model within it), MACs counted and latency timed
  on the result (``budget``; latency lookup table: ``latency``);
* ``mixed_precision(model, sensitivity, budget_bytes)``: per-layer weight precisions for a
  packed-file size, chosen by an exact multiple-choice knapsack (``knapsack``), the size read
  from the written file (``mixed``); ``smallest_within_loss``: the smallest file within an
  accuracy loss, measured;
* stages ``auto.prune`` and ``auto.mixed`` (``stages``): both searches inside a recipe, their
  choices recorded for ``rebuild``.

Depends on netshrink-core, -prune and -quant (it combines them, as bench does); quant and prune
still never import each other.
"""

from netshrink.auto.budget import BudgetPruneConfig, BudgetReport, prune_to_budget
from netshrink.auto.groups import GroupPruner, LayerGroup
from netshrink.auto.knapsack import auto_granularity, solve_mckp
from netshrink.auto.latency import LatencyModel, time_forward
from netshrink.auto.mixed import (
    Allocation,
    MixedPrecisionReport,
    allocate_precisions,
    apply_precisions,
    mixed_precision,
    smallest_within_loss,
    weight_bytes,
)
from netshrink.auto.sensitivity import (
    SENSITIVITY_PRECISIONS,
    SensitivityConfig,
    SensitivityResult,
    analyze_sensitivity,
)
from netshrink.auto.stages import (
    AutoMixedConfig,
    AutoMixedStage,
    AutoPruneConfig,
    AutoPruneStage,
)

__all__ = [
    "SENSITIVITY_PRECISIONS", "Allocation", "AutoMixedConfig", "AutoMixedStage",
    "AutoPruneConfig", "AutoPruneStage", "BudgetPruneConfig", "BudgetReport", "GroupPruner",
    "LatencyModel", "LayerGroup", "MixedPrecisionReport", "SensitivityConfig",
    "SensitivityResult", "allocate_precisions", "analyze_sensitivity", "apply_precisions",
    "auto_granularity", "mixed_precision", "prune_to_budget", "smallest_within_loss",
    "solve_mckp", "time_forward", "weight_bytes",
]
