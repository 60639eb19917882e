"""Unstructured magnitude pruning: masks that stay applied, sparse storage, the AGP schedule.

``magnitude_prune_(model, amount)`` zeroes the ``amount`` fraction of smallest-magnitude conv and
linear weights (globally or per layer) and keeps them zero: each pruned layer holds a boolean
``weight_mask`` buffer (not saved: a masked weight is exactly zero, so the mask is re-derived
from the weights after a checkpoint loads) and a forward pre-hook that re-applies it, so the
masked weights never contribute even while an optimizer (momentum, weight decay) moves them;
the ``prune.magnitude`` Stage also re-applies masks after every optimizer step.

Each pruned layer declares its packed size for ``ModelStats`` (``packed_bits``): a sparse
layout of a 1-bit-per-element bitmap plus the nonzero values at their width, i.e.
``1 + bits * density`` bits per element (never more than dense). ``pack_sparse`` is that layout.

The gradual schedule is AGP (Zhu & Gupta 2017): sparsity
``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3`` between steps ``t0`` and ``t1``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from netshrink.core import (
    PACKED_BITS_ATTR,
    Stage,
    check_choice,
    check_float,
    check_int,
    deprecated_alias,
    register_stage,
)

MASK_ATTR = "weight_mask"
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SCOPES: tuple[str, ...] = ("global", "per_layer")
SCHEDULES: tuple[str, ...] = ("oneshot", "agp")


# -- masks ----------------------------------------------------------------------------------


def prunable_layers(model: nn.Module, ignored: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Conv and linear layers whose weights magnitude pruning may mask."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES)
            and not any(fnmatch.fnmatchcase(name, p) for p in ignored)}


class SparseBits(Mapping[str, float]):
    """A module's ``packed_bits``: the weight at ``1 + bits * density`` bits per element
    (bitmap + nonzero values), measured from the weight each time it is read."""

    def __init__(self, module: nn.Module, base: Mapping[str, float] | None = None) -> None:
        self.module = module
        self.base = dict(base or {})

    def _weight_bits(self) -> float:
        w = self.module.weight
        dense = float(self.base.get("weight", w.element_size() * 8))
        density = int(torch.count_nonzero(w.detach())) / max(w.numel(), 1)
        return min(dense, 1.0 + dense * density)

    def __getitem__(self, key: str) -> float:
        if key == "weight":
            return self._weight_bits()
        return self.base[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**self.base, "weight": 0.0})

    def __len__(self) -> int:
        return len({**self.base, "weight": 0.0})


def _mask_hook(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: masked weights are zero whenever the layer runs."""
    _apply_mask(module)


@torch.no_grad()
def _apply_mask(module: nn.Module) -> None:
    mask = getattr(module, MASK_ATTR)
    if mask is None:  # rebuilt from a checkpoint: the saved zeros are the mask
        mask = module.weight != 0
        setattr(module, MASK_ATTR, mask)
    module.weight.mul_(mask)


def _is_masked(module: nn.Module) -> bool:
    return bool(getattr(module, "_netshrink_masked", False))


def attach_mask(module: nn.Module, mask: torch.Tensor | None = None) -> None:
    """Give ``module`` a (non-persistent) weight mask, its hook and sparse packed bits.
    ``mask=None`` derives the mask from the weight's zeros at the next use."""
    if _is_masked(module):
        if mask is not None:
            setattr(module, MASK_ATTR, mask)
        return
    module.register_buffer(MASK_ATTR, mask, persistent=False)
    module.register_forward_pre_hook(_mask_hook)
    module._netshrink_masked = True
    base = getattr(module, PACKED_BITS_ATTR, None)
    if isinstance(base, SparseBits):
        base = base.base
    setattr(module, PACKED_BITS_ATTR, SparseBits(module, base))


def apply_masks_(model: nn.Module) -> None:
    """Re-zero every masked weight (call after optimizer steps)."""
    for m in model.modules():
        if _is_masked(m):
            _apply_mask(m)


