"""LSQ: k-bit activations with a learned step size (Esser et al., 2020).

Each quantized layer owns a step size ``s`` (an ``nn.Parameter``, so the optimizer trains it):
``y = round(clip(x / s, 0, Qp)) * s`` with ``Qp = 2**k - 1`` (unsigned: activations after a
ReLU). ``s`` starts at ``clip / Qp`` (DoReFa's grid for ``a_clip``) and is set from the first
batch seen in training mode to ``2 mean|x| / sqrt(Qp)``, as in the paper; the persistent
``initialized`` flag records that this happened, so a checkpoint resumes without
re-initialising. Under DDP the initial value is averaged over the ranks.

Gradients (the paper's, with ``v = x / s``):

* ``dy/dx = 1`` where ``0 < v < Qp``, else 0;
* ``dy/ds = round(v) - v`` where ``0 < v < Qp``, ``Qp`` where ``v >= Qp``, 0 where ``v <= 0``,
  times the gradient scale ``g = 1 / sqrt(N Qp)`` with ``N`` the number of input elements per
  example (the layer's features; all elements for a 1-D input).

A non-positive ``s`` is used as a tiny positive step rather than dividing by zero.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from netshrink.core import ActivationForm, check_float
from netshrink.quant.quantizers.base import ActQuantizer
from netshrink.quant.quantizers.dorefa import _check_bits
from netshrink.quant.quantizers.registry import ACT_QUANTIZERS

_TINY = 1e-12


def _lsq_levels(x: torch.Tensor, step: torch.Tensor, qp: int) -> torch.Tensor:
    """``round(clip(x / s, 0, qp)) * s``; one allocation, then in place."""
    s = step.detach().clamp_min(_TINY)
    return torch.div(x, s).clamp_(0.0, float(qp)).round_().mul_(s)


class _LSQQuantize(torch.autograd.Function):
    """Forward ``_lsq_levels``; backward LSQ's gradients for ``x`` and the step size."""

    @staticmethod
    def forward(ctx, x, step, qp, grad_scale):  # type: ignore[override]
        ctx.save_for_backward(x, step)
        ctx.qp, ctx.grad_scale = qp, grad_scale
        return _lsq_levels(x, step, qp)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, step = ctx.saved_tensors
        qp = float(ctx.qp)
        v = torch.div(x, step.clamp_min(_TINY))
        inside = (v > 0) & (v < qp)
        grad_x = grad_step = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.masked_fill(~inside, 0.0)
        if ctx.needs_input_grad[1]:
            # round(v) - v inside, Qp at or above the top, 0 at or below the bottom
            slope = torch.where(inside, torch.round(v) - v, (v >= qp).to(v.dtype) * qp)
            grad_step = (slope * grad).sum().mul_(ctx.grad_scale).reshape(step.shape)
        return grad_x, grad_step, None, None


@ACT_QUANTIZERS.register("lsq")
class LSQAct(ActQuantizer):
    """k-bit activations on a learned step size ``s`` (LSQ), levels ``0, s, ..., Qp s``."""

    kind = "lsq"

    def __init__(self, bits: int, clip: float = 1.0) -> None:
        super().__init__()
        _check_bits(bits)
        check_float("clip", clip, min_value=0.0, min_exclusive=True)
        self.bits = bits
        self.clip = float(clip)
        #: The learned step size (``clip / Qp`` until the first training batch sets it).
        self.step_size = nn.Parameter(torch.tensor(self.clip / self.qp))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # mirrors the buffer: no device sync on every forward

    @property
    def qp(self) -> int:
        """The largest code, ``2**bits - 1``."""
        return 2 ** self.bits - 1

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``s = 2 mean|x| / sqrt(Qp)`` (kept as is when ``x`` is all zeros)."""
        s0 = x.detach().abs().float().mean().mul_(2.0 / math.sqrt(self.qp))
        if dist.is_available() and dist.is_initialized():  # every rank starts alike
            dist.all_reduce(s0)
            s0.div_(dist.get_world_size())
        s0 = s0.to(self.step_size)
        self.step_size.copy_(torch.where(s0 > 0, s0, self.step_size))
        self.initialized.fill_(True)
        self._initialized = True

    @torch.no_grad()
    def set_clip(self, clip: float) -> None:
        """Start the step size at ``clip / Qp`` (a calibrated clip) instead of LSQ's own
        initialisation from the first training batch."""
        self.clip = float(clip)
        self.step_size.fill_(self.clip / self.qp)
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._initialized:
            self.initialize(x)
        if torch.is_grad_enabled() and (x.requires_grad or self.step_size.requires_grad):
            features = max(math.prod(x.shape[1:]) if x.dim() > 1 else x.numel(), 1)
            grad_scale = 1.0 / math.sqrt(features * self.qp)
            return _LSQQuantize.apply(x, self.step_size, self.qp, grad_scale)
        with torch.no_grad():
            return _lsq_levels(x, self.step_size, self.qp)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "clip": self.clip}

    def activation_form(self) -> ActivationForm:
        """Codes ``0..Qp`` with the learned step size as the scale (the same arithmetic)."""
        return ActivationForm("affine", float(self.step_size.detach().clamp_min(_TINY)), 0, 0,
                              self.qp)
