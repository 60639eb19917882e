"""Gradient estimators: what the backward pass uses for a quantizer's rounding step.

Rounding has zero gradient almost everywhere, so training uses a surrogate. Each quantizer
declares its input range ``[lo, hi]`` (``[-1, 1]`` for sign and ternary, ``[0, a_clip]`` for
k-bit activations, ``[0, 1]`` for DoReFa's normalised weights) and calls
``quantize_with_estimator``; the estimator gives the gradient of the quantizer's output with
respect to its input, relative to the straight line through the range:

* ``ste``: 1 everywhere (the straight-through estimator);
* ``saturate_ste``: 1 inside ``[lo, hi]``, 0 outside (for sign: zero where ``|x| > 1``);
* ``soft_ste``: a tent ``2 * max(0, 1 - |u|)`` with ``u`` the input mapped onto ``[-1, 1]``;
  for sign this is the derivative of the piecewise-quadratic ApproxSign (Bi-Real Net). The tent
  integrates to the same total rise as the quantizer, so its scale matches ``ste``'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from netshrink.core import Registry

#: ``fn(grad, x, lo, hi)`` -> the gradient with respect to the quantizer's input ``x``
#: (``x`` is None for ``ste``, which never needs it).
EstimatorFn = Callable[[torch.Tensor, "torch.Tensor | None", float, float], torch.Tensor]

ESTIMATORS: Registry[EstimatorFn] = Registry("estimator")
#: Estimators whose backward does not look at the input (so it is not kept for backward).
_NEEDS_NO_INPUT = frozenset({"ste"})


@functools.lru_cache(maxsize=256)
def _next(value: float, dtype: torch.dtype, direction: float) -> float:
    """The next value of ``dtype`` after ``value`` towards ``direction`` (cached: a backward
    pass asks for the same few bounds again and again)."""
    t = torch.tensor(value, dtype=dtype)
    return torch.nextafter(t, torch.tensor(direction, dtype=dtype)).item()


@ESTIMATORS.register("ste")
def ste(grad: torch.Tensor, x: torch.Tensor | None, lo: float, hi: float) -> torch.Tensor:
    """Identity gradient."""
    return grad


@ESTIMATORS.register("saturate_ste")
def saturate_ste(grad: torch.Tensor, x: torch.Tensor | None, lo: float,
                 hi: float) -> torch.Tensor:
    """Identity inside ``[lo, hi]`` (bounds included), zero outside; one fused pass."""
    inf = float("inf")
    return torch.ops.aten.hardtanh_backward(grad, x, _next(lo, x.dtype, -inf),
                                            _next(hi, x.dtype, inf))


@ESTIMATORS.register("soft_ste")
def soft_ste(grad: torch.Tensor, x: torch.Tensor | None, lo: float, hi: float) -> torch.Tensor:
    """The tent ``2 * max(0, 1 - |u|)``, ``u = (2x - lo - hi) / (hi - lo)``."""
    u = (2.0 * x - (lo + hi)) / (hi - lo)
    return grad * (1.0 - u.abs_()).clamp_(min=0.0).mul_(2.0)


def list_estimators() -> list[str]:
    """Names of the registered gradient estimators."""
    return ESTIMATORS.names()


class _EstimatedQuantize(torch.autograd.Function):
    """Forward ``fn(x)``; backward ``slope * estimator(grad, x, lo, hi)``."""

    @staticmethod
    def forward(ctx, x, fn, lo, hi, estimator, slope):  # type: ignore[override]
        ctx.estimator = ESTIMATORS.get(estimator)
        ctx.bounds = (lo, hi)
        ctx.slope = slope
        if estimator not in _NEEDS_NO_INPUT:
            ctx.save_for_backward(x)  # usually kept anyway: the previous op's output
        return fn(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x = ctx.saved_tensors[0] if ctx.saved_tensors else None
        grad = ctx.estimator(grad, x, *ctx.bounds)
        if ctx.slope != 1.0:
            grad = grad * ctx.slope
        return grad, None, None, None, None, None


class _ScaledEstimatedQuantize(torch.autograd.Function):
    """Forward ``fn(x) -> (codes * scale, scale)``; backward ``estimator(grad * scale)``."""

    @staticmethod
    def forward(ctx, x, fn, lo, hi, estimator):  # type: ignore[override]
        ctx.estimator = ESTIMATORS.get(estimator)
        ctx.bounds = (lo, hi)
        out, scale = fn(x)
        ctx.save_for_backward(None if estimator in _NEEDS_NO_INPUT else x, scale)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale = ctx.saved_tensors
        if scale is not None:
            grad = grad * scale
        return ctx.estimator(grad, x, *ctx.bounds), None, None, None, None


def quantize_scaled_with_estimator(
        x: torch.Tensor,
        fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
        lo: float, hi: float, estimator: str) -> torch.Tensor:
    """For quantizers whose output is ``codes * scale`` with a scale that autograd treats as a
    constant (per-channel ternary / binary scales): ``fn(x)`` returns the output and the
    scale (broadcastable to it; None for none). The backward pass gives the estimator's
    gradient of the codes, on ``[lo, hi]``, applied to ``grad * scale``: the same numbers as
    ``quantize_with_estimator(x, codes_fn, ...) * scale``, without keeping the codes."""
    ESTIMATORS.get(estimator)
    if not x.requires_grad or not torch.is_grad_enabled():
        with torch.no_grad():
            return fn(x)[0]
    return _ScaledEstimatedQuantize.apply(x, fn, lo, hi, estimator)


def quantize_with_estimator(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                            lo: float, hi: float, estimator: str,
                            slope: float = 1.0) -> torch.Tensor:
    """``fn(x)`` in the forward pass (no autograd inside ``fn``); in the backward pass the
    estimator's gradient on ``[lo, hi]`` times ``slope``. ``slope`` is the ideal line's slope
    when ``fn`` maps ``[lo, hi]`` onto a different range (e.g. ``[0, 1]`` onto codes ``0..n``).
    """
    ESTIMATORS.get(estimator)  # ValueError naming a bad estimator, even without autograd
    if not x.requires_grad or not torch.is_grad_enabled():
        with torch.no_grad():
            return fn(x)
    return _EstimatedQuantize.apply(x, fn, lo, hi, estimator, slope)
