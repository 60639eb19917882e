"""The two quantizer interfaces every quantizer module implements.

Weight quantizers see a weight in *out-major* form: a 2-D tensor with one row per output
channel (the layer does the reshaping), so per-output-channel statistics are row statistics.
They split quantization into ``encode`` (integer codes and float parameters such as scales,
what a packed file stores) and ``decode`` (codes back to float weights). The training
``forward`` computes exactly ``decode(*encode(w))`` with the same arithmetic, plus a gradient
estimator, which is why a packed model's outputs are bit-identical to the fake-quantized one.

Activation quantizers are elementwise, have no codes to store, and are rebuilt from ``spec()``.

Both describe their integer grid for exporters (``netshrink.core.IntegerForm``):
``integer_grid`` gives a weight's codes as signed integers with a scale and zero point,
``activation_form`` the input's quantization; None where the values are not on an integer
grid (float16).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from netshrink.core import ActivationForm


class WeightQuantizer(nn.Module):
    """Fake-quantizes an out-major weight ``(out_channels, fan_in)``."""

    #: Registry name (``WEIGHT_QUANTIZERS``), recorded in packed files.
    kind: ClassVar[str] = ""
    #: Bits per weight when packed (1.6 for base-3 packed ternary).
    bits: float = 32.0
    #: Number of distinct codes (2 for binary, 3 for ternary, 2**k for k-bit); 0 = float codes.
    num_codes: int = 0
    #: True when ``constrain_latent`` keeps the latent float weight in a set (binary: centred
    #: and clipped to ``[-1, 1]``); the layer then applies it itself (``constrain_latent``).
    constrains_latent: ClassVar[bool] = False

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Codes (``uint8``, or ``float16`` for 16-bit) and float parameters (e.g. ``scale``)."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float weight the codes stand for, out-major."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (with ``kind``): enough to rebuild ``decode``."""
        raise NotImplementedError

    def constrain_latent(self, w2d: torch.Tensor, positions: int) -> torch.Tensor:
        """The latent weight ``w2d`` (out-major, ``positions`` kernel positions innermost in
        each row, 1 for Linear) moved into the set this quantizer trains in, as a new tensor.
        Only called when ``constrains_latent`` is True; the quantized layer applies it in
        place to its weight whenever that weight changed in place (an optimizer step, a mask)
        before quantizing it, saving it or packing it, so no training loop has to."""
        raise NotImplementedError

    def integer_grid(self, codes: torch.Tensor, params: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(q, scale, zero_point)`` with ``decode(codes, params) == (q - zero_point) * scale``
        exactly: ``q`` signed integers (int32, out-major), ``scale`` float32 and
        ``zero_point`` int32, each of shape ``(out_channels,)`` or ``()``. None (the default):
        the weights are not on an integer grid."""
        return None


class ActQuantizer(nn.Module):
    """Fake-quantizes a layer's input activation elementwise."""

    kind: ClassVar[str] = ""
    #: True when the output is sign(x): a BatchNorm before it folds into a threshold.
    input_sign: ClassVar[bool] = False

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def activation_form(self) -> ActivationForm | None:
        """The quantization as scale, zero point and code range (eval mode), for exporters.
        None (the default): the output is not on an integer grid. ``ValueError`` when it
        cannot be described yet."""
        return None

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "kind")
