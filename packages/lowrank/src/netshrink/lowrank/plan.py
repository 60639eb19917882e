"""Whole-model low rank: find the candidate layers, choose their ranks, replace them.

``plan_low_rank`` runs one forward pass of a zero input (hooks record each layer's input and
output shapes, for the MAC counts of ``ranks``), computes one SVD per candidate and picks the
ranks; ``apply_ranks`` swaps the chosen layers for their factorisations (in place);
``low_rank`` does both on a copy. Candidates are modules whose type is exactly ``nn.Linear`` or
``nn.Conv2d`` (subclasses such as quantized layers have their own forward and are left alone).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from netshrink.core import count_macs
from netshrink.lowrank.config import LowRankConfig, Ranks
from netshrink.lowrank.decompose import (
    Rank,
    build_factorised,
    factorise,
    layer_svd,
    max_rank,
    tucker_hosvd,
)
from netshrink.lowrank.ranks import AnyCandidate, Candidate, TuckerCandidate, search_ranks

GROUPED_NOTE = "grouped and depthwise convolutions are left alone"


@dataclasses.dataclass
class LowRankPlan:
    """What ``plan_low_rank`` decided: ``ranks`` (name, scheme, rank) of the layers to
    factorise, ``left_alone`` (name -> why), the model's MACs before and predicted after, and
    the candidates (with their SVDs, reused by ``apply_ranks``)."""

    ranks: Ranks
    left_alone: dict[str, str]
    macs_before: int
    macs_after: int
    candidates: dict[str, AnyCandidate]


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


def _scheme(layer: nn.Module, method: str) -> str | None:
    """The scheme ``method`` uses for ``layer``, or None when it is left alone."""
    if type(layer) is nn.Linear:
        return "svd"
    if layer.groups != 1:
        return None
    kh, kw = layer.kernel_size
    if (kh, kw) == (1, 1):
        return "channel"
    if method == "svd":
        return None
    if method == "tucker2":
        return "tucker2"
    return "spatial" if method == "spatial" and kh > 1 and kw > 1 else "channel"


def _shapes(model: nn.Module, names: Iterable[str], example: torch.Tensor
            ) -> dict[str, list[tuple[torch.Size, torch.Size]]]:
    """Input and output shapes of every call of the named modules in one forward pass."""
    seen: dict[str, list[tuple[torch.Size, torch.Size]]] = {n: [] for n in names}
    hooks = []
    for name in seen:
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            seen[name].append((args[0].shape, out.shape))
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _macs(layer: nn.Module, scheme: str, calls: list[tuple[torch.Size, torch.Size]]
          ) -> tuple[int, int]:
    """(MACs as it is, MACs per unit of rank once factorised), summed over the calls."""
    macs = per_rank = 0
    for in_shape, out_shape in calls:
        if scheme == "svd":
            rows = in_shape.numel() // layer.in_features
            macs += rows * layer.in_features * layer.out_features
            per_rank += rows * (layer.in_features + layer.out_features)
            continue
        n, c, kh, kw = layer.weight.shape
        b, ho, wo = out_shape[0], out_shape[-2], out_shape[-1]
        macs += b * ho * wo * n * c * kh * kw
        if scheme == "channel":
            per_rank += b * ho * wo * (c * kh * kw + n)
        else:
            per_rank += b * ho * (in_shape[-1] * c * kh + wo * n * kw)
    return macs, per_rank


def _tucker_macs(layer: nn.Conv2d, calls: list[tuple[torch.Size, torch.Size]]
                 ) -> tuple[int, int, int, int]:
    """(MACs as it is, per unit of r_in, per unit of r_in*r_out, per unit of r_out) of a
    Tucker-2 factorisation, summed over the calls: the first 1x1 runs at the input's size."""
    macs = per_in = per_core = per_out = 0
    n, c, kh, kw = layer.weight.shape
    for in_shape, out_shape in calls:
        b, ho, wo = out_shape[0], out_shape[-2], out_shape[-1]
        macs += b * ho * wo * n * c * kh * kw
        per_in += b * in_shape[-2] * in_shape[-1] * c
        per_core += b * ho * wo * kh * kw
        per_out += b * ho * wo * n
    return macs, per_in, per_core, per_out


