"""The ``uint8_minmax`` scheme: 8-bit weights as uint8 codes over each weight tensor's range.

The weight-storage step of the classic compression homework (after distillation and
pruning): every weight tensor is mapped linearly from its ``[min, max]`` onto the codes
0..255 and stored as uint8 with one float scale and an integer zero point per tensor;
``w = scale * (code - zero_point)``. It is ``AffineWeight(8, per_channel=False,
symmetric=False)``: the range is widened to include 0 when needed (so 0 is exact), which for a
weight with both signs, i.e. nearly every trained weight, is exactly ``[min, max]``.

Only ``w = 8`` means something new here; the activations and the other weight precisions of
first / last layers are built as the ``dorefa`` scheme builds them (``a = 32``, float
activations, is the homework's setting). Packed files store the codes as uint8, one byte per
weight, and the row exports to ONNX through ``integer_grid`` like any affine weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.int8_affine import AffineWeight
from netshrink.quant.quantizers.registry import QUANT_SCHEMES, QuantScheme, register_scheme

if TYPE_CHECKING:
    from netshrink.quant.config import Precision, QuantConfig

NAME = "uint8_minmax"


@register_scheme(NAME)
class MinMaxUint8Scheme(QuantScheme):
    """``w = 8``: per-tensor asymmetric min-max uint8 weights; the rest as ``dorefa``."""

    def validate(self, config: QuantConfig) -> None:
        if config.w != 8:
            raise ValueError(f"scheme={NAME!r} stores weights as uint8, so it needs w=8, got "
                             f"w={config.w!r}; for 16-bit weights use w=16 with "
                             "scheme='dorefa'")

    def weight(self, precision: Precision, config: QuantConfig,
               shape: tuple[int, int] | None) -> WeightQuantizer | None:
        if precision == 8:
            return AffineWeight(8, per_channel=False, symmetric=False,
                                estimator=config.w_estimator)
        return QUANT_SCHEMES.get("dorefa").weight(precision, config, shape)

    def act(self, precision: Precision, config: QuantConfig) -> ActQuantizer | None:
        return QUANT_SCHEMES.get("dorefa").act(precision, config)
