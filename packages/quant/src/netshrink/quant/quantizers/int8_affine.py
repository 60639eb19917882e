"""Affine integer quantization, the integer-arithmetic-only scheme (Jacob et al., 2018).

``real = scale * (code - zero_point)`` with integer codes in ``[0, 2**bits - 1]``.

Weights (``AffineWeight``): the range comes from the current weight on every forward, per
output channel (``per_channel=True``) or for the whole tensor. Symmetric: ``scale =
max|w| / 127`` and ``zero_point = 128`` (codes 1..255, so +-max are exact and 0 is exactly
code 128). Asymmetric: the range ``[min(w, 0), max(w, 0)]`` spread over 0..255 with an integer
``zero_point``. Codes are stored as uint8 (the signed int8 value is ``code - 128``).

Activations (``AffineAct``): per-tensor; the range comes from an observer
(``netshrink.quant.observers``) updated on training forwards (QAT) or while calibrating
(PTQ), and fixed once frozen (``freeze()``). Asymmetric by default (uint8 with a zero point);
symmetric gives a signed range ``[-m, m]``. Before the observer has seen any data the input
passes through unchanged. Whether the range is frozen is a persistent buffer (``frozen``), so
it survives checkpoints.

Weights, and activations on GPU, use torch's fused fake-quantize kernels, whose gradient is
``saturate_ste`` in code units (zero where a value rounds outside the codes, i.e. more than
half a step outside the range; for weights, whose range always covers them, the same as
``ste``). Activations on CPU use a faster in-place sequence with the estimator on the real
range ``[(0 - zp) * scale, (qmax - zp) * scale]``. Scale and zero point are constants.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from netshrink.core import ActivationForm
from netshrink.quant.estimators import quantize_with_estimator
from netshrink.quant.observers import Observer, make_observer
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

_EPS = 1e-12


def affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int,
                  symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` (float tensors; zero points are integers) for a real range."""
    qmax = float(2 ** bits - 1)
    if symmetric:
        half = float(2 ** (bits - 1) - 1)  # 127 for 8 bits
        scale = torch.maximum(lo.abs(), hi.abs()).clamp_min(_EPS) / half
        return scale, torch.full_like(scale, float(2 ** (bits - 1)))
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = ((hi - lo) / qmax).clamp_min(_EPS)
    zero_point = torch.round(-lo / scale).clamp_(0.0, qmax)
    return scale, zero_point


def integer_bias(bias: torch.Tensor, input_scale: torch.Tensor,
                 weight_scale: torch.Tensor) -> torch.Tensor:
    """``bias`` on the int32 grid that integer back ends add it on: ``round(bias / step) *
    step`` with ``step = s_in * s_w`` per output channel (float32, the scale of an exported
    QDQ bias: ``netshrink.deploy.fold``), rounding half to even; gradient straight through.

    Why: ONNX Runtime's QLinearConv (like every integer-only kernel, Jacob et al. 2018)
    adds the bias to the int32 accumulator as integer codes, so a float bias in the fake-quant
    model moves every output of a channel by up to half an accumulator step against the
    deployed model; on a trained int8 resnet18_cifar that changed codes after every layer and
    the top-1 class of 1.4 % of the test images. Bias codes beyond int32 are not clamped (the
    export then keeps that bias float)."""
    step = (input_scale.to(torch.float32) * weight_scale.to(torch.float32)).detach()
    return quantize_with_estimator(bias, lambda b: torch.round(b / step) * step,
                                   -math.inf, math.inf, "ste")


def _fake(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int,
          estimator: str, axis: int | None) -> torch.Tensor:
    """``(clamp(round(x / scale) + zp, 0, qmax) - zp) * scale`` by torch's fused kernels
    (per tensor, or per channel along ``axis``). Their own gradient is ``saturate_ste`` in code
    units (zero where the value rounds outside ``0..qmax``); other estimators wrap them."""
    zp = zero_point.to(torch.int32)

    def fn(v: torch.Tensor) -> torch.Tensor:
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(v, scale, zp, 0, qmax)
        return torch.fake_quantize_per_channel_affine(v, scale, zp, axis, 0, qmax)

    if estimator == "saturate_ste" or not (x.requires_grad and torch.is_grad_enabled()):
        return fn(x)
    lo, hi = _real_range(scale, zero_point, qmax)
    return quantize_with_estimator(x, fn, lo, hi, estimator)


def _real_range(scale: torch.Tensor, zero_point: torch.Tensor, qmax: int) -> tuple[float, float]:
    return float(((0.0 - zero_point) * scale).min()), float(((qmax - zero_point) * scale).max())


def _fake_act_cpu(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int,
                  estimator: str) -> torch.Tensor:
    """Per-tensor fake quantization as one allocation and in-place steps: on CPU about three
    times faster than the fused kernel. The gradient is the estimator on the real range."""

    def fn(v: torch.Tensor) -> torch.Tensor:
        q = torch.div(v, scale).add_(zero_point).round_().clamp_(0.0, float(qmax))
        return q.sub_(zero_point).mul_(scale)

    lo, hi = _real_range(scale, zero_point, qmax)
    return quantize_with_estimator(x, fn, lo, hi, estimator)


