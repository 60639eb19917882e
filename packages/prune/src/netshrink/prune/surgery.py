"""Channel surgery: replace convs, linears and BatchNorms by smaller ones holding the kept
slices of their weights, and rebuild that structure on a fresh model from recorded shapes.

``apply_plan(model, plan)`` changes ``model`` in place: every planned module is replaced (same
name, same type, new shape), so the model's class, its forward code and its state-dict keys stay
the same; only tensor shapes shrink. ``channel_structure`` records the new shapes, and
``apply_structure`` recreates them on a freshly built model before a checkpoint's weights load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netshrink.prune import _labels as L
from netshrink.prune.planning import ChannelPlan, ModulePlan


def apply_plan(model: nn.Module, plan: ChannelPlan) -> nn.Module:
    """Replace every module named in ``plan`` by its pruned version (in place)."""
    for name, mp in plan.modules.items():
        old = model.get_submodule(name)
        _replace(model, name, _pruned(old, mp))
    return model


def channel_structure(model: nn.Module, names: list[str] | None = None
                      ) -> dict[str, dict[str, int]]:
    """The shape-defining numbers of the named (default: all) convs, linears and BatchNorms."""
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        shape = _shape_of(m)
        if shape is not None and (names is None or name in names):
            out[name] = shape
    return out


def _shape_of(m: nn.Module) -> dict[str, int] | None:
    if isinstance(m, L.CONV_TYPES):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels,
                "groups": m.groups}
    if isinstance(m, L.LINEAR_TYPES):
        return {"in_features": m.in_features, "out_features": m.out_features}
    if isinstance(m, L.BN_TYPES):
        return {"num_features": m.num_features}
    return None


def apply_structure(model: nn.Module, structure: dict[str, dict[str, int]]) -> nn.Module:
    """Give the named modules the recorded shapes (fresh weights, to be loaded next)."""
    for name, shape in structure.items():
        try:
            old = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"recorded pruned module {name!r} does not exist in "
                             f"{type(model).__name__}") from err
        current = _shape_of(old)
        if current is None or set(current) != set(shape):
            raise ValueError(f"recorded shape {shape} does not fit module {name!r} "
                             f"({type(old).__name__})")
        _replace(model, name, _like(old, **shape))
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _like(old: nn.Module, **shape: int) -> nn.Module:
    """A module of ``old``'s type and settings with the given shape numbers."""
    ref = next(iter(old.parameters()), None)
    if ref is None:
        ref = next(iter(old.buffers()), torch.empty(0))
    factory: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype}
    if isinstance(old, L.CONV_TYPES):
        new = type(old)(shape["in_channels"], shape["out_channels"], old.kernel_size,
                        stride=old.stride, padding=old.padding, dilation=old.dilation,
                        groups=shape["groups"], bias=old.bias is not None,
                        padding_mode=old.padding_mode, **factory)
    elif isinstance(old, L.LINEAR_TYPES):
        new = type(old)(shape["in_features"], shape["out_features"], bias=old.bias is not None,
                        **factory)
    elif isinstance(old, L.BN_TYPES):
        new = type(old)(shape["num_features"], eps=old.eps, momentum=old.momentum,
                        affine=old.affine, track_running_stats=old.track_running_stats,
                        **factory)
    else:
        raise TypeError(f"cannot reshape a {type(old).__name__}")
    new.train(old.training)
    for pname, p in new.named_parameters():
        p.requires_grad_(getattr(old, pname).requires_grad)
    return new


@torch.no_grad()
def _pruned(old: nn.Module, mp: ModulePlan) -> nn.Module:
    if isinstance(old, L.BN_TYPES):
        idx = _index(mp.out_idx, old.num_features, old)
        new = _like(old, num_features=len(idx))
        for tname in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(old, tname)
            if src is not None:
                getattr(new, tname).copy_(src[idx])
        if old.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)
        return new
    if isinstance(old, L.LINEAR_TYPES):
        i = _index(mp.in_idx, old.in_features, old)
        o = _index(mp.out_idx, old.out_features, old)
        new = _like(old, in_features=len(i), out_features=len(o))
        new.weight.copy_(old.weight[o][:, i])
        if old.bias is not None:
            new.bias.copy_(old.bias[o])
        return new
    i = _index(mp.in_idx, old.in_channels, old)
    o = _index(mp.out_idx, old.out_channels, old)
    new = _like(old, in_channels=len(i), out_channels=len(o), groups=mp.groups)
    if old.groups == 1:
        weight = old.weight[o][:, i]
    elif old.groups == old.in_channels == old.out_channels:  # depthwise: in i -> out i
        weight = old.weight[o]
    else:  # grouped: each output keeps the inputs of its own group, at local positions
        g = old.groups
        b_in, b_out, nb_in = old.in_channels // g, old.out_channels // g, len(i) // g
        rows = []
        for oi in o.tolist():
            j = oi // b_out
            local = i[j * nb_in:(j + 1) * nb_in] - j * b_in
            rows.append(old.weight[oi][local])
        weight = torch.stack(rows)
    new.weight.copy_(weight)
    if old.bias is not None:
        new.bias.copy_(old.bias[o])
    return new


def _index(idx: tuple[int, ...] | None, n: int, like: nn.Module) -> torch.Tensor:
    device = next(iter(like.parameters()), torch.empty(0)).device
    values = range(n) if idx is None else idx
    return torch.tensor(list(values), dtype=torch.long, device=device)
