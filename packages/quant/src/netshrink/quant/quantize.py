"""``quantize_(model, config)``: swap a model's layers for quantized ones, in place.

What it does, in order:

1. Finds the quantizable layers: modules whose type is exactly ``nn.Conv2d`` (plain, grouped,
   depthwise), ``nn.ConvTranspose2d`` or ``nn.Linear``, in ``named_modules()`` order. Subclasses
   with their own forward (e.g. the Linear inside ``nn.MultiheadAttention``) are left alone.
2. The first and last of them follow ``config.first`` / ``config.last`` (float, 8-bit, or as the
   rest); every other layer gets ``config.w`` weights and ``config.a`` inputs. A layer that
   would be float in both is left untouched.
3. For binary or ternary activations, every ``nn.ReLU`` / ``nn.ReLU6`` module whose output
   goes into a binary / ternary activation quantizer becomes ``nn.Identity``: a ReLU before
   ``sign`` makes the sign constant (+1), and before a ternary quantizer it removes the -1
   level. The quantizer's own clip and estimator take the ReLU's place. Which ReLUs those are
   is read from the ``torch.fx`` graph of the float model, following the output through ops
   that keep the sign of every value (pooling, reshapes, channel shuffles, dropout, concat).
   A ReLU whose output reaches no sign-like input (it feeds a float or k-bit layer, a
   BatchNorm or other arithmetic first, or the model's output) stays. One that feeds a sign
   and something else (a residual branch) goes too, since a constant sign is never useful;
   so does a ReLU module called several times when one call feeds a sign. A model fx cannot
   trace falls back to module order: a ReLU is removed when the next quantizable layer after
   it has a sign-like input. (Hardtanh, LeakyReLU and other sign-preserving activations always
   stay.)
4. Sets every BatchNorm's momentum to ``config.bn_momentum`` when given, and centres and clips
   binary latent weights (from then on each binary layer does that itself whenever its weight
   changed, see ``_QuantLayer.constrain_latent``).
5. With ``scheme="int8_affine"`` (a scheme whose handler sets ``fold_bn``), each quantized
   Conv2d whose output feeds only a BatchNorm2d becomes a ``QuantConvBn2d`` owning that
   BatchNorm (which is replaced by ``nn.Identity``), so the BN-folded weight is what gets
   quantized during training.
6. With ``scheme="int8_affine"``, every add of two tensors inside a submodule (a ResNet
   block's residual add and the ReLU after it) becomes a ``QuantAdd`` on uint8 grids
   (``netshrink.quant.quant_add``), so integer runtimes run the whole block on integer kernels.

Each layer's quantizers come from the handler registered for ``config.scheme``
(``QUANT_SCHEMES``, one look-up); ``register_scheme`` adds a scheme (docs/extending.md).

The returned model is ``model`` itself. ``QuantizeStage`` (``"quant.quantize"``) wraps this for
recipes; its ``after_epoch`` hook applies the int8 late-training freezes (``freeze_bn_after``,
``freeze_observers_after``; 0 is applied by ``quantize_`` itself). Binary latent weights need no
hook: each quantized layer centres and clips its own latent weight after every in-place change
(an optimizer step), before it next uses, saves or packs it, so a plain training loop trains
exactly what the old explicit ``constrain_latent_weights(model)`` after every step trained. In
your own loop, call ``freeze_bn_stats_(model)`` / ``freeze_observers_(model)`` when you want the
freezes (or drive the stages with ``netshrink.core.Controller``).
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import fx, nn

from netshrink.core import Stage, deprecated_alias, register_stage
from netshrink.quant.config import PRECISIONS, Precision, QuantConfig
from netshrink.quant.conv_bn import QuantConvBn2d, find_conv_bn_pairs
from netshrink.quant.freeze import freeze_bn_stats_, freeze_observers_
from netshrink.quant.layers import QUANT_LAYER_FOR, QUANT_LAYERS
from netshrink.quant.observers import PercentileObserver
from netshrink.quant.quant_add import QUANT_ADD_SCHEMES, quantize_adds_
from netshrink.quant.quantizers import (
    QUANT_SCHEMES,
    ActQuantizer,
    AffineWeight,
    TernaryWeight,
    WeightQuantizer,
    act_quantizer,
    weight_quantizer,
)

_SIGN_LIKE = ("binary", "ternary")
_CLAMPING_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
#: Modules and functions that keep the sign of every value they pass on (each output is one of
#: the input values, a mean of input values, or zero padding): a ReLU's non-negative output
#: stays non-negative through them, so a sign after them is still constant.
_SIGN_KEEPING_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.ZeroPad2d, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ChannelShuffle, nn.Upsample,
)
_SIGN_KEEPING_FUNCTIONS = (
    torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.cat, torch.concat,
    torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.dropout,
    torch.nn.functional.pixel_shuffle, torch.channel_shuffle, operator.getitem,
)
_SIGN_KEEPING_METHODS = ("view", "reshape", "flatten", "unflatten", "transpose", "permute",
                         "contiguous", "squeeze", "unsqueeze", "__getitem__", "chunk", "split")
_log = logging.getLogger(__name__)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer ``quantize_`` would replace, in module order."""
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