@WEIGHT_QUANTIZERS.register("affine")
class AffineWeight(WeightQuantizer):
    """Affine integer weights, per output channel or per tensor, symmetric or not."""

    kind = "affine"

    def __init__(self, bits: int = 8, per_channel: bool = True, symmetric: bool = True,
                 estimator: str = "ste") -> None:
        super().__init__()
        if bits not in range(2, 9):
            raise ValueError(f"bits={bits!r} is not allowed; choose one of: 2, 3, ..., 8")
        self.bits = bits
        self.num_codes = 2 ** bits
        self.per_channel = per_channel
        self.symmetric = symmetric
        self.estimator = estimator

    def _params(self, w2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w2d.detach()
        if self.per_channel:
            lo, hi = w.amin(1), w.amax(1)
        else:
            lo, hi = w.min().reshape(1), w.max().reshape(1)
        return affine_params(lo, hi, self.bits, self.symmetric)

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        scale, zp = self._params(w2d)
        estimator = "saturate_ste" if self.estimator == "ste" else self.estimator  # no clipping
        if self.per_channel:
            return _fake(w2d, scale, zp, self.num_codes - 1, estimator, axis=0)
        return _fake(w2d, scale, zp, self.num_codes - 1, estimator, axis=None)

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scale, zp = self._params(w2d)
        fake = _fake(w2d, scale, zp, self.num_codes - 1, "ste",
                     axis=0 if self.per_channel else None)
        # the codes the fused kernel used (exact: the error of fake / scale is far below 0.5)
        codes = torch.round(fake / scale.unsqueeze(1)) + zp.unsqueeze(1)
        return codes.to(torch.uint8), {"scale": scale, "zero_point": zp}

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return (codes.to(torch.float32) - params["zero_point"].unsqueeze(1)) * \
            params["scale"].unsqueeze(1)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "per_channel": self.per_channel,
                "symmetric": self.symmetric, "estimator": self.estimator}

    def integer_grid(self, codes: torch.Tensor, params: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes and zero points shifted down by ``2**(bits-1)`` (uint8 -> int8: symmetric
        weights get zero point 0 and codes -127..127); the scale as stored."""
        offset = 2 ** (self.bits - 1)
        q = codes.to(torch.int32) - offset
        zp = params["zero_point"].detach().round().to(torch.int32) - offset
        scale = params["scale"].detach().to(torch.float32)
        if not self.per_channel:
            scale, zp = scale.reshape(()), zp.reshape(())
        return q, scale, zp

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "kind")


@ACT_QUANTIZERS.register("affine")
class AffineAct(ActQuantizer):
    """Affine integer activations, per tensor, with a range observer."""

    kind = "affine"

    def __init__(self, bits: int = 8, symmetric: bool = False, observer: str = "moving_average",
                 estimator: str = "saturate_ste", **observer_options: float) -> None:
        super().__init__()
        if bits not in range(2, 9):
            raise ValueError(f"bits={bits!r} is not allowed; choose one of: 2, 3, ..., 8")
        self.bits = bits
        self.symmetric = symmetric
        self.estimator = estimator
        self.observer: Observer = make_observer(observer, **observer_options)
        #: True once frozen: persistent, so a checkpoint resumes with the range still fixed.
        self.register_buffer("frozen", torch.tensor(False))
        self._observe = True  # mirrors ``not frozen``: no device sync on every forward
        #: Observe on every forward, training or not (set while calibrating).
        self.calibrating = False

    @property
    def observe_in_training(self) -> bool:
        """Whether training forwards update the range (QAT); False once frozen."""
        return self._observe

    @observe_in_training.setter
    def observe_in_training(self, value: bool) -> None:
        self._observe = bool(value)
        self.frozen.fill_(not value)

    def freeze(self) -> None:
        """Stop updating the range (observer freezing)."""
        self.observe_in_training = False
        self.calibrating = False

    def unfreeze(self) -> None:
        """Let training forwards update the range again."""
        self.observe_in_training = True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # files written before the flag existed hold no ``frozen``: they were not frozen
        state_dict.setdefault(prefix + "frozen", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._observe = not bool(self.frozen)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` from the observed range."""
        return affine_params(self.observer.min_val, self.observer.max_val, self.bits,
                             self.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating or (self.training and self.observe_in_training):
            self.observer.update(x)
        if not self.observer.has_range:
            return x
        scale, zp = self.params()
        qmax = 2 ** self.bits - 1
        if x.device.type == "cpu":
            return _fake_act_cpu(x, scale, zp, qmax, self.estimator)
        return _fake(x, scale, zp, qmax, self.estimator, axis=None)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "symmetric": self.symmetric,
                "estimator": self.estimator, **self.observer.spec()}

    def activation_form(self) -> ActivationForm:
        """Codes ``0..2**bits - 1`` around the observed range's zero point (ValueError before
        any range was observed: the input then passes unchanged, with no scale to export)."""
        if not self.observer.has_range:
            raise ValueError("its affine input quantizer has observed no range yet (train it "
                             "with QAT or calibrate it first), so it has no scale")
        scale, zp = self.params()
        return ActivationForm("affine", float(scale), int(zp), 0, 2 ** self.bits - 1)
