"""Leaves and pruners for the layers of third-party model zoos (timm), registered lazily.

netshrink.prune does not depend on timm. When timm is already imported (a timm model can only
exist then), the first trace or pruner look-up registers, once:

* as fx leaves, every module timm itself marks "do not trace" (``timm.layers._fx``: fused
  norm + activation, TF-"same" padding convs and pools whose forward branches on the input
  shape, MobileViT blocks, ...) and timm's "do not trace" functions; a leaf without a pruner
  keeps its channels, a subclass of a conv / BatchNorm uses the built-in pruner (which slices
  subclasses in place, ``slicing``);
* leaves for norms and weight-standardized convs that read their own tensors in a traced
  forward (``LayerNorm``, ``LayerNormAct``, ``StdConv2d``, ``ScaledStdConv2d``);
* a minimum fan-in of 2 for the weight-standardized convs (one weight has no standard
  deviation: ``pruners.register_min_fan_in``);
* per-channel pruners for channels-first norms and layer scales (``LayerNorm2d``,
  ``LayerNormAct2d``, ``LayerScale``, ``LayerScale2d``, ``FrozenBatchNormAct2d``) and for
  ConvNeXt-V2's ``GlobalResponseNorm`` (its statistics then cover the kept
  channels, as a LayerNorm's).

A name missing from the installed timm version is skipped.
"""

from __future__ import annotations

import importlib
import sys

from torch import nn

from netshrink.prune.pruners import (
    PRUNERS,
    register_leaf,
    register_leaf_function,
    register_min_fan_in,
    register_pruner,
)
from netshrink.prune.slicing import channel_count, slice_channels_

_LOADED: set[str] = set()

#: timm layers traced as leaves (their pruner, if any, comes through the MRO)
TIMM_LEAVES = ("LayerNorm", "LayerNormAct", "StdConv2d", "ScaledStdConv2d")
#: timm weight-standardized convs: a filter of one weight has no standard deviation
TIMM_STANDARDIZED = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")
#: timm "do not trace" modules traced into all the same: their forward is traceable and holds
#: the model's prunable convs (as a leaf, NFNets' whole blocks would keep their channels)
TIMM_TRACED = ("NormFreeBlock",)
#: timm per-channel layers: (name, channel_dim)
TIMM_PER_CHANNEL = (("LayerNorm2d", 1), ("LayerNormAct2d", 1), ("LayerScale", -1),
                    ("LayerScale2d", 1), ("FrozenBatchNormAct2d", 1))


def load() -> None:
    """Register what the imported libraries need (see the module docstring); idempotent."""
    if "timm" in sys.modules and "timm" not in _LOADED:
        _LOADED.add("timm")
        _load_timm()


def _one_dim(m: nn.Module) -> bool:
    shape = getattr(m, "normalized_shape", None)
    return shape is None or len(shape) == 1


def _load_timm() -> None:
    try:
        layers = importlib.import_module("timm.layers")
        fx = importlib.import_module("timm.layers._fx")
    except ImportError:  # a timm too old or too new for this table: nothing registered
        return
    for module_type in getattr(fx, "get_notrace_modules", list)():
        if module_type.__name__ not in TIMM_TRACED:
            register_leaf(module_type)
    for fn in getattr(fx, "get_notrace_functions", list)():
        if callable(fn):
            register_leaf_function(fn)
    for name in TIMM_LEAVES:
        found = getattr(layers, name, None)
        if isinstance(found, type) and issubclass(found, nn.Module):
            register_leaf(found)
    for name in TIMM_STANDARDIZED:
        found = getattr(layers, name, None)
        if isinstance(found, type) and issubclass(found, nn.Conv2d):
            register_min_fan_in(found, 2)
    for name, dim in TIMM_PER_CHANNEL:
        found = getattr(layers, name, None)
        if isinstance(found, type) and issubclass(found, nn.Module) and found not in PRUNERS:
            register_pruner(found, per_channel=True, channel_dim=dim, applies=_one_dim,
                            shape=lambda m: {"channels": channel_count(m)})(slice_channels_)
    try:  # ConvNeXt-V2's global response norm (channels-last instances only)
        grn = importlib.import_module("timm.layers.grn").GlobalResponseNorm
    except (ImportError, AttributeError):
        return
    if grn not in PRUNERS:  # its own channel_dim says where its channels are
        register_pruner(grn, per_channel=True, channel_dim=lambda m: m.channel_dim,
                        shape=lambda m: {"channels": channel_count(m)})(slice_channels_)
