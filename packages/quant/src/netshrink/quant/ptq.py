"""Post-training quantization of a trained float model: no training, a few batches at most.

* ``calibrate_(model, batches, observer=...)``: affine integer weights (per channel or per
  tensor, symmetric or asymmetric) and activations whose ranges an observer (``minmax``,
  ``moving_average``, ``percentile``) measures on ``batches``; the ranges are then frozen.
  On a model that is already quantized with affine activations (``scheme="int8_affine"`` QAT,
  an earlier ``calibrate_``, or such a model loaded from a packed file) it only re-measures the
  activation ranges, weights untouched (e.g. after the data changed).
* ``quantize_weights_uint8_(model)``: weight-only, asymmetric min-max uint8 (activations stay
  float); every layer, first and last included.
* ``convert_fp16_(model)``: weight-only float16.

All change ``model`` in place, return it in eval mode, and pack with ``save_packed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netshrink.core import check_choice, deprecated_alias
from netshrink.quant.observers import OBSERVERS, make_observer
from netshrink.quant.quantize import (
    float_layers,
    freeze_observers_,
    quantized_layers,
    replace_layer,
)
from netshrink.quant.quantizers import AffineAct, AffineWeight, HalfWeight

#: calibrate's weight arguments and their defaults (a quantized model's weights stay as they are)
_WEIGHT_ARGS = {"per_channel": True, "symmetric": False, "bits": 8, "first": "same",
                "last": "same"}


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Iterable[Any], *, observer: str | None = None,
              per_channel: bool = True, symmetric: bool = False, bits: int = 8,
              first: str = "same", last: str = "same",
              **observer_options: float) -> nn.Module:
    """Post-training affine quantization of a float model, or new activation ranges for a
    model already quantized with affine activations.

    Float model: every quantizable layer (first/last per ``first`` / ``last``: ``"same"``
    quantizes them, ``"float"`` keeps them float) gets ``bits``-bit weights from their min-max
    (per output channel if ``per_channel``) and ``bits``-bit input activations whose per-tensor
    range ``observer`` (default ``"minmax"``) measures while ``batches`` (tensors, or tuples
    whose first item is the input) run through the model in eval mode. ``symmetric`` applies
    to weights and activations (False: asymmetric with a zero point). ``observer_options``:
    ``momentum`` for ``moving_average``, ``percentile`` for ``percentile``.

    Quantized model (int8 affine QAT, or calibrated before): the weights, BatchNorms and
    everything else stay as they are; each affine activation quantizer gets a fresh observer
    (of ``observer``'s kind with ``observer_options`` when given, else a reset copy of its own)
    that measures ``batches`` in eval mode. The weight arguments must stay at their defaults.
    Quantized inputs of any other kind (DoReFa, PACT, LSQ, binary, ternary, fp16) have no
    range to measure: a ValueError. If the batches are empty or the first forward fails, the
    old observers are put back.

    Either way the ranges are frozen afterwards (``AffineAct.unfreeze()`` lets QAT move them
    again) and the model is returned in eval mode.
    """
    if observer is not None:
        OBSERVERS.get(observer)  # ValueError naming the observer and the known ones
    if quantized_layers(model):
        return _recalibrate(model, batches, observer, observer_options,
                            {"per_channel": per_channel, "symmetric": symmetric, "bits": bits,
                             "first": first, "last": last})
    observer = observer or "minmax"
    check_choice("per_channel", per_channel, (True, False))
    check_choice("symmetric", symmetric, (True, False))
    check_choice("first", first, ("same", "float"))
    check_choice("last", last, ("same", "float"))
    layers = float_layers(model)
    quantized = []
    for i, (name, layer) in enumerate(layers):
        if (i == 0 and first == "float") or (i == len(layers) - 1 and last == "float"):
            continue
        wq = AffineWeight(bits, per_channel=per_channel, symmetric=symmetric)
        aq = AffineAct(bits, symmetric=symmetric, observer=observer, **observer_options)
        quantized.append(replace_layer(model, name, layer, wq, aq))
    if not quantized:
        raise ValueError(f"{type(model).__name__}: nothing to calibrate (its only layers are "
                         f"first/last layers kept float)")
    model.eval()
    for layer in quantized:
        layer.input_quant.calibrating = True
    try:
        seen = _run(model, batches)
    finally:
        freeze_observers_(model)
    if seen == 0:
        raise ValueError("calibrate needs at least one batch; got an empty iterable")
    return model


def _run(model: nn.Module, batches: Iterable[Any]) -> int:
    """Forward every batch (a tensor, or a tuple whose first item is the input); the count."""
    seen = 0
    for batch in batches:
        model(batch[0] if isinstance(batch, (tuple, list)) else batch)
        seen += 1
    return seen


def _recalibrate(model: nn.Module, batches: Iterable[Any], observer: str | None,
                 observer_options: dict[str, float], weight_args: dict[str, Any]) -> nn.Module:
    """New activation ranges for a model whose quantized inputs are all affine."""
    name = type(model).__name__
    changed = [k for k, v in weight_args.items()
               if not (v == _WEIGHT_ARGS[k] and type(v) is type(_WEIGHT_ARGS[k]))]
    if changed:
        shown = ", ".join(f"{k}={weight_args[k]!r}" for k in changed)
        raise ValueError(f"calibrate: {name} is already quantized, so calibrate only "
                         f"re-measures its activation ranges and leaves the weights as they "
                         f"are; {shown} would choose a float model's weight quantization: "
                         f"leave {', '.join(changed)} at the default")
    acts: list[AffineAct] = []
    for layer_name, layer in quantized_layers(model):
        aq = layer.input_quant
        if aq is None:
            continue
        if not isinstance(aq, AffineAct):
            raise ValueError(
                f"calibrate: layer {layer_name!r} of {name} quantizes its input with "
                f"{type(aq).__name__} ({aq.kind!r}), which has no measured range; calibrate "
                "supports a float model (post-training int8) and a model whose quantized "
                "inputs are all affine int8 (scheme='int8_affine' QAT, or calibrated before), "
                "whose activation ranges it measures again")
        acts.append(aq)
    if not acts:
        raise ValueError(f"calibrate: {name} is quantized but no layer quantizes its input "
                         "with an affine (int8) quantizer, so there is no activation range to "
                         "measure; calibrate a float model instead")
    fresh = []
    for aq in acts:
        spec = dict(aq.observer.spec())
        kind = observer or spec.pop("observer")
        options = observer_options if (observer or observer_options) else spec
        fresh.append(make_observer(kind, **options).to(aq.observer.min_val.device))
    before = [(aq.observer, aq.observe_in_training) for aq in acts]
    for aq, new in zip(acts, fresh, strict=True):
        aq.observer = new
        aq.calibrating = True
    model.eval()
    seen = 0
    try:
        seen = _run(model, batches)
    finally:
        for aq, (observer_before, observing) in zip(acts, before, strict=True):
            aq.freeze()
            if seen == 0:  # empty, or the first forward failed: leave the model as it was
                aq.observer = observer_before
                aq.observe_in_training = observing
    if seen == 0:
        raise ValueError("calibrate needs at least one batch; got an empty iterable")
    return model


def quantize_weights_uint8_(model: nn.Module, *, per_channel: bool = True) -> nn.Module:
    """Weight-only min-max uint8 (asymmetric, per output channel by default), every layer."""
    check_choice("per_channel", per_channel, (True, False))
    for name, layer in float_layers(model):
        replace_layer(model, name, layer,
                      AffineWeight(8, per_channel=per_channel, symmetric=False), None)
    return model.eval()


def convert_fp16_(model: nn.Module) -> nn.Module:
    """Weight-only float16 (computation stays float32), every layer."""
    for name, layer in float_layers(model):
        replace_layer(model, name, layer, HalfWeight(), None)
    return model.eval()



# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
calibrate = deprecated_alias(calibrate_, "calibrate")
quantize_weights_uint8 = deprecated_alias(quantize_weights_uint8_, "quantize_weights_uint8")
convert_fp16 = deprecated_alias(convert_fp16_, "convert_fp16")
