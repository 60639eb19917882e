"""Quantizers, one module per family: ``dorefa`` (k-bit), ``pact`` and ``lsq`` (k-bit
activations with a learned clip / step size), ``ternary`` (TWN), ``binary``, ``half``
(float16), ``int8_affine`` (scale and zero point, with observers).
``weight_quantizer`` / ``act_quantizer`` build the one a ``QuantConfig`` asks for, through the
handler registered for its scheme (``QUANT_SCHEMES``: ``dorefa`` and ``int8_affine`` below; a
user adds one with ``register_scheme``, see docs/extending.md)."""

from __future__ import annotations

from netshrink.quant.config import KBIT_PRECISIONS, Precision, QuantConfig
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.binary import BinaryAct, BinaryWeight, binary_sign
from netshrink.quant.quantizers.dorefa import DoReFaAct, DoReFaWeight
from netshrink.quant.quantizers.half import HalfAct, HalfWeight, to_fp16
from netshrink.quant.quantizers.int8_affine import (
    AffineAct,
    AffineWeight,
    affine_params,
    integer_bias,
)
from netshrink.quant.quantizers.lsq import LSQAct
from netshrink.quant.quantizers.pact import PACTAct
from netshrink.quant.quantizers.registry import (
    ACT_QUANTIZERS,
    KBIT_ACT_QUANTIZERS,
    QUANT_SCHEMES,
    WEIGHT_QUANTIZERS,
    KBitActQuantizer,
    QuantScheme,
    act_quantizer_from_spec,
    list_act_quantizers,
    list_kbit_act_quantizers,
    list_schemes,
    list_weight_quantizers,
    register_kbit_act_quantizer,
    register_scheme,
    weight_quantizer_from_spec,
)
from netshrink.quant.quantizers.ternary import TernaryAct, TernaryWeight


def weight_quantizer(precision: Precision, config: QuantConfig,
                     shape: tuple[int, int] | None = None) -> WeightQuantizer | None:
    """The weight quantizer for ``precision`` (None for 32, i.e. float), built by the handler
    of ``config.scheme`` (``QUANT_SCHEMES``). ``shape`` is the out-major weight shape, needed
    for the ternary hysteresis state."""
    if precision == 32:
        return None
    return QUANT_SCHEMES.get(config.scheme).weight(precision, config, shape)


def act_quantizer(precision: Precision, config: QuantConfig) -> ActQuantizer | None:
    """The activation quantizer for ``precision`` (None for 32, i.e. float), built by the
    handler of ``config.scheme``."""
    if precision == 32:
        return None
    return QUANT_SCHEMES.get(config.scheme).act(precision, config)


# -- the built-in k-bit activation quantizers (``QuantConfig.a_quantizer``) --------------------


@register_kbit_act_quantizer("dorefa")
def _dorefa_act(bits: int, config: QuantConfig) -> ActQuantizer:
    return DoReFaAct(bits, estimator=config.a_estimator, clip=config.a_clip)


@register_kbit_act_quantizer("pact", own_gradient=True)
def _pact_act(bits: int, config: QuantConfig) -> ActQuantizer:
    return PACTAct(bits, clip=config.a_clip)


@register_kbit_act_quantizer("lsq", own_gradient=True)
def _lsq_act(bits: int, config: QuantConfig) -> ActQuantizer:
    return LSQAct(bits, clip=config.a_clip)


# -- the built-in schemes (``QuantConfig.scheme``) ----------------------------------------------


@register_scheme("dorefa")
class DoReFaScheme(QuantScheme):
    """float16, k-bit DoReFa (activations by ``a_quantizer``), TWN ternary and binary."""

    def weight(self, precision: Precision, config: QuantConfig,
               shape: tuple[int, int] | None) -> WeightQuantizer | None:
        if precision == 16:
            return HalfWeight()
        if precision in KBIT_PRECISIONS:
            return DoReFaWeight(int(precision), estimator=config.w_estimator)
        if precision == "ternary":
            return TernaryWeight(estimator=config.w_estimator, scale=config.ternary_scale,
                                 gap=config.ternary_gap, shape=shape)
        if precision == "binary":
            return BinaryWeight(estimator=config.w_estimator, scale=config.binary_scale,
                                centring=config.binary_centring)
        raise ValueError(f"w={precision!r} is not a known precision")

    def act(self, precision: Precision, config: QuantConfig) -> ActQuantizer | None:
        if precision == 16:
            return HalfAct()
        if precision in KBIT_PRECISIONS:
            return KBIT_ACT_QUANTIZERS.get(config.a_quantizer).build(int(precision), config)
        if precision == "ternary":
            return TernaryAct(estimator=config.a_estimator)
        if precision == "binary":
            return BinaryAct(estimator=config.a_estimator)
        raise ValueError(f"a={precision!r} is not a known precision")


@register_scheme("int8_affine")
class Int8AffineScheme(DoReFaScheme):
    """Integer-only 8-bit (Jacob et al. 2018): per-channel symmetric weights, asymmetric
    activations with moving-average observers, BatchNorm folded into the conv; other
    precisions (float16 first/last layers) as ``dorefa``."""

    fold_bn = True
    kbit_act_quantizers = False
    late_freezes = True

    def validate(self, config: QuantConfig) -> None:
        if (config.w, config.a) != (8, 8):
            raise ValueError(f"scheme='int8_affine' needs w=8 and a=8, got w={config.w!r}, "
                             f"a={config.a!r}")

    def weight(self, precision: Precision, config: QuantConfig,
               shape: tuple[int, int] | None) -> WeightQuantizer | None:
        if precision == 8:
            return AffineWeight(8, per_channel=True, symmetric=True,
                                estimator=config.w_estimator)
        return super().weight(precision, config, shape)

    def act(self, precision: Precision, config: QuantConfig) -> ActQuantizer | None:
        if precision == 8:
            return AffineAct(8, symmetric=False, observer="moving_average",
                             estimator=config.a_estimator)
        return super().act(precision, config)


# per-tensor min-max uint8 weights (``scheme="uint8_minmax"``), in its own module
from netshrink.quant.quantizers import minmax as _minmax  # noqa: E402, F401  (registers it)

__all__ = [
    "ACT_QUANTIZERS", "KBIT_ACT_QUANTIZERS", "QUANT_SCHEMES", "WEIGHT_QUANTIZERS",
    "ActQuantizer", "AffineAct", "AffineWeight", "BinaryAct", "BinaryWeight", "DoReFaScheme",
    "Int8AffineScheme", "KBitActQuantizer", "QuantScheme", "affine_params",
    "DoReFaAct", "DoReFaWeight", "HalfAct", "HalfWeight", "LSQAct", "PACTAct", "TernaryAct",
    "TernaryWeight",
    "WeightQuantizer", "act_quantizer", "act_quantizer_from_spec", "binary_sign",
    "integer_bias", "list_act_quantizers", "list_kbit_act_quantizers", "list_schemes",
    "list_weight_quantizers", "register_kbit_act_quantizer", "register_scheme", "to_fp16",
    "weight_quantizer",
    "weight_quantizer_from_spec",
]
