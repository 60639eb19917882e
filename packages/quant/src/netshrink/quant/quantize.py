"""``quantize(model, config)``: swap a model's layers for quantized ones, in place.

What it does, in order:

1. Finds the quantizable layers: modules whose type is exactly ``nn.Conv2d`` (plain, grouped,
   depthwise), ``nn.ConvTranspose2d`` or ``nn.Linear``, in ``named_modules()`` order. Subclasses
   with their own forward (e.g. the Linear inside ``nn.MultiheadAttention``) are left alone.
2. The first and last of them follow ``config.first`` / ``config.last`` (float, 8-bit, or as the
   rest); every other layer gets ``config.w`` weights and ``config.a`` inputs. A layer that
   would be float in both is left untouched.
3. For binary or ternary activations, every ``nn.ReLU`` / ``nn.ReLU6`` module becomes
   ``nn.Identity``: a ReLU before ``sign`` makes the sign constant (+1), and before a ternary
   quantizer it removes the -1 level. The quantizer's own clip and estimator take the ReLU's
   place. (Hardtanh, LeakyReLU and other sign-preserving activations stay.)
4. Sets every BatchNorm's momentum to ``config.bn_momentum`` when given, and centres and clips
   binary latent weights (``constrain_latent_weights``).
5. With ``scheme="int8_affine"`` (a scheme whose handler sets ``fold_bn``), each quantized
   Conv2d whose output feeds only a BatchNorm2d becomes a ``QuantConvBn2d`` owning that
   BatchNorm (which is replaced by ``nn.Identity``), so the BN-folded weight is what gets
   quantized during training.

Each layer's quantizers come from the handler registered for ``config.scheme``
(``QUANT_SCHEMES``, one look-up); ``register_scheme`` adds a scheme (docs/extending.md).

The returned model is ``model`` itself. ``QuantizeStage`` (``"quant.quantize"``) wraps this for
recipes; its ``after_step`` hook re-applies ``constrain_latent_weights`` after every optimizer
step and its ``after_epoch`` hook applies the int8 late-training freezes (``freeze_bn_after``,
``freeze_observers_after``; 0 is applied by ``quantize`` itself). In your own training loop,
call ``constrain_latent_weights(model)`` after ``optimizer.step()`` when weights are binary,
and ``freeze_bn_stats(model)`` / ``freeze_observers(model)`` when you want the freezes.
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.core import Stage, register_stage
from netshrink.quant.config import Precision, QuantConfig
from netshrink.quant.conv_bn import QuantConvBn2d, find_conv_bn_pairs
from netshrink.quant.freeze import freeze_bn_stats, freeze_observers
from netshrink.quant.layers import QUANT_LAYER_FOR, QUANT_LAYERS
from netshrink.quant.quantizers import (
    QUANT_SCHEMES,
    ActQuantizer,
    AffineWeight,
    BinaryWeight,
    TernaryWeight,
    WeightQuantizer,
    act_quantizer,
    weight_quantizer,
)

_SIGN_LIKE = ("binary", "ternary")
_CLAMPING_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer ``quantize`` would replace, in module order."""
    return [(name, m) for name, m in model.named_modules() if type(m) in QUANT_LAYER_FOR]


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every quantized layer in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