def quantize_(model: nn.Module, config: QuantConfig,
             precisions: Mapping[str, tuple[Precision, Precision]] | None = None) -> nn.Module:
    """Replace ``model``'s Conv2d / ConvTranspose2d / Linear layers by quantized versions that
    keep the trained weights (see the module docstring); returns ``model``, changed in place.

    ``precisions``: optional per-layer overrides, layer name -> ``(w, a)`` (names as
    ``quantizable_layers`` gives them); a listed layer gets these precisions instead of
    ``config.w`` / ``config.a`` and the first / last policies ((32, 32) leaves it float).
    Mixed-precision models are built this way; the packed file then stores each layer at its
    own width. An unknown layer name or precision raises a ValueError.
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f"quantize needs a QuantConfig, got {type(config).__name__}")
    layers = float_layers(model)
    overrides = _check_precisions(precisions, [name for name, _ in layers])
    plan = [(name, m, *overrides.get(name, _layer_precisions(i, len(layers), config)))
            for i, (name, m) in enumerate(layers)]
    plan = [(name, m, w, a) for name, m, w, a in plan if (w, a) != (32, 32)]
    if not plan and not config.is_float:
        raise ValueError(f"{type(model).__name__} has {len(layers)} quantizable layer(s) and "
                         f"all are first/last layers kept float (first={config.first!r}, "
                         f"last={config.last!r}); use '8bit' or 'same' to quantize them")
    scheme = QUANT_SCHEMES.get(config.scheme)  # the one look-up: the scheme's handler
    bn_after = find_conv_bn_pairs(model) if scheme.fold_bn else {}
    sign_inputs = [name for name, _, _, a in plan if a in _SIGN_LIKE]
    relus_to_remove = _relus_feeding_sign(model, sign_inputs) if sign_inputs else []
    for name, layer, w, a in plan:
        wq = weight_quantizer(w, config, shape=_out_major_shape(layer))
        layer_config = config
        if name in dict(config.a_clips):
            layer_config = dataclasses.replace(config, a_clip=config.clip_for(name))
        aq = act_quantizer(a, layer_config)
        if name in bn_after and isinstance(wq, AffineWeight):
            bn_name = bn_after[name]
            new = QuantConvBn2d.from_conv_bn(layer, model.get_submodule(bn_name), wq, aq)
            set_submodule(model, bn_name, nn.Identity())
            set_submodule(model, name, new)
        else:
            new = replace_layer(model, name, layer, wq, aq)
        if isinstance(wq, TernaryWeight):
            wq.init_state(new._out_major(new.weight))
    for name in relus_to_remove:
        set_submodule(model, name, nn.Identity())
    if config.scheme in QUANT_ADD_SCHEMES:  # residual adds on uint8 grids (quant_add.py)
        quantize_adds_(model, estimator=config.a_estimator)
    if config.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = config.bn_momentum
    constrain_latent_weights_(model, force=True)
    _apply_freezes(model, config, epochs_done=0)
    return model


def _check_precisions(precisions: Mapping[str, tuple[Precision, Precision]] | None,
                      names: list[str]) -> dict[str, tuple[Precision, Precision]]:
    """``quantize_``'s per-layer overrides, validated: known layer names, (w, a) pairs of
    ``PRECISIONS``."""
    if precisions is None:
        return {}
    if not isinstance(precisions, Mapping):
        raise ValueError(f"precisions={precisions!r} must map layer names to (w, a) pairs")
    known = set(names)
    out: dict[str, tuple[Precision, Precision]] = {}
    for name, pair in precisions.items():
        if name not in known:
            shown = ", ".join(repr(n) for n in names[:12]) + (" ..." if len(names) > 12 else "")
            raise ValueError(f"precisions names layer {name!r}, which is not a quantizable "
                             f"layer of the model; allowed: {shown}")
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"precisions[{name!r}]={pair!r} must be a (w, a) pair")
        for what, value in zip(("w", "a"), pair, strict=True):
            if isinstance(value, bool) or value not in PRECISIONS:
                raise ValueError(f"precisions[{name!r}]: {what}={value!r} is not a precision; "
                                 f"allowed: {', '.join(map(repr, PRECISIONS))}")
        out[name] = (pair[0], pair[1])
    return out


def _relus_feeding_sign(model: nn.Module, sign_inputs: list[str]) -> list[str]:
    """Names of the ReLU / ReLU6 modules whose output reaches one of the layers
    ``sign_inputs`` (whose inputs become binary / ternary) through sign-keeping ops; from the
    fx graph, or by module order when fx cannot trace ``model``."""
    relus = [name for name, m in model.named_modules() if type(m) in _CLAMPING_ACTIVATIONS]
    if not relus:
        return []
    try:
        graph = fx.Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure: use module order
        _log.info("quantize: %s cannot be traced by torch.fx (%s); ReLUs feeding a sign are "
                  "found by module order", type(model).__name__, err)
        return _relus_by_module_order(model, set(sign_inputs))
    sign_set = set(sign_inputs)
    modules = dict(model.named_modules())
    found: list[str] = []  # a module called several times goes if one call feeds a sign
    for node in graph.nodes:
        if (node.op == "call_module" and node.target not in found
                and type(modules.get(node.target)) in _CLAMPING_ACTIVATIONS
                and _feeds_sign(node.users, sign_set, modules)):
            found.append(node.target)
    return found


def _feeds_sign(users: Iterable[fx.Node], sign_set: set[str],
                modules: dict[str, nn.Module]) -> bool:
    """True when some path from these users reaches a layer of ``sign_set`` through
    sign-keeping ops only (so that layer's sign would see only non-negative values)."""
    for user in users:
        if user.op == "call_module" and user.target in sign_set:
            return True
        keeps_sign = (
            (user.op == "call_module"
             and isinstance(modules.get(user.target), _SIGN_KEEPING_MODULES))
            or (user.op == "call_function" and user.target in _SIGN_KEEPING_FUNCTIONS)
            or (user.op == "call_method" and user.target in _SIGN_KEEPING_METHODS))
        if keeps_sign and _feeds_sign(user.users, sign_set, modules):
            return True
    return False


def _relus_by_module_order(model: nn.Module, sign_set: set[str]) -> list[str]:
    """The ReLUs whose next quantizable layer in module order has a sign-like input."""
    found, pending = [], []
    for name, m in model.named_modules():
        if type(m) in _CLAMPING_ACTIVATIONS:
            pending.append(name)
        elif type(m) in QUANT_LAYER_FOR:
            if name in sign_set:
                found.extend(pending)
            pending = []
    return found


def _apply_freezes(model: nn.Module, config: QuantConfig, epochs_done: int) -> None:
    """The config's late-training freezes that are due after ``epochs_done`` epochs of QAT."""
    if config.freeze_bn_after is not None and epochs_done >= config.freeze_bn_after:
        freeze_bn_stats_(model)
    if config.freeze_observers_after is not None and epochs_done >= config.freeze_observers_after:
        freeze_observers_(model)


def _out_major_shape(layer: nn.Module) -> tuple[int, int]:
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return out, layer.weight.numel() // out


def constrain_latent_weights_(model: nn.Module, *, force: bool = False) -> int:
    """Bring every constrained latent weight up to date now, in place; returns how many layers
    changed. No longer needed in a training loop: each quantized layer does it itself
    (``constrain_latent``) whenever its weight changed in place, before using, saving or
    packing it, and calling it too changes nothing (it is idempotent).

    Binary weights are centred as their quantizer's ``centring`` says (``"filter"``: each
    output channel's mean over its whole filter; ``"kernel_position"``: for each output channel
    and kernel position, the mean over the input channels, as XNOR-Net's code and micronet do;
    ``"none"``) and clipped to ``[-1, 1]``. Other layers are untouched. ``force=True`` applies
    the constraint even to weights that did not change since the last time (after writes
    through ``weight.data``, which no version counter sees)."""
    return sum(layer.constrain_latent(force=force) for _, layer in quantized_layers(model))


@torch.no_grad()
def calibrate_act_clips_(model: nn.Module, inputs: Iterable[torch.Tensor],
                        percentile: float) -> dict[str, float]:
    """Set the clip of every quantized layer's calibratable k-bit activation quantizer
    (DoReFa's fixed clip, PACT's initial ``alpha``, LSQ's initial step ``clip / Qp``: those
    with a ``set_clip`` method) to the ``percentile``-th percentile of the layer's input over
    ``inputs`` (a ``PercentileObserver``'s mean over batches of each batch's percentile, over
    all input values, the zeros a ReLU makes included). Returns ``{layer name: clip}``.

    The inputs are observed with every activation quantizer switched off (each clip is measured
    on the activations the layers produce, not on already clipped ones), with the weight
    quantizers on, and with the BatchNorms normalising by each batch's statistics as in
    training (quantized weights have another scale than the float ones, so the running
    statistics of the float model would not fit them) while their running statistics, like
    every other buffer, are left as they were; every other module is in eval mode. A layer
    whose percentile is not positive (its input is never positive there) keeps its clip."""
    targets = {name: layer for name, layer in quantized_layers(model)
               if hasattr(layer.input_quant, "set_clip")}
    if not targets:
        return {}
    observers = {name: PercentileObserver(percentile) for name in targets}
    saved = {name: layer.input_quant for name, layer in quantized_layers(model)}
    hooks = [layer.register_forward_pre_hook(
        lambda _m, args, obs=observers[name]: obs.update(args[0].detach()))
        for name, layer in targets.items()]
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        for layer in saved:
            model.get_submodule(layer).input_quant = None
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for x in inputs:
            model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        for name, quantizer in saved.items():
            model.get_submodule(name).input_quant = quantizer
        for m, training in modes.items():
            m.training = training
        for b, value in buffers:
            b.copy_(value)
    clips = {}
    for name, layer in targets.items():
        obs = observers[name]
        clip = float(obs.max_val) if obs.has_range else 0.0
        if clip > 0.0:
            layer.input_quant.set_clip(clip)
        clips[name] = float(layer.input_quant.clip)
    return clips


@register_stage("quant.quantize")
class QuantizeStage(Stage):
    """Quantization-aware training as a recipe stage: ``apply`` calls ``quantize_`` (then, with
    ``a_calibrate`` set and batches given by ``use_data``, ``calibrate_act_clips_``, recording
    the clips in the config's ``a_clips``); ``rebuild`` recreates the same structure on a fresh
    model (then the checkpoint's weights load); ``after_epoch`` applies the config's
    ``freeze_bn_after`` / ``freeze_observers_after``. No ``after_step``: binary layers centre
    and clip their latent weights themselves."""

    config_class = QuantConfig

    def __init__(self, config: QuantConfig) -> None:
        super().__init__(config)
        self._batches: list | None = None

    def use_data(self, batches: list) -> None:
        """``(inputs, labels)`` batches (or input tensors) to calibrate activation clips on."""
        self._batches = list(batches)

    def apply(self, model: nn.Module) -> nn.Module:
        model = quantize_(model, self.config)
        if self.config.a_calibrate is not None and self._batches and not self.config.a_clips:
            inputs = [b[0] if isinstance(b, (tuple, list)) else b for b in self._batches]
            clips = calibrate_act_clips_(model, inputs, self.config.a_calibrate)
            if clips:
                self.config = dataclasses.replace(self.config, a_clips=clips)
        return model

    def after_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """After epoch ``epoch`` (0-based, so ``epoch + 1`` epochs of QAT are done): freeze BN
        statistics / observers once their epoch count is reached (idempotent)."""
        _apply_freezes(model, self.config, epochs_done=epoch + 1)


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
quantize = deprecated_alias(quantize_, "quantize")
constrain_latent_weights = deprecated_alias(constrain_latent_weights_, "constrain_latent_weights")
calibrate_act_clips = deprecated_alias(calibrate_act_clips_, "calibrate_act_clips")
