"""The integer form of a quantized layer: the contract between quant and deploy.

A quantized conv / linear layer computes, in eval mode,

    y = op(a(x), W) * output_scale + bias          (output_scale and bias optional)

where ``W = (codes - weight_zero_point) * weight_scale`` (per output channel along
``axis``, or one value for the whole tensor) and ``a`` quantizes the input (``ActivationForm``).
An exporter (``netshrink.deploy``) writes ``codes`` as an integer initializer and ``a`` as a
QuantizeLinear / DequantizeLinear pair, so a runtime can use integer kernels, without knowing
which quantizer produced them: quant's layers implement ``HasIntegerForm``, and deploy never
imports quant (as bnfuse meets quant only through ``FoldsAffine``).

``integer_form()`` returns None for a layer whose weights are not on an integer grid (float16,
or float weights); it raises ``ValueError`` (saying why) for a layer whose computation has no
such form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from netshrink.core.validation import check_choice

#: ``ActivationForm.kind``: ``"affine"`` (``q = clamp(round(x / scale) + zero_point, qmin,
#: qmax)``, then ``(q - zero_point) * scale``) or ``"sign"`` (``+1`` where ``x >= 0``, else
#: ``-1``: sign with 0 mapped to +1; ``scale`` 1, ``zero_point`` 0, codes -1..1).
ACTIVATION_KINDS: tuple[str, ...] = ("affine", "sign")


@dataclass(frozen=True)
class ActivationForm:
    """How a layer quantizes its input: codes ``qmin..qmax`` around ``zero_point``, one
    ``scale`` for the whole tensor. Rounding is half to even (as ``torch.round`` and ONNX's
    QuantizeLinear)."""

    kind: str
    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ACTIVATION_KINDS)
        for name in ("zero_point", "qmin", "qmax"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be an int")
        if not (isinstance(self.scale, float) and self.scale > 0.0 and self.scale < float("inf")):
            raise ValueError(f"scale={self.scale!r} must be a positive finite float")
        if not self.qmin <= self.zero_point <= self.qmax or self.qmin >= self.qmax:
            raise ValueError(f"need qmin < qmax and qmin <= zero_point <= qmax, got "
                             f"qmin={self.qmin}, zero_point={self.zero_point}, qmax={self.qmax}")
        if self.kind == "sign" and (self.scale, self.zero_point, self.qmin, self.qmax) != (
                1.0, 0, -1, 1):
            raise ValueError("kind='sign' has scale=1.0, zero_point=0, qmin=-1, qmax=1")

    @property
    def signed(self) -> bool:
        """True when values below zero are representable (codes below the zero point)."""
        return self.qmin < self.zero_point

    @property
    def bits(self) -> int:
        """Bits an integer needs to hold ``qmax - qmin + 1`` codes (1 for sign)."""
        return 1 if self.kind == "sign" else (self.qmax - self.qmin).bit_length()

    @property
    def clip(self) -> tuple[float, float]:
        """The real range the codes cover: ``((qmin - zp) * scale, (qmax - zp) * scale)``."""
        return ((self.qmin - self.zero_point) * self.scale,
                (self.qmax - self.zero_point) * self.scale)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The activation this form describes, in float (the reference for exporters)."""
        if self.kind == "sign":
            return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        q = torch.round(x / self.scale) + self.zero_point
        return (q.clamp(self.qmin, self.qmax) - self.zero_point) * self.scale


@dataclass(frozen=True, eq=False)
class IntegerForm:
    """A quantized layer's weights as integers, its input quantization and its float epilogue
    (see the module docstring for the formula).

    ``codes``: an integer tensor in the layer's own weight layout (e.g. ``(out, in / groups,
    kh, kw)`` for a conv, ``(in, out / groups, kh, kw)`` for a transposed conv).
    ``weight_scale`` (float32) and ``weight_zero_point`` (integer): shape ``(codes.shape[axis],)``
    per channel, or ``()`` for the whole tensor. ``bits``: the quantizer's width (1 binary,
    2 ternary, k for k-bit, 8 for int8); the codes' range is ``code_range``.
    ``input``: None when the input is not quantized. ``output_scale`` / ``bias``: per output
    channel, or None.
    """

    codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    axis: int
    bits: int
    input: ActivationForm | None = None
    output_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        codes = self.codes
        if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or \
                codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got "
                             f"{getattr(codes, 'dtype', type(codes).__name__)}")
        if not 0 <= self.axis < codes.dim():
            raise ValueError(f"axis={self.axis!r} must be in [0, {codes.dim()}) for codes of "
                             f"shape {tuple(codes.shape)}")
        allowed = {(), (codes.shape[self.axis],)}
        for name in ("weight_scale", "weight_zero_point"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) not in allowed:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape () or ({codes.shape[self.axis]},), "
                                 f"got {got}")
        if self.weight_scale.dtype != torch.float32:
            raise ValueError(f"weight_scale must be float32, got {self.weight_scale.dtype}")
        if self.weight_zero_point.dtype.is_floating_point:
            raise ValueError("weight_zero_point must be an integer tensor")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 1:
            raise ValueError(f"bits={self.bits!r} must be an int >= 1")
        if self.input is not None and not isinstance(self.input, ActivationForm):
            raise ValueError(f"input must be an ActivationForm or None, got "
                             f"{type(self.input).__name__}")

    @property
    def per_channel(self) -> bool:
        return self.weight_scale.dim() == 1

    @property
    def code_range(self) -> tuple[int, int]:
        """Smallest and largest code actually used, zero point subtracted."""
        centred = self.codes.to(torch.int64) - self._broadcast(self.weight_zero_point).long()
        return int(centred.min()), int(centred.max())

    def fits(self, dtype: torch.dtype) -> bool:
        """Whether codes and zero points are representable in the integer ``dtype``."""
        info = torch.iinfo(dtype)
        lo = min(int(self.codes.min()), int(self.weight_zero_point.min()))
        hi = max(int(self.codes.max()), int(self.weight_zero_point.max()))
        return info.min <= lo and hi <= info.max

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        shape = [1] * self.codes.dim()
        shape[self.axis] = -1
        return t.view(shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight: ``(codes - weight_zero_point) * weight_scale`` (as ONNX's
        DequantizeLinear computes it)."""
        centred = (self.codes.to(torch.int32) - self._broadcast(self.weight_zero_point).int())
        return centred.to(torch.float32) * self._broadcast(self.weight_scale)


@runtime_checkable
class HasIntegerForm(Protocol):
    """A layer that can describe itself as integer weights plus input quantization."""

    def integer_form(self) -> IntegerForm | None: ...
