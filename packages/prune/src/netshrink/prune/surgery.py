"""Channel surgery: replace convs, linears, BatchNorms (and any module type with a registered
pruner, see ``pruners``) by smaller ones holding the kept slices of their weights, and rebuild
that structure on a fresh model from recorded shapes.

``apply_plan_(model, plan)`` changes ``model`` in place: every planned module is replaced (same
name, same type, new shape), so the model's class, its forward code and its state-dict keys stay
the same; only tensor shapes shrink. A block whose forward splits or slices its channels with
literal sizes gets those sizes rewritten (``forward_edits``: an instance ``forward`` running its
own fx graph). ``channel_structure`` records the new shapes, and ``apply_structure_`` recreates
them on a freshly built model before a checkpoint's weights load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netshrink.core import deprecated_alias
from netshrink.prune.forward_edits import (
    apply_forward_edits_,
    edits_from_structure,
    forward_structure,
    is_forward_entry,
)
from netshrink.prune.planning import ChannelPlan, ModulePlan
from netshrink.prune.pruners import find_pruner, get_pruner
from netshrink.prune.slicing import set_tensor


def apply_plan_(model: nn.Module, plan: ChannelPlan) -> nn.Module:
    """Replace every module named in ``plan`` by its pruned version (in place)."""
    for name, mp in plan.modules.items():
        old = model.get_submodule(name)
        _replace(model, name, _pruned(old, mp, name))
    for name, (dim, keep) in plan.tensors.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        t = getattr(owner, attr)
        index = torch.tensor(list(keep), dtype=torch.long, device=t.device)
        set_tensor(owner, attr, t.detach().index_select(dim, index).clone())
    apply_forward_edits_(model, list(plan.forward_edits))
    return model


def tensor_structure(model: nn.Module, plan: ChannelPlan) -> dict[str, dict[str, int]]:
    """The cut stored tensors of ``plan`` as structure entries (``{"tensor_dim": d,
    "tensor_size": n}``) and its rewritten splits (``forward_edits.forward_structure``),
    which ``apply_structure_`` recreates."""
    out: dict[str, dict[str, int]] = {}
    for name, (dim, keep) in plan.tensors.items():
        out[name] = {"tensor_dim": dim, "tensor_size": len(keep)}
    out.update(forward_structure(list(plan.forward_edits)))
    return out


def channel_structure(model: nn.Module, names: list[str] | None = None
                      ) -> dict[str, dict[str, int]]:
    """The shape-defining numbers of the named (default: all) modules with a registered
    pruner that own tensors (convs, linears, BatchNorms, user-registered layers)."""
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if names is not None and name not in names:
            continue
        shape = _shape_of(m)
        if shape is not None:
            out[name] = shape
    return out


def _shape_of(m: nn.Module) -> dict[str, int] | None:
    pruner = find_pruner(type(m))
    if pruner is None:
        return None
    try:
        return pruner.shape_of(m)
    except TypeError:  # a registered base class's module without tensors of its own
        return None


def apply_structure_(model: nn.Module, structure: dict[str, dict[str, int]]) -> nn.Module:
    """Give the named modules the recorded shapes (fresh weights, to be loaded next)."""
    for name, shape in structure.items():
        if is_forward_entry(name):
            continue
        if set(shape) == {"tensor_dim", "tensor_size"}:
            _resize_tensor(model, name, shape["tensor_dim"], shape["tensor_size"])
            continue
        try:
            old = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"recorded pruned module {name!r} does not exist in "
                             f"{type(model).__name__}") from err
        current = _shape_of(old)
        if current is None or set(current) != set(shape):
            raise ValueError(f"recorded shape {shape} does not fit module {name!r} "
                             f"({type(old).__name__})")
        _replace(model, name, get_pruner(old, name).resized(old, dict(shape)))
    apply_forward_edits_(model, edits_from_structure(structure))
    return model


def _resize_tensor(model: nn.Module, name: str, dim: int, size: int) -> None:
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
        t = getattr(owner, attr)
    except AttributeError as err:
        raise ValueError(f"recorded pruned tensor {name!r} does not exist in "
                         f"{type(model).__name__}") from err
    if not isinstance(t, torch.Tensor) or not 0 <= dim < t.ndim:
        raise ValueError(f"recorded pruned tensor {name!r} has no dimension {dim}")
    shape = list(t.shape)
    shape[dim] = size
    set_tensor(owner, attr, torch.zeros(shape, dtype=t.dtype, device=t.device))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def _pruned(old: nn.Module, mp: ModulePlan, name: str = "") -> nn.Module:
    """``old`` with the plan's channels kept, through its type's registered pruner: a layer
    that passes channels through (BatchNorm, depthwise conv, per-channel layers) has one
    index set, cut by ``prune_out``; a producer has its inputs cut, then its outputs."""
    pruner = get_pruner(old, name)
    new = old
    if pruner.passes_channels(old):
        idx = mp.out_idx if mp.out_idx is not None else mp.in_idx
        if idx is not None:
            new = pruner.prune_out(new, _index(idx, new))
        return new
    if mp.groups != getattr(old, "groups", mp.groups):
        return _without_groups(old, mp, pruner)
    if mp.in_idx is not None:
        new = pruner.prune_in(new, _index(mp.in_idx, new))
    if mp.out_idx is not None:
        new = pruner.prune_out(new, _index(mp.out_idx, new))
    return new


@torch.no_grad()
def _without_groups(old: nn.Module, mp: ModulePlan, pruner: Any) -> nn.Module:
    """A grouped conv that lost whole groups (``mode="normal"``): its kept filters, each with
    the same inputs at the same local positions, and fewer groups."""
    out_idx = _index(mp.out_idx, old)
    weight = old.weight[out_idx].clone()
    bias = None if getattr(old, "bias", None) is None else old.bias[out_idx].clone()
    new = pruner.resized(old, {"in_channels": len(mp.in_idx), "out_channels": len(out_idx),
                               "groups": mp.groups})
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new


def _index(idx: tuple[int, ...], like: nn.Module) -> torch.Tensor:
    device = next(iter(like.parameters()), torch.empty(0)).device
    return torch.tensor(list(idx), dtype=torch.long, device=device)


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
apply_plan = deprecated_alias(apply_plan_, "apply_plan")
apply_structure = deprecated_alias(apply_structure_, "apply_structure")
