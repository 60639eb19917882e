"""k-bit uniform quantization as in DoReFa-Net (Zhou et al., 2016).

Weights: ``x = tanh(w) / (2 max|tanh(w)|) + 1/2`` maps the whole layer onto ``[0, 1]``; the code
is ``round(x * n)`` with ``n = 2**k - 1``; the weight is ``(2 code - n) / n``, so the levels
are ``n + 1`` evenly spaced values in ``[-1, 1]``, symmetric around 0. The gradient flows
through the tanh normalisation exactly and through the rounding by the chosen estimator.

Activations: ``round(clamp(x, 0, c) * n / c) / (n / c)`` with clip ``c`` (``a_clip``, 1.0 as in
DoReFa): ``n + 1`` levels in ``[0, c]``, ``k * c / n`` exactly rounded. The input is not
rescaled first: with BatchNorm and ReLU before the layer, values above ``c`` saturate.
Rounding is half-to-even (``torch.round``).

The weight levels are ``(2c - n) / n`` (as the reference implementation computes them, so
training stays bit-identical to it); their integer form (``integer_grid``) is the odd integers
``2c - n`` with the float32 step ``1 / n``, whose product differs from the division by at most
one ulp on some levels (an integer runtime computes the product).
"""

from __future__ import annotations

from typing import Any

import torch

from netshrink.core import ActivationForm
from netshrink.quant.estimators import quantize_with_estimator
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

_TINY = 1e-12


def _check_bits(bits: int) -> None:
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits={bits!r} is not allowed for k-bit quantization; "
                         "choose one of: 2, 3, 4, 5, 6, 7, 8")


@WEIGHT_QUANTIZERS.register("dorefa")
class DoReFaWeight(WeightQuantizer):
    """k-bit DoReFa weights: ``2**k`` levels in ``[-1, 1]``; codes ``0 .. 2**k - 1``."""

    kind = "dorefa"

    def __init__(self, bits: int, estimator: str = "ste") -> None:
        super().__init__()
        _check_bits(bits)
        self.bits = bits
        self.num_codes = 2 ** bits
        self.estimator = estimator

    @property
    def _n(self) -> int:
        return self.num_codes - 1

    def _normalise(self, w2d: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(w2d)
        return t / (2.0 * t.abs().max().clamp_min(_TINY)) + 0.5

    @property
    def _step(self) -> torch.Tensor:
        """``1 / n`` as a float32 scalar: the levels are the odd integers ``2c - n`` times it."""
        return torch.tensor(1.0 / self._n, dtype=torch.float32)

    def _levels(self, codes: torch.Tensor) -> torch.Tensor:
        # (2c - n) / n: exact integers, one correctly rounded division, so the levels are
        # exactly symmetric (2c/n - 1 would not be in float32)
        return (codes * 2.0 - self._n) / self._n

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        n = self._n
        codes = quantize_with_estimator(self._normalise(w2d), lambda v: torch.round(v * n),
                                        0.0, 1.0, self.estimator, slope=float(n))
        return self._levels(codes)

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = torch.round(self._normalise(w2d) * self._n)
        return codes.to(torch.uint8), {}

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._levels(codes.to(torch.float32))

    def integer_grid(self, codes: torch.Tensor, params: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Odd integers ``2c - n`` in ``[-n, n]`` (8 bits: ``[-255, 255]``, beyond int8), one
        scale ``1 / n`` for the whole layer, zero point 0."""
        q = codes.to(torch.int32) * 2 - self._n
        return q, self._step, torch.zeros((), dtype=torch.int32)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "estimator": self.estimator}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, estimator={self.estimator!r}"


@ACT_QUANTIZERS.register("dorefa")
class DoReFaAct(ActQuantizer):
    """k-bit DoReFa activations: clip to ``[0, clip]``, ``2**k`` levels."""

    kind = "dorefa"

    def __init__(self, bits: int, estimator: str = "saturate_ste", clip: float = 1.0) -> None:
        super().__init__()
        _check_bits(bits)
        self.bits = bits
        self.estimator = estimator
        self.clip = float(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.clip
        per_unit = float(2 ** self.bits - 1) / c  # levels per unit of input

        def fn(v: torch.Tensor) -> torch.Tensor:
            # one allocation, then in place (on CPU faster than torch's fused fake-quantize)
            return torch.clamp(v, 0.0, c).mul_(per_unit).round_().div_(per_unit)

        return quantize_with_estimator(x, fn, 0.0, c, self.estimator)

    def set_clip(self, clip: float) -> None:
        """Use ``clip`` from now on (a calibrated clip, ``calibrate_act_clips_``)."""
        self.clip = float(clip)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "estimator": self.estimator,
                "clip": self.clip}

    def activation_form(self) -> ActivationForm:
        """Codes ``0..n`` with step ``clip / n`` (the forward multiplies by ``n / clip``
        instead of dividing by the step: the two round alike except, rarely, at a tie)."""
        n = 2 ** self.bits - 1
        return ActivationForm("affine", self.clip / n, 0, 0, n)
