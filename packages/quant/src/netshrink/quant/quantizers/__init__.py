"""Quantizers, one module per family: ``dorefa`` (k-bit), ``pact`` and ``lsq`` (k-bit
activations with a learned clip / step size), ``ternary`` (TWN), ``binary``, ``half``
(float16), ``int8_affine`` (scale and zero point, with observers).
``weight_quantizer`` / ``act_quantizer`` build the one a ``QuantConfig`` asks for."""

from __future__ import annotations

from netshrink.quant.config import KBIT_PRECISIONS, Precision, QuantConfig
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.binary import BinaryAct, BinaryWeight, binary_sign
from netshrink.quant.quantizers.dorefa import DoReFaAct, DoReFaWeight
from netshrink.quant.quantizers.half import HalfAct, HalfWeight, to_fp16
from netshrink.quant.quantizers.int8_affine import AffineAct, AffineWeight, affine_params
from netshrink.quant.quantizers.lsq import LSQAct
from netshrink.quant.quantizers.pact import PACTAct
from netshrink.quant.quantizers.registry import (
    ACT_QUANTIZERS,
    WEIGHT_QUANTIZERS,
    act_quantizer_from_spec,
    list_act_quantizers,
    list_weight_quantizers,
    weight_quantizer_from_spec,
)
from netshrink.quant.quantizers.ternary import TernaryAct, TernaryWeight


def weight_quantizer(precision: Precision, config: QuantConfig,
                     shape: tuple[int, int] | None = None) -> WeightQuantizer | None:
    """The weight quantizer for ``precision`` (None for 32, i.e. float). ``shape`` is the
    out-major weight shape, needed for the ternary hysteresis state."""
    if precision == 32:
        return None
    if precision == 16:
        return HalfWeight()
    if config.scheme == "int8_affine" and precision == 8:
        return AffineWeight(8, per_channel=True, symmetric=True, estimator=config.w_estimator)
    if precision in KBIT_PRECISIONS:
        return DoReFaWeight(int(precision), estimator=config.w_estimator)
    if precision == "ternary":
        return TernaryWeight(estimator=config.w_estimator, scale=config.ternary_scale,
                             gap=config.ternary_gap, shape=shape)
    if precision == "binary":
        return BinaryWeight(estimator=config.w_estimator, scale=config.binary_scale)
    raise ValueError(f"w={precision!r} is not a known precision")


def act_quantizer(precision: Precision, config: QuantConfig) -> ActQuantizer | None:
    """The activation quantizer for ``precision`` (None for 32, i.e. float)."""
    if precision == 32:
        return None
    if precision == 16:
        return HalfAct()
    if config.scheme == "int8_affine" and precision == 8:
        return AffineAct(8, symmetric=False, observer="moving_average",
                         estimator=config.a_estimator)
    if precision in KBIT_PRECISIONS:
        if config.a_quantizer == "pact":
            return PACTAct(int(precision), clip=config.a_clip)
        if config.a_quantizer == "lsq":
            return LSQAct(int(precision), clip=config.a_clip)
        return DoReFaAct(int(precision), estimator=config.a_estimator, clip=config.a_clip)
    if precision == "ternary":
        return TernaryAct(estimator=config.a_estimator)
    if precision == "binary":
        return BinaryAct(estimator=config.a_estimator)
    raise ValueError(f"a={precision!r} is not a known precision")


__all__ = [
    "ACT_QUANTIZERS", "WEIGHT_QUANTIZERS", "ActQuantizer", "AffineAct", "AffineWeight",
    "BinaryAct", "BinaryWeight", "affine_params",
    "DoReFaAct", "DoReFaWeight", "HalfAct", "HalfWeight", "LSQAct", "PACTAct", "TernaryAct",
    "TernaryWeight",
    "WeightQuantizer", "act_quantizer", "act_quantizer_from_spec", "binary_sign",
    "list_act_quantizers", "list_weight_quantizers", "to_fp16", "weight_quantizer",
    "weight_quantizer_from_spec",
]
