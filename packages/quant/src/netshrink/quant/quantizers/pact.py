"""PACT: k-bit activations with a learned clip (Choi et al., 2018).

Each quantized layer owns a clip ``alpha`` (an ``nn.Parameter``, so the optimizer trains it;
initialised to ``a_clip``): ``y = clip(x, 0, alpha)``, rounded to ``n = 2**k - 1`` equal steps
over ``[0, alpha]``: ``round(y * n / alpha) / (n / alpha)``, the arithmetic of DoReFa's fixed
clip, so with ``alpha == a_clip`` the outputs equal ``DoReFaAct``'s.

Gradients (the paper's, rounding passed straight through): ``dy/dx = 1`` where
``0 <= x < alpha``, else 0; ``dy/dalpha = 1`` where ``x >= alpha``, else 0, so ``alpha``
receives the sum of the upstream gradients of the clipped inputs. The paper's L2 decay on
``alpha`` is the optimizer's weight decay. A non-positive ``alpha`` is used as a tiny positive
clip (everything saturates) rather than dividing by zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netshrink.core import ActivationForm, check_float
from netshrink.quant.quantizers.base import ActQuantizer
from netshrink.quant.quantizers.dorefa import _check_bits
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS

_TINY = 1e-12


def _pact_levels(x: torch.Tensor, alpha: torch.Tensor, n: int) -> torch.Tensor:
    """``clip(x, 0, alpha)`` on ``n + 1`` levels; one allocation, then in place."""
    a = alpha.detach().clamp_min(_TINY)
    # levels per unit of input, divided in float64 as DoReFaAct's Python float(n) / clip
    per_unit = torch.full_like(a, n, dtype=torch.float64).div_(a)
    return x.clamp_min(0.0).clamp_max_(a).mul_(per_unit).round_().div_(per_unit)


class _PACTQuantize(torch.autograd.Function):
    """Forward ``_pact_levels``; backward the PACT gradients for ``x`` and ``alpha``."""

    @staticmethod
    def forward(ctx, x, alpha, n):  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        return _pact_levels(x, alpha, n)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        clipped = x >= alpha
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.masked_fill(clipped | (x < 0), 0.0)
        if ctx.needs_input_grad[1]:
            grad_alpha = torch.where(clipped, grad, 0.0).sum().reshape(alpha.shape)
        return grad_x, grad_alpha, None


@ACT_QUANTIZERS.register("pact")
class PACTAct(ActQuantizer):
    """k-bit activations clipped to ``[0, alpha]`` with a learned ``alpha`` (PACT)."""

    kind = "pact"

    def __init__(self, bits: int, clip: float = 1.0) -> None:
        super().__init__()
        _check_bits(bits)
        check_float("clip", clip, min_value=0.0, min_exclusive=True)
        self.bits = bits
        self.clip = float(clip)
        #: The learned clip (initialised to ``clip``).
        self.alpha = nn.Parameter(torch.tensor(self.clip))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 2 ** self.bits - 1
        if torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad):
            return _PACTQuantize.apply(x, self.alpha, n)
        with torch.no_grad():
            return _pact_levels(x, self.alpha, n)

    @torch.no_grad()
    def set_clip(self, clip: float) -> None:
        """Start ``alpha`` (and the recorded initial clip) at ``clip`` (a calibrated clip)."""
        self.clip = float(clip)
        self.alpha.fill_(self.clip)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "clip": self.clip}

    def activation_form(self) -> ActivationForm:
        """Codes ``0..n`` with step ``alpha / n`` (the learned clip)."""
        n = 2 ** self.bits - 1
        alpha = float(self.alpha.detach().clamp_min(_TINY))
        return ActivationForm("affine", alpha / n, 0, 0, n)
