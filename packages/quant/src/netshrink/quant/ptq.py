"""Post-training quantization of a trained float model: no training, a few batches at most.

* ``calibrate(model, batches, observer=...)``: affine integer weights (per channel or per
  tensor, symmetric or asymmetric) and activations whose ranges an observer (``minmax``,
  ``moving_average``, ``percentile``) measures on ``batches``; the ranges are then frozen.
* ``quantize_weights_uint8(model)``: weight-only, asymmetric min-max uint8 (activations stay
  float); every layer, first and last included.
* ``convert_fp16(model)``: weight-only float16.

All change ``model`` in place, return it in eval mode, and pack with ``save_packed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netshrink.core import check_choice
from netshrink.quant.observers import OBSERVERS
from netshrink.quant.quantize import float_layers, freeze_observers, replace_layer
from netshrink.quant.quantizers import AffineAct, AffineWeight, HalfWeight


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], *, observer: str = "minmax",
              per_channel: bool = True, symmetric: bool = False, bits: int = 8,
              first: str = "same", last: str = "same",
              **observer_options: float) -> nn.Module:
    """Post-training affine quantization of a float model.

    Every quantizable layer (first/last per ``first`` / ``last``: ``"same"`` quantizes them,
    ``"float"`` keeps them float) gets ``bits``-bit weights from their min-max (per output
    channel if ``per_channel``) and ``bits``-bit input activations whose per-tensor range
    ``observer`` measures while ``batches`` (tensors, or tuples whose first item is the input)
    run through the model in eval mode. ``symmetric`` applies to weights and activations
    (False: asymmetric with a zero point). ``observer_options``: ``momentum`` for
    ``moving_average``, ``percentile`` for ``percentile``.
    """
    OBSERVERS.get(observer)  # ValueError naming the observer and the known ones
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
    seen = 0
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    finally:
        freeze_observers(model)
    if seen == 0:
        raise ValueError("calibrate needs at least one batch; got an empty iterable")
    return model


def quantize_weights_uint8(model: nn.Module, *, per_channel: bool = True) -> nn.Module:
    """Weight-only min-max uint8 (asymmetric, per output channel by default), every layer."""
    check_choice("per_channel", per_channel, (True, False))
    for name, layer in float_layers(model):
        replace_layer(model, name, layer,
                      AffineWeight(8, per_channel=per_channel, symmetric=False), None)
    return model.eval()


def convert_fp16(model: nn.Module) -> nn.Module:
    """Weight-only float16 (computation stays float32), every layer."""
    for name, layer in float_layers(model):
        replace_layer(model, name, layer, HalfWeight(), None)
    return model.eval()