def _candidate(name: str, layer: nn.Module, scheme: str,
               calls: list[tuple[torch.Size, torch.Size]], min_rank: int
               ) -> AnyCandidate | None:
    """The layer's candidate (with its SVD or HOSVD), or None when no rank of at least
    ``min_rank`` makes it cheaper (checked before the decomposition is computed)."""
    if scheme == "tucker2":
        macs, per_in, per_core, per_out = _tucker_macs(layer, calls)
        full_in, full_out = max_rank(layer, scheme)
        floor = (min(min_rank, full_in), min(min_rank, full_out))
        if floor[0] * per_in + floor[0] * floor[1] * per_core + floor[1] * per_out >= macs:
            return None
        return TuckerCandidate(name, scheme, tucker_hosvd(layer), macs, per_in, per_core,
                               per_out)
    macs, per_rank = _macs(layer, scheme, calls)
    if min(min_rank, max_rank(layer, scheme)) * per_rank >= macs:
        return None
    return Candidate(name, scheme, layer_svd(layer, scheme), macs, per_rank)


def example_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros of ``shape`` on the model's device, in its parameters' dtype."""
    ref = next(iter(model.parameters()), torch.empty(0))
    return torch.zeros(shape, dtype=ref.dtype, device=ref.device)


def plan_low_rank(model: nn.Module, config: LowRankConfig,
                  example: torch.Tensor | None = None) -> LowRankPlan:
    """Choose the layers to factorise and their ranks (the model is not changed)."""
    example = example_input(model, config.input_shape) if example is None else example
    layers = _layers(model)
    left: dict[str, str] = {}
    edge: dict[str, str] = {}
    if layers and config.skip_first:
        edge[layers[0][0]] = "first layer (skip_first)"
    if layers and config.skip_last:
        edge.setdefault(layers[-1][0], "last layer (skip_last)")
    chosen: list[tuple[str, nn.Module, str]] = []
    for name, layer in layers:
        scheme = _scheme(layer, config.method)
        if name in edge:
            left[name] = edge[name]
        elif any(fnmatch.fnmatchcase(name, p) for p in config.skip):
            left[name] = "in skip"
        elif scheme is None:
            left[name] = ("grouped or depthwise conv" if layer.groups != 1
                          else f"k x k conv: method {config.method!r} factorises only linear "
                               "layers and 1x1 convs")
        else:
            chosen.append((name, layer, scheme))
    shapes = _shapes(model, [n for n, _, _ in chosen], example)
    macs_before = count_macs(model, example)
    candidates: dict[str, AnyCandidate] = {}
    for name, layer, scheme in chosen:
        if not shapes[name]:
            left[name] = f"not called by the forward pass on input_shape {config.input_shape}"
            continue
        candidate = _candidate(name, layer, scheme, shapes[name], config.min_rank)
        if candidate is None:
            left[name] = f"no rank >= min_rank={config.min_rank} reduces its MACs"
            continue
        candidates[name] = candidate
    fixed = macs_before - sum(c.macs for c in candidates.values())
    if config.macs_target is not None:
        chosen_ranks = search_ranks(list(candidates.values()), fixed,
                                    config.macs_target * macs_before, config.min_rank)
    else:
        chosen_ranks = {n: c.rank_at(config.energy, config.min_rank)
                        for n, c in candidates.items()}
    ranks: list[tuple[str, str, Rank]] = []
    for name, c in candidates.items():
        r = chosen_ranks[name]
        if c.factorised(r):
            ranks.append((name, c.scheme, r))
        else:
            left[name] = f"rank {r} (of {c.max_rank}) would not reduce its MACs"
    after = fixed + sum(c.cost(chosen_ranks[n]) for n, c in candidates.items())
    order = {name: i for i, (name, _) in enumerate(layers)}
    left = dict(sorted(left.items(), key=lambda kv: order[kv[0]]))
    return LowRankPlan(tuple(ranks), left, macs_before, after, candidates)


def apply_ranks(model: nn.Module, ranks: Ranks,
                candidates: Mapping[str, AnyCandidate] | None = None, *,
                weights: bool = True) -> nn.Module:
    """Replace each named layer by its factorisation at the given rank, in place.

    ``weights=False`` builds the structure only (freshly initialised factors: for ``rebuild``,
    before a checkpoint's weights are loaded; works on the meta device).
    """
    for name, scheme, rank in ranks:
        try:
            layer = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"ranks names module {name!r}, which the model does not have"
                             ) from err
        try:
            if not weights:
                new = build_factorised(layer, scheme, rank)
            else:
                svd = candidates[name].svd if candidates and name in candidates else None
                new = factorise(layer, scheme, rank, svd)
        except ValueError as err:  # name the layer: the record may come from a file
            raise ValueError(f"layer {name!r}: {err}") from err
        model.set_submodule(name, new)
    return model


def low_rank(model: nn.Module, config: LowRankConfig,
             example: torch.Tensor | None = None) -> nn.Module:
    """A factorised copy of ``model`` (the original is left as it is)."""
    plan = plan_low_rank(model, config, example)
    return apply_ranks(copy.deepcopy(model), plan.ranks, plan.candidates)
