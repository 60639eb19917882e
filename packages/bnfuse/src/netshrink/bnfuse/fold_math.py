"""The closed-form BatchNorm folds: the arithmetic only, no graph logic.

An eval-mode BatchNorm is a per-channel affine map ``BN(z) = a * z + b`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - a * mean``. Folding it

* into the layer **before** it (output side) scales that layer's output channels by ``a`` and
  adds ``b``: ``W[o] *= a[o]``, ``bias[o] = a[o] * bias[o] + b[o]``;
* into the layer **after** it (input side, only without zero padding) scales the layer's input
  channels: ``W[:, i] *= a[i]``, ``bias += sum(W[:, i] * b[i])``.

Everything is computed in float64 on the CPU (some accelerators have no float64) and rounded
once to the parameter's dtype, so the fold adds no more rounding than one float multiply per
weight.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from netshrink.core import FoldsAffine, deprecated_alias

#: Layers whose weight and bias ``fold_output_affine_`` / ``fold_input_affine_`` rewrite.
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_TYPES: tuple[type[nn.Module], ...] = (
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PLAIN_TYPES: tuple[type[nn.Module], ...] = (*CONV_TYPES, *TRANSPOSED_TYPES, nn.Linear)


@torch.no_grad()
def bn_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` in float64 such that the eval-mode ``bn(z) == a * z + b`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} has no running statistics to fold")
    a = torch.rsqrt(_f64(bn.running_var) + bn.eps)
    if bn.weight is not None:
        a = a * _f64(bn.weight)
    b = -a * _f64(bn.running_mean)
    if bn.bias is not None:
        b = b + _f64(bn.bias)
    return a, b


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _store(target: torch.Tensor, value: torch.Tensor) -> None:
    target.copy_(value.reshape(target.shape).to(device=target.device, dtype=target.dtype))


def out_channels(layer: nn.Module) -> int:
    """Output channels (features) of a plain conv, transposed conv or linear layer."""
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def in_channels(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _groups(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Linear) else layer.groups


def _ensure_bias(layer: nn.Module) -> torch.Tensor:
    """The layer's bias, created as zeros (a Parameter, like the weight) when it has none."""
    if layer.bias is None:
        w = layer.weight
        layer.bias = nn.Parameter(torch.zeros(out_channels(layer), dtype=w.dtype,
                                              device=w.device), requires_grad=w.requires_grad)
    return layer.bias


@torch.no_grad()
def fold_output_affine_(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make a plain conv / transposed conv / linear ``layer`` compute ``y * scale + shift``
    (per output channel) instead of ``y``, by rewriting its weight and bias."""
    w = layer.weight
    s = _f64(scale)
    extra = (1,) * (w.dim() - 2)
    if isinstance(layer, TRANSPOSED_TYPES):
        # weight: (in, out / groups, *k); output channel g * (out/groups) + j is column j of
        # the rows of group g.
        g = layer.groups
        view = _f64(w).reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        new_w = view * s.reshape(g, 1, w.shape[1], *extra)
    else:  # conv (out, in / groups, *k) or linear (out, in)
        new_w = _f64(w) * s.reshape(-1, 1, *extra)
    bias = _ensure_bias(layer)
    _store(w, new_w)
    _store(bias, _f64(bias) * s + _f64(shift))


@torch.no_grad()
def fold_input_affine_(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make a plain conv or linear ``layer`` compute ``layer(x * scale + shift)`` (per input
    channel) from ``x``. Exact only when the layer does not zero-pad its input (the caller
    checks)."""
    w = layer.weight
    g = _groups(layer)
    out_pg, in_pg = w.shape[0] // g, w.shape[1]
    wd = _f64(w).reshape(g, out_pg, in_pg, -1)
    s = _f64(scale).reshape(g, 1, in_pg, 1)
    t = _f64(shift).reshape(g, 1, in_pg, 1)
    bias_shift = (wd * t).sum(dim=(2, 3)).reshape(-1)
    bias = _ensure_bias(layer)
    _store(w, wd * s)
    _store(bias, _f64(bias) + bias_shift)


def _float_dtype(layer: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in (*layer.parameters(recurse=False), *layer.buffers(recurse=False)):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


@torch.no_grad()
def apply_output_affine(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``y -> y * scale + shift`` on ``layer``'s output: through ``fold_affine`` for a
    FoldsAffine layer (its weight codes stay as they are), else by rewriting weight and bias."""
    if isinstance(layer, FoldsAffine):
        dtype, device = _float_dtype(layer)
        layer.fold_affine(scale.to(device=device, dtype=dtype),
                          shift.to(device=device, dtype=dtype))
    else:
        fold_output_affine_(layer, scale, shift)


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
fold_output_affine = deprecated_alias(fold_output_affine_, "fold_output_affine")
fold_input_affine = deprecated_alias(fold_input_affine_, "fold_input_affine")
