"""Ternary weights (TWN, Li & Liu 2016) and ternary activations.

Weights, per output channel (row of the out-major weight): threshold ``D = 0.7 * mean|w|``;
codes ``t = sign(w)`` where ``|w| > D``, else 0; the weight is ``t * scale`` with
``scale = mean of |w| over the non-zero codes`` (TWN), or plain ``t`` with ``scale=False``
(for hardware that cannot multiply by a scale).

``gap`` adds hysteresis: a weight turns non-zero only above ``D * (1 + gap)``, turns zero only
below ``D * (1 - gap)``, and in between keeps the state it had at the previous training
forward, so weights hovering near the threshold do not flip every step. The state is a
persistent ``int8`` buffer (it travels with checkpoints so training resumes exactly; it is
not part of the deployed model, so it declares 0 packed bits). Gradients: the estimator on the
nominal range ``[-1, 1]``; the scale is treated as a constant.

Activations: ``round(clamp(x, -1, 1))``: -1 below -0.5, +1 above 0.5, else 0.
"""

from __future__ import annotations

from typing import Any

import torch

from netshrink.core import ActivationForm
from netshrink.quant.estimators import quantize_scaled_with_estimator, quantize_with_estimator
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.binary import _float32_scale
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

#: TWN's threshold factor: ``D = THRESHOLD * mean|w|`` per output channel.
THRESHOLD = 0.7


@WEIGHT_QUANTIZERS.register("ternary")
class TernaryWeight(WeightQuantizer):
    """TWN weights: codes {-1, 0, +1} stored as 0/1/2, per-output-channel scale optional."""

    kind = "ternary"
    bits = 1.6  # base-3 packed: 5 trits per byte
    num_codes = 3

    def __init__(self, estimator: str = "ste", scale: bool = True, gap: float = 0.0,
                 shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        if not 0.0 <= gap < 1.0:
            raise ValueError(f"gap={gap!r} must be in [0, 1)")
        self.estimator = estimator
        self.scale = scale
        self.gap = float(gap)
        self.packed_bits = {"state": 0}
        state = torch.zeros(tuple(shape), dtype=torch.int8) if gap > 0 and shape else None
        self.register_buffer("state", state)

    @torch.no_grad()
    def init_state(self, w2d: torch.Tensor) -> None:
        """Start the hysteresis state from the plain TWN codes of ``w2d``."""
        if self.state is not None:
            q, _ = self._quantize(w2d, use_state=False)
            self.state.copy_(q.sign() if self.scale else q)

    @torch.no_grad()
    def _quantize(self, w2d: torch.Tensor,
                  use_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(q, scale)``: ``q = t * scale`` (``t`` without ``scale``), ``t`` the codes
        -1/0/+1, ``scale`` a column (None without ``scale``).

        Written for speed (a handful of passes over the weight, no bool-to-float arithmetic,
        few temporaries); the numbers, zeros' signs included, are those of the plain formula
        ``t = where(|w| > D, sign(w), 0)``, ``scale = sum(|w| * nonzero) / count(nonzero)``
        for finite weights.
        """
        threshold_backward = torch.ops.aten.threshold_backward
        absw = w2d.abs()
        delta = absw.mean(1, keepdim=True).mul_(THRESHOLD)
        if self.state is not None and use_state:
            nonzero = (absw > delta * (1.0 + self.gap)) | (
                (absw >= delta * (1.0 - self.gap)) & (self.state != 0))
            selected = nonzero.to(absw.dtype)  # 1.0 / 0.0
            masked = threshold_backward(absw, selected, 0.0)  # |w| where selected, else 0
            count = selected.sum(1, keepdim=True)
            torch.sign(masked, out=selected)  # 1 where selected and w != 0: where t != 0
        else:
            # |w| - D > 0 exactly where |w| > D (with subnormals, torch's default, a difference
            # of floats is 0 only for equal ones): one float tensor serves as the mask
            selected = absw - delta
            masked = threshold_backward(absw, selected, 0.0)
            torch.gt(selected, 0.0, out=selected)  # 1.0 where t != 0 (|w| > D >= 0)
            count = selected.sum(1, keepdim=True)
        if self.scale:
            scale = masked.sum(1, keepdim=True).div_(count.clamp_min_(1.0))
            signed = torch.copysign(scale, w2d, out=absw)  # +-scale; absw is free again
        else:
            scale = None
            signed = torch.sign(w2d, out=absw)
        # t * scale: +-scale where t != 0, +0 elsewhere (in place)
        q = threshold_backward.grad_input(signed, selected, 0.0, grad_input=signed)
        return q, scale

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        q = quantize_scaled_with_estimator(w2d, self._quantize, -1.0, 1.0, self.estimator)
        if self.training and self.state is not None:
            with torch.no_grad():
                self.state.copy_(q.sign() if self.scale else q)
        return q

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q, scale = self._quantize(w2d)
        t = q.sign_() if self.scale else q
        codes = t.add_(1.0).to(torch.uint8)
        return codes, ({"scale": scale.view(-1)} if self.scale else {})

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        t = codes.to(torch.float32) - 1.0
        return t * params["scale"].unsqueeze(1) if self.scale else t

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "estimator": self.estimator, "scale": self.scale,
                "gap": self.gap}

    def integer_grid(self, codes: torch.Tensor, params: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-1 / 0 / +1 with the per-channel scale (or 1 for the whole layer), zero point 0."""
        q = codes.to(torch.int32) - 1
        return q, _float32_scale(params, self.scale), torch.zeros((), dtype=torch.int32)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, scale={self.scale}, gap={self.gap}"


def _ternary(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(v, -1.0, 1.0).round_()


@ACT_QUANTIZERS.register("ternary")
class TernaryAct(ActQuantizer):
    """Ternary activations {-1, 0, +1}: thresholds at +-0.5 after clipping to [-1, 1]."""

    kind = "ternary"

    def __init__(self, estimator: str = "saturate_ste") -> None:
        super().__init__()
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_with_estimator(x, _ternary, -1.0, 1.0, self.estimator)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "estimator": self.estimator}

    def activation_form(self) -> ActivationForm:
        """Codes -1, 0, +1 with step 1 (``round(clamp(x, -1, 1)) == clamp(round(x), -1, 1)``)."""
        return ActivationForm("affine", 1.0, 0, -1, 1)