@torch.no_grad()
def compute_masks(layers: Mapping[str, nn.Module], sparsity: float,
                  scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks keeping all but the ``sparsity`` fraction of smallest |weights| (exact counts).
    Weights already masked count as smallest, so masks only ever grow (AGP needs that)."""
    scores = {}
    for name, m in layers.items():
        s = m.weight.detach().abs().flatten().float()
        mask = getattr(m, MASK_ATTR, None)
        if mask is None and _is_masked(m):
            mask = m.weight != 0
        if mask is not None:
            s = torch.where(mask.flatten(), s, torch.full_like(s, -1.0))
        scores[name] = s
    if scope == "global":
        groups = {"": torch.cat(list(scores.values()))} if scores else {}
    else:
        groups = scores
    keeps = {}
    for key, flat in groups.items():
        k = round(sparsity * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:k]] = False
        keeps[key] = keep
    out, offset = {}, 0
    for name, m in layers.items():
        n = m.weight.numel()
        keep = keeps[""][offset:offset + n] if scope == "global" else keeps[name]
        out[name] = keep.reshape(m.weight.shape)
        offset += n
    return out


def magnitude_prune_(model: nn.Module, amount: float, *, scope: str = "global",
                    ignored_layers: tuple[str, ...] = ()) -> nn.Module:
    """Mask the ``amount`` fraction of smallest conv/linear weights, in place (see module doc)."""
    check_float("amount", amount, min_value=0.0, max_value=1.0)
    check_choice("scope", scope, SCOPES)
    layers = prunable_layers(model, tuple(ignored_layers))
    for name, mask in compute_masks(layers, amount, scope).items():
        attach_mask(layers[name], mask)
    apply_masks_(model)
    return model


def weight_sparsity(model: nn.Module, ignored_layers: tuple[str, ...] = ()) -> float:
    """Fraction of zero weights over the conv and linear layers."""
    layers = prunable_layers(model, ignored_layers).values()
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(m.weight.numel() - int(torch.count_nonzero(m.weight)) for m in layers)
    return zeros / max(total, 1)


# -- sparse storage -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SparsePack:
    """A tensor as a bitmap of nonzeros (uint8, 8 elements per byte) plus the nonzero values."""

    shape: tuple[int, ...]
    bitmap: torch.Tensor
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.bitmap.numel() + self.values.numel() * self.values.element_size()


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_sparse(t: torch.Tensor) -> SparsePack:
    flat = t.detach().flatten()
    nonzero = flat != 0
    padded = torch.zeros(math.ceil(flat.numel() / 8) * 8, dtype=torch.uint8)
    padded[:flat.numel()] = nonzero.to(torch.uint8)
    bitmap = (padded.reshape(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)
    return SparsePack(tuple(t.shape), bitmap, flat[nonzero].clone())


def unpack_sparse(pack: SparsePack) -> torch.Tensor:
    n = math.prod(pack.shape)
    bits = (pack.bitmap.unsqueeze(1) & _BIT_WEIGHTS).ne(0).flatten()[:n]
    out = torch.zeros(n, dtype=pack.values.dtype)
    out[bits] = pack.values
    return out.reshape(pack.shape)


# -- the gradual schedule and the Stage -----------------------------------------------------


def agp_sparsity(step: int, total_steps: int, *, final: float, initial: float = 0.0,
                 start: float = 0.0, end: float = 1.0) -> float:
    """AGP's cubic sparsity after ``step`` completed steps of ``total_steps``; the ramp runs
    from ``start * total_steps`` to ``end * total_steps``."""
    t0 = round(start * total_steps)
    t1 = max(t0 + 1, round(end * total_steps))
    if step <= t0:
        return initial
    if step >= t1:
        return final
    return final + (initial - final) * (1.0 - (step - t0) / (t1 - t0)) ** 3


@dataclasses.dataclass(frozen=True)
class MagnitudePruneConfig:
    """``amount``: target sparsity in [0, 1]; ``scope``: global or per_layer; ``schedule``:
    ``oneshot`` (prune in ``apply``) or ``agp`` (from ``initial`` to ``amount`` between the
    ``start`` and ``end`` fractions of the training steps, updating masks every ``every``
    steps); ``ignored_layers``: module names or fnmatch patterns left dense."""

    amount: float = 0.5
    scope: str = "global"
    schedule: str = "oneshot"
    initial: float = 0.0
    start: float = 0.0
    end: float = 0.8
    every: int = 1
    ignored_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_float("amount", self.amount, min_value=0.0, max_value=1.0)
        check_choice("scope", self.scope, SCOPES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_float("initial", self.initial, min_value=0.0, max_value=self.amount)
        check_float("start", self.start, min_value=0.0, max_value=1.0)
        check_float("end", self.end, min_value=self.start, max_value=1.0)
        check_int("every", self.every, min_value=1)
        layers = self.ignored_layers
        if isinstance(layers, str) or not all(isinstance(x, str) for x in layers):
            raise ValueError(f"ignored_layers={layers!r} must be a list of module names")
        object.__setattr__(self, "ignored_layers", tuple(layers))


@register_stage("prune.magnitude")
class MagnitudePruneStage(Stage):
    """Unstructured pruning in a recipe: one shot, or gradual (AGP) during training."""

    config_class = MagnitudePruneConfig

    def __init__(self, config: MagnitudePruneConfig) -> None:
        super().__init__(config)
        self.sparsity = 0.0  # the schedule's current target

    def _prune_to(self, model: nn.Module, sparsity: float) -> None:
        layers = prunable_layers(model, self.config.ignored_layers)
        for name, mask in compute_masks(layers, sparsity, self.config.scope).items():
            attach_mask(layers[name], mask)
        apply_masks_(model)
        self.sparsity = sparsity

    def apply(self, model: nn.Module) -> nn.Module:
        cfg = self.config
        self._prune_to(model, cfg.amount if cfg.schedule == "oneshot" else cfg.initial)
        return model

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Attach masks to be derived from the loaded weights' zeros (no pruning here)."""
        for m in prunable_layers(model, self.config.ignored_layers).values():
            attach_mask(m, None)
        return model

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        cfg = self.config
        if cfg.schedule == "agp":
            done = step + 1
            t0 = round(cfg.start * total_steps)
            t1 = max(t0 + 1, round(cfg.end * total_steps))
            if t0 < done <= t1 and ((done - t0) % cfg.every == 0 or done == t1):
                self._prune_to(model, agp_sparsity(done, total_steps, final=cfg.amount,
                                                   initial=cfg.initial, start=cfg.start,
                                                   end=cfg.end))
                return
        apply_masks_(model)


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
apply_masks = deprecated_alias(apply_masks_, "apply_masks")
magnitude_prune = deprecated_alias(magnitude_prune_, "magnitude_prune")
