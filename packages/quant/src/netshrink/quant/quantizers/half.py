"""16-bit quantization: round to float16 (values beyond +-65504 saturate instead of becoming
inf). The gradient is always the identity; rounding to 11 significant bits needs no estimator.
"""

from __future__ import annotations

from typing import Any

import torch

from netshrink.quant.estimators import quantize_with_estimator
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

FP16_MAX = 65504.0


def to_fp16(v: torch.Tensor) -> torch.Tensor:
    """``v`` rounded to the nearest float16 (saturating), still as ``v``'s dtype."""
    return torch.clamp(v, -FP16_MAX, FP16_MAX).to(torch.float16).to(v.dtype)


@WEIGHT_QUANTIZERS.register("fp16")
class HalfWeight(WeightQuantizer):
    """Float16 weights; the codes are the float16 values themselves."""

    kind = "fp16"
    bits = 16

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        return quantize_with_estimator(w2d, to_fp16, -FP16_MAX, FP16_MAX, "ste")

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.clamp(w2d, -FP16_MAX, FP16_MAX).to(torch.float16), {}

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return codes.to(torch.float32)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}


@ACT_QUANTIZERS.register("fp16")
class HalfAct(ActQuantizer):
    """Float16 activations (identity gradient)."""

    kind = "fp16"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_with_estimator(x, to_fp16, -FP16_MAX, FP16_MAX, "ste")

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}
