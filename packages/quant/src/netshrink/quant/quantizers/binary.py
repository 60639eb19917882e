"""Binary weights (BNN / XNOR-Net's BWN) and binary activations: ``sign`` with 0 mapped to +1.

Weights: codes ``b = sign(w)`` in {-1, +1} (stored as 0/1, one bit each); the weight is
``b * scale`` with ``scale = mean|w|`` per output channel (XNOR/BWN, ``scale=True``) or plain
``b`` (BNN). The latent float weights are kept centred and clipped to ``[-1, 1]``
(``constrain_latent``) by the quantized layer itself, each time the weight has changed in place
(after an optimizer step) and before it is used, saved or packed: the same values as clipping
right after every step, with no call in the training loop. So ``saturate_ste`` never freezes a
weight for good. Gradients: the estimator on ``[-1, 1]``; the
scale is treated as a constant.

Centring (``centring``, see ``centre_latent``): ``"filter"`` subtracts the mean of each output
channel's whole filter (input channels and kernel positions together); ``"kernel_position"``
subtracts, for each output channel and each kernel position, the mean over the input channels
(what XNOR-Net's released code and micronet do); ``"none"`` only clips.

Activations: ``sign(x)`` (0 -> +1); ``saturate_ste`` is the BNN estimator (zero where
``|x| > 1``), ``soft_ste`` the ApproxSign derivative ``2 - 2|x|`` (Bi-Real Net).
"""

from __future__ import annotations

from typing import Any

import torch

from netshrink.core import ActivationForm
from netshrink.quant.estimators import quantize_scaled_with_estimator, quantize_with_estimator
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

#: The bits of 1.0 as an integer of the same width, per float dtype.
_ONE_BITS: dict[torch.dtype, tuple[torch.dtype, int]] = {
    torch.float32: (torch.int32, 0x3F800000), torch.float64: (torch.int64, 0x3FF0000000000000),
    torch.float16: (torch.int16, 0x3C00), torch.bfloat16: (torch.int16, 0x3F80),
}


def binary_sign(v: torch.Tensor) -> torch.Tensor:
    """+1 where ``v >= 0`` (and at -0 and NaN), else -1 (``torch.sign`` would give 0 at 0).

    One pass and one in-place bit operation: ``torch.sign`` gives -1, 0 or +1 (and 0 for NaN);
    OR-ing the bits of 1.0 into each value keeps -1 and +1 and turns 0 into +1 (1.0's bits
    are exactly the exponent bits that -1.0 and +1.0 already have)."""
    out = torch.sign(v)
    if out.dtype not in _ONE_BITS:  # other dtypes: -1, 0, 1 -> -0.5, 0.5, 1.5 -> -1, 1, 1
        return out.add_(0.5).sign_()
    int_dtype, one = _ONE_BITS[out.dtype]
    out.view(int_dtype).bitwise_or_(one)
    return out


#: The ways binary latent weights are centred (``centre_latent``).
CENTRINGS: tuple[str, ...] = ("filter", "kernel_position", "none")


def centre_latent(w2d: torch.Tensor, centring: str, positions: int) -> torch.Tensor:
    """``w2d`` (out-major, ``(out, in_per_group * positions)`` with the kernel positions
    innermost, as every quantized layer lays it out) minus its mean, then clipped to
    ``[-1, 1]``: a new tensor.

    ``"filter"``: the mean of each row (one per output channel); ``"kernel_position"``: for each
    output channel and kernel position, the mean over the input channels (``positions`` is the
    kernel's size, 1 for Linear, where both modes agree); ``"none"``: no centring."""
    if centring == "filter":
        w2d = w2d - w2d.mean(1, keepdim=True)
    elif centring == "kernel_position":
        w3d = w2d.reshape(w2d.shape[0], -1, positions)
        w2d = (w3d - w3d.mean(1, keepdim=True)).reshape(w2d.shape)
    elif centring != "none":
        raise ValueError(f"centring={centring!r} is not known; choose one of: "
                         f"{', '.join(CENTRINGS)}")
    return w2d.clamp(-1.0, 1.0)


def _binary_scaled(w2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sign(w) * scale, scale)`` with ``scale = mean|w|`` per row, as a column."""
    scale = w2d.abs().mean(1, keepdim=True)
    return binary_sign(w2d).mul_(scale), scale


@WEIGHT_QUANTIZERS.register("binary")
class BinaryWeight(WeightQuantizer):
    """Binary weights {-1, +1} (codes 0/1), per-output-channel ``mean|w|`` scale optional;
    ``centring`` is how ``constrain_latent`` centres the latent weights."""

    kind = "binary"
    bits = 1
    num_codes = 2
    constrains_latent = True

    def __init__(self, estimator: str = "ste", scale: bool = True,
                 centring: str = "filter") -> None:
        super().__init__()
        if centring not in CENTRINGS:
            raise ValueError(f"centring={centring!r} is not known; choose one of: "
                             f"{', '.join(CENTRINGS)}")
        self.estimator = estimator
        self.scale = scale
        self.centring = centring

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        if not self.scale:
            return quantize_with_estimator(w2d, binary_sign, -1.0, 1.0, self.estimator)
        return quantize_scaled_with_estimator(w2d, _binary_scaled, -1.0, 1.0, self.estimator)

    def constrain_latent(self, w2d: torch.Tensor, positions: int) -> torch.Tensor:
        """Centred as ``centring`` says, then clipped to ``[-1, 1]`` (``centre_latent``)."""
        return centre_latent(w2d, self.centring, positions)

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = (~(w2d < 0)).to(torch.uint8)  # NaN -> code 1 (+1), as binary_sign does
        return codes, ({"scale": w2d.abs().mean(1)} if self.scale else {})

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        b = codes.to(torch.float32).mul_(2.0).sub_(1.0)
        return b * params["scale"].unsqueeze(1) if self.scale else b

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "estimator": self.estimator, "scale": self.scale,
                "centring": self.centring}

    def integer_grid(self, codes: torch.Tensor, params: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-1 / +1 with the per-channel scale (or 1 for the whole layer), zero point 0."""
        q = codes.to(torch.int32) * 2 - 1
        return q, _float32_scale(params, self.scale), torch.zeros((), dtype=torch.int32)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, scale={self.scale}, centring={self.centring!r}"


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

    def activation_form(self) -> ActivationForm:
        """sign with 0 mapped to +1."""
        return ActivationForm("sign", 1.0, 0, -1, 1)


def _float32_scale(params: dict[str, torch.Tensor], scaled: bool) -> torch.Tensor:
    """The per-channel scale of scaled binary / ternary codes, else a float32 1."""
    if scaled:
        return params["scale"].detach().to(torch.float32)
    return torch.ones((), dtype=torch.float32)
