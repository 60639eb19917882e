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
* a traceable stand-in forward for VGG's ``ConvMlp`` head (``register_traced_forward``): its
  forward pools an input smaller than its 7 x 7 kernel up to it, a branch on the spatial size
  fx cannot trace, so as a "do not trace" leaf it held its two 4096-channel convs; the stand-in
  always pools to ``max(kernel, size)`` (the identity when the input is large enough), so
  ``fc1``'s outputs prune with ``fc2``'s inputs, its inputs with the features and its outputs
  with the classifier;
* per-channel pruners for channels-first norms and layer scales (``LayerNorm2d``,
  ``LayerNormAct2d``, ``LayerScale``, ``LayerScale2d``, ``FrozenBatchNormAct2d``) and for
  ConvNeXt-V2's ``GlobalResponseNorm`` (its statistics then cover the kept
  channels, as a LayerNorm's).

A name missing from the installed timm version is skipped.
"""

from __future__ import annotations

import importlib
import sys

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from netshrink.prune.pruners import (
    PRUNERS,
    register_leaf,
    register_leaf_function,
    register_min_fan_in,
    register_pruner,
    register_traced_forward,
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


def _pooled_size(height: int, width: int, kernel: int) -> tuple[int, int]:
    """The size VGG's ``ConvMlp`` pools its input to: at least its kernel on each side."""
    return max(kernel, height), max(kernel, width)


torch.fx.wrap("_pooled_size")  # one graph node: the sizes are read when the graph runs


def vgg_conv_mlp_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm VGG ``ConvMlp.forward`` without its branch on the input size: pooling to the
    input's own size is the identity, so this computes the same for every input."""
    size = _pooled_size(x.shape[-2], x.shape[-1], m.input_kernel_size)
    x = F.adaptive_avg_pool2d(x, size)
    return m.act2(m.fc2(m.drop(m.act1(m.fc1(x)))))


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
    try:  # VGG's head: traced through a stand-in (see the module docstring)
        vgg_mlp = importlib.import_module("timm.models.vgg").ConvMlp
    except (ImportError, AttributeError):
        vgg_mlp = None
    if isinstance(vgg_mlp, type) and issubclass(vgg_mlp, nn.Module):
        register_traced_forward(vgg_mlp, vgg_conv_mlp_forward)
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
