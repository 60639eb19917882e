"""In-place channel slicing for layers whose constructor we do not know.

The built-in pruners (``pruners``) rebuild a conv / BatchNorm from its constructor arguments.
Subclasses from model zoos take other arguments (timm's ``BatchNormAct2d`` holds its activation,
``Conv2dSame`` its padding rule, ``ScaledStdConv2d`` a per-filter ``gain``), so rebuilding them
would lose settings or fail. These helpers instead cut the tensors a module owns directly and
update its size attributes, leaving everything else (activations, flags, hooks) as it was:

* ``slice_channels_(module, keep)``: a per-channel layer (a norm, a channel scale): every tensor
  whose first dimension is the channel count keeps the entries ``keep``; ``num_features`` /
  ``num_channels`` / ``normalized_shape`` follow. Usable as a ``register_pruner`` function.
* ``conv_slice_out`` / ``conv_slice_in`` / ``conv_resize``: the same for a convolution subclass
  (every tensor whose first dimension is ``out_channels`` is cut with the filters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netshrink.core import deprecated_alias

#: attributes holding a per-channel layer's channel count
_COUNT_ATTRS = ("num_features", "num_channels")


def _own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    return [(name, t) for name, t in own if t is not None and t.ndim >= 1]


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a parameter (keeping ``requires_grad``) or a buffer (keeping persistence)."""
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module._buffers[name] = value


def channel_count(module: nn.Module) -> int:
    """The channel count of a per-channel layer: its ``num_features`` / ``num_channels`` /
    ``normalized_shape`` (1-D), else the first dimension of its first tensor."""
    for attr in _COUNT_ATTRS:
        n = getattr(module, attr, None)
        if isinstance(n, int):
            return n
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        return int(shape[0])
    for _, t in _own_tensors(module):
        return int(t.shape[0])
    raise TypeError(f"{type(module).__name__} holds no tensor or channel count to slice; "
                    "give register_pruner its own prune function")


@torch.no_grad()
def slice_channels_(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep channels ``keep`` of a per-channel layer, in place (see the module docstring)."""
    n = channel_count(module)
    for name, t in _own_tensors(module):
        if t.shape[0] == n:
            set_tensor(module, name, t[keep.to(t.device)].clone())
    _set_count(module, len(keep))
    return module


def _set_count(module: nn.Module, n: int) -> None:
    for attr in _COUNT_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, n)
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        module.normalized_shape = (n,)


def is_depthwise(m: nn.Module) -> bool:
    """groups == in_channels (> 1), with or without a channel multiplier (out = m x in)."""
    return m.groups > 1 and m.groups == m.in_channels and m.out_channels % m.in_channels == 0


@torch.no_grad()
def conv_slice_out(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep output filters ``keep`` of a conv subclass, in place (a depthwise conv keeps the
    same input channels: one index set)."""
    n, depthwise = m.out_channels, is_depthwise(m)
    mult = m.out_channels // m.in_channels
    for name, t in _own_tensors(m):
        if t.shape[0] == n:
            set_tensor(m, name, t[keep.to(t.device)].clone())
    m.out_channels = len(keep)
    if depthwise:
        m.in_channels = m.groups = len(keep) // mult
    return m


@torch.no_grad()
def conv_slice_in(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep input channels ``keep`` of a conv subclass, in place; a grouped conv keeps each
    filter's own group's inputs at their local positions (the group count stays)."""
    g, weight = m.groups, m.weight
    keep = keep.to(weight.device)
    if g == 1:
        new = weight[:, keep]
    else:
        b_in, b_out, nb_in = m.in_channels // g, m.out_channels // g, len(keep) // g
        new = torch.stack([weight[o][keep[(o // b_out) * nb_in:(o // b_out + 1) * nb_in]
                                     - (o // b_out) * b_in] for o in range(m.out_channels)])
    set_tensor(m, "weight", new.clone())
    m.in_channels = len(keep)
    return m


@torch.no_grad()
def conv_resize(m: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """Give a conv subclass the recorded shape (fresh tensors, to be loaded next), in place."""
    n, out, groups = m.out_channels, shape["out_channels"], shape["groups"]
    for name, t in _own_tensors(m):
        if name == "weight":
            size = (out, shape["in_channels"] // groups, *t.shape[2:])
        elif t.shape[0] == n:
            size = (out, *t.shape[1:])
        else:
            continue
        set_tensor(m, name, torch.zeros(size, dtype=t.dtype, device=t.device))
    m.in_channels, m.out_channels, m.groups = shape["in_channels"], out, groups
    return m


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
slice_channels = deprecated_alias(slice_channels_, "slice_channels")
