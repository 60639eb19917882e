"""Binary weights (BNN / XNOR-Net's BWN) and binary activations: ``sign`` with 0 mapped to +1.

Weights: codes ``b = sign(w)`` in {-1, +1} (stored as 0/1, one bit each); the weight is
``b * scale`` with ``scale = mean|w|`` per output channel (XNOR/BWN, ``scale=True``) or plain
``b`` (BNN). The latent float weights are kept centred per output channel and clipped to
``[-1, 1]`` by ``constrain_latent_weights`` (called after every optimizer step by the quantize
stage), so ``saturate_ste`` never freezes a weight for good. Gradients: the estimator on
``[-1, 1]``; the scale is treated as a constant.

Activations: ``sign(x)`` (0 -> +1); ``saturate_ste`` is the BNN estimator (zero where
``|x| > 1``), ``soft_ste`` the ApproxSign derivative ``2 - 2|x|`` (Bi-Real Net).
"""

from __future__ import annotations

from typing import Any

import torch

from netshrink.quant.estimators import quantize_with_estimator
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS


def binary_sign(v: torch.Tensor) -> torch.Tensor:
    """+1 where ``v >= 0``, else -1 (``torch.sign`` would give 0 at 0)."""
    return torch.sign(v).add_(0.5).sign_()  # -1, 0, 1 -> -0.5, 0.5, 1.5 -> -1, 1, 1


@WEIGHT_QUANTIZERS.register("binary")
class BinaryWeight(WeightQuantizer):
    """Binary weights {-1, +1} (codes 0/1), per-output-channel ``mean|w|`` scale optional."""

    kind = "binary"
    bits = 1
    num_codes = 2

    def __init__(self, estimator: str = "ste", scale: bool = True) -> None:
        super().__init__()
        self.estimator = estimator
        self.scale = scale

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        b = quantize_with_estimator(w2d, binary_sign, -1.0, 1.0, self.estimator)
        if not self.scale:
            return b
        return b * w2d.detach().abs().mean(1).unsqueeze(1)

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = (w2d >= 0).to(torch.uint8)
        return codes, ({"scale": w2d.abs().mean(1)} if self.scale else {})

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        b = codes.to(torch.float32).mul_(2.0).sub_(1.0)
        return b * params["scale"].unsqueeze(1) if self.scale else b

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "estimator": self.estimator, "scale": self.scale}

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, scale={self.scale}"


@ACT_QUANTIZERS.register("binary")
class BinaryAct(ActQuantizer):
    """Binary activations ``sign(x)``, 0 -> +1."""

    kind = "binary"
    input_sign = True

    def __init__(self, estimator: str = "saturate_ste") -> None:
        super().__init__()
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_with_estimator(x, binary_sign, -1.0, 1.0, self.estimator)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "estimator": self.estimator}