def float_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers to quantize; a clear error for an already quantized model or one with none."""
    if quantized_layers(model):
        raise ValueError(f"{type(model).__name__} is already quantized (it contains "
                         f"{quantized_layers(model)[0][0]!r}); quantize a float model")
    layers = quantizable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable layers: quantize replaces "
                         "nn.Conv2d, nn.ConvTranspose2d and nn.Linear modules, and the model "
                         "has none")
    return layers


def replace_layer(model: nn.Module, name: str, layer: nn.Module,
                  weight_quant: WeightQuantizer | None,
                  input_quant: ActQuantizer | None) -> nn.Module:
    """Swap the float ``layer`` at ``name`` for its quantized version (same Parameters)."""
    new = QUANT_LAYER_FOR[type(layer)].from_float(layer, weight_quant, input_quant)
    set_submodule(model, name, new)
    return new


def _layer_precisions(index: int, count: int,
                      config: QuantConfig) -> tuple[Precision, Precision]:
    """(weight, input) precision of the ``index``-th of ``count`` quantizable layers."""
    is_first, is_last = index == 0, index == count - 1
    policies = [p for p, hit in ((config.first, is_first), (config.last, is_last)) if hit]
    if "float" in policies:
        return 32, 32
    if "8bit" in policies:
        # The first layer's input is the data itself: it stays as the caller provides it.
        return 8, (32 if is_first else 8)
    return config.w, config.a


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Replace ``model``'s Conv2d / ConvTranspose2d / Linear layers by quantized versions that
    keep the trained weights (see the module docstring); returns ``model``, changed in place.
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f"quantize needs a QuantConfig, got {type(config).__name__}")
    layers = float_layers(model)
    plan = [(name, m, *_layer_precisions(i, len(layers), config))
            for i, (name, m) in enumerate(layers)]
    plan = [(name, m, w, a) for name, m, w, a in plan if (w, a) != (32, 32)]
    if not plan and not config.is_float:
        raise ValueError(f"{type(model).__name__} has {len(layers)} quantizable layer(s) and "
                         f"all are first/last layers kept float (first={config.first!r}, "
                         f"last={config.last!r}); use '8bit' or 'same' to quantize them")
    scheme = QUANT_SCHEMES.get(config.scheme)  # the one look-up: the scheme's handler
    bn_after = find_conv_bn_pairs(model) if scheme.fold_bn else {}
    sign_like_inputs = False
    for name, layer, w, a in plan:
        wq = weight_quantizer(w, config, shape=_out_major_shape(layer))
        aq = act_quantizer(a, config)
        if name in bn_after and isinstance(wq, AffineWeight):
            bn_name = bn_after[name]
            new = QuantConvBn2d.from_conv_bn(layer, model.get_submodule(bn_name), wq, aq)
            set_submodule(model, bn_name, nn.Identity())
            set_submodule(model, name, new)
        else:
            new = replace_layer(model, name, layer, wq, aq)
        if isinstance(wq, TernaryWeight):
            wq.init_state(new._out_major(new.weight))
        sign_like_inputs |= a in _SIGN_LIKE
    if sign_like_inputs:
        for name, m in list(model.named_modules()):
            if type(m) in _CLAMPING_ACTIVATIONS:
                set_submodule(model, name, nn.Identity())
    if config.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = config.bn_momentum
    constrain_latent_weights(model)
    _apply_freezes(model, config, epochs_done=0)
    return model


def _apply_freezes(model: nn.Module, config: QuantConfig, epochs_done: int) -> None:
    """The config's late-training freezes that are due after ``epochs_done`` epochs of QAT."""
    if config.freeze_bn_after is not None and epochs_done >= config.freeze_bn_after:
        freeze_bn_stats(model)
    if config.freeze_observers_after is not None and epochs_done >= config.freeze_observers_after:
        freeze_observers(model)


def _out_major_shape(layer: nn.Module) -> tuple[int, int]:
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return out, layer.weight.numel() // out


@torch.no_grad()
def constrain_latent_weights(model: nn.Module) -> None:
    """Centre each output channel of every binary latent weight (subtract its mean) and clip
    it to ``[-1, 1]``, in place (BNN / XNOR-Net practice). Other layers are untouched."""
    for _, layer in quantized_layers(model):
        if isinstance(layer.weight_quant, BinaryWeight) and layer.weight is not None:
            w2d = layer._out_major(layer.weight)
            if w2d.data_ptr() == layer.weight.data_ptr() and w2d.is_contiguous():
                w2d.sub_(w2d.mean(1, keepdim=True)).clamp_(-1.0, 1.0)  # a view: in place
                continue
            w2d = (w2d - w2d.mean(1, keepdim=True)).clamp_(-1.0, 1.0)
            layer.weight.copy_(layer._from_out_major(w2d))


@register_stage("quant.quantize")
class QuantizeStage(Stage):
    """Quantization-aware training as a recipe stage: ``apply`` calls ``quantize``; ``rebuild``
    recreates the same structure on a fresh model (then the checkpoint's weights load);
    ``after_step`` keeps binary latent weights centred and clipped; ``after_epoch`` applies
    the config's ``freeze_bn_after`` / ``freeze_observers_after``."""

    config_class = QuantConfig

    def apply(self, model: nn.Module) -> nn.Module:
        return quantize(model, self.config)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        constrain_latent_weights(model)

    def after_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """After epoch ``epoch`` (0-based, so ``epoch + 1`` epochs of QAT are done): freeze BN
        statistics / observers once their epoch count is reached (idempotent)."""
        _apply_freezes(model, self.config, epochs_done=epoch + 1)
