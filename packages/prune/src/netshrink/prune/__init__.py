"""netshrink.prune: structured channel pruning on any fx-traceable model, and sparsity.

* ``prune_channels(model, example_input, ChannelPruneConfig(...), data=None)``: a physically
  smaller model (``channel_prune``), with the channel dependencies read from the fx graph
  (``graph``: residual adds, concat, chunk, depthwise and grouped convs, channel shuffles,
  SE multiplies, flatten into a linear head) and the channels cut by ``surgery``;
* criteria (``criteria``, ``list_criteria()``): bn_gamma, l1, l2, fpgm, taylor, apoz,
  mean_activation, random;
* stages: ``prune.slimming`` (L1 on BatchNorm scales), ``prune.channels`` (hard or soft filter
  pruning, rebuildable from checkpoints), ``prune.magnitude`` (unstructured, one shot or AGP);
* ``magnitude_prune_(model, amount)``: masks that stay applied and count as sparse storage.
"""

# ``x as x`` imports: the former names of the functions that modify their model (now ending in
# '_'), importable with a DeprecationWarning on each call; not in __all__
# (docs/api-conventions.md).
from netshrink.prune.channel_prune import (
    MODES,
    SCOPES,
    ChannelPruneConfig,
    ChannelPruneStage,
    ChannelPruneStageConfig,
    PruningBlockedError,
    PruningBlockedWarning,
    blocking_modules,
    ignored_classes,
    plan_channels,
    prune_channels,
    zero_filters_,
)
from netshrink.prune.channel_prune import zero_filters as zero_filters
from netshrink.prune.criteria import (
    CRITERIA,
    CriterionContext,
    NonFiniteScoreError,
    apoz_scores,
    bn_gamma_scores,
    fpgm_scores,
    l1_scores,
    l2_scores,
    list_criteria,
    mean_activation_scores,
    random_scores,
    register_criterion,
    score_classes,
    taylor_scores,
    unregister_criterion,
)
from netshrink.prune.graph import DependencyGraph, PruningGroup
from netshrink.prune.magnitude import (
    MagnitudePruneConfig,
    MagnitudePruneStage,
    SparsePack,
    agp_sparsity,
    apply_masks_,
    magnitude_prune_,
    pack_sparse,
    unpack_sparse,
    weight_sparsity,
)
from netshrink.prune.magnitude import apply_masks as apply_masks
from netshrink.prune.magnitude import magnitude_prune as magnitude_prune
from netshrink.prune.planning import ChannelPlan, ModulePlan
from netshrink.prune.pruners import (
    LEAF_FUNCTIONS,
    LEAVES,
    MIN_FAN_IN,
    PRUNERS,
    TRACED_FORWARDS,
    LayerPruner,
    find_pruner,
    list_pruners,
    register_leaf,
    register_leaf_function,
    register_min_fan_in,
    register_pruner,
    register_traced_forward,
    registered_pruner,
    unregister_pruner,
)
from netshrink.prune.slicing import slice_channels as slice_channels
from netshrink.prune.slicing import slice_channels_
from netshrink.prune.slimming import SlimmingConfig, SlimmingStage, slimming_penalty
from netshrink.prune.surgery import apply_plan as apply_plan
from netshrink.prune.surgery import (
    apply_plan_,
    apply_structure_,
    channel_structure,
    tensor_structure,
)
from netshrink.prune.surgery import apply_structure as apply_structure
from netshrink.prune.tracing import UntraceableModelError, trace

__all__ = [
    "CRITERIA", "ChannelPlan", "ChannelPruneConfig", "ChannelPruneStage",
    "ChannelPruneStageConfig", "CriterionContext", "DependencyGraph", "LEAF_FUNCTIONS", "LEAVES",
    "MIN_FAN_IN", "TRACED_FORWARDS",
    "LayerPruner", "MODES", "MagnitudePruneConfig", "MagnitudePruneStage", "ModulePlan",
    "NonFiniteScoreError", "PRUNERS", "PruningBlockedError", "PruningBlockedWarning",
    "PruningGroup", "SCOPES", "SlimmingConfig", "SlimmingStage", "SparsePack",
    "UntraceableModelError", "agp_sparsity", "apoz_scores", "apply_masks_", "apply_plan_",
    "apply_structure_", "blocking_modules", "bn_gamma_scores", "channel_structure", "find_pruner",
    "fpgm_scores", "ignored_classes", "l1_scores", "l2_scores", "list_criteria", "list_pruners",
    "magnitude_prune_", "mean_activation_scores", "pack_sparse", "plan_channels", "prune_channels",
    "random_scores", "register_criterion", "register_leaf", "register_leaf_function",
    "register_min_fan_in", "register_pruner", "register_traced_forward", "registered_pruner",
    "score_classes",
    "slice_channels_", "slimming_penalty",
    "taylor_scores", "tensor_structure", "trace", "unpack_sparse", "unregister_criterion",
    "unregister_pruner",
    "weight_sparsity", "zero_filters_",
]
