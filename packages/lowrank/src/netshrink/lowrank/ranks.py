"""Choosing ranks: by retained energy per layer, or for a MACs target of the whole model.

Every candidate layer carries its squared singular values and two MAC counts measured from
the shapes one forward pass sees (per call, summed over calls): ``macs`` as the layer is, and
``macs_per_rank``, what one unit of rank costs once factorised. They are exactly what
``netshrink.core.count_macs`` counts (convolutions and matrix products; biases are not MACs):

* linear, ``P`` rows of ``in`` features: ``P*in*out`` -> ``r * P*(in + out)``;
* channel, output ``Ho x Wo``: ``Ho*Wo*out*in*kh*kw`` -> ``r * Ho*Wo*(in*kh*kw + out)``;
* spatial, input width ``W``: the vertical factor runs at ``Ho x W`` (no width stride yet),
  ``r * (Ho*W*in*kh + Ho*Wo*out*kw)``.

A layer is factorised only when ``r * macs_per_rank < macs``; otherwise it is kept as it is.

``energy_rank``: the smallest rank whose kept share of ``sum(s**2)`` is at least ``e``.

``search_ranks`` (MACs target ``t``; budget ``t * total``, the layers not factorised counted
at their own MACs):

1. *Global energy threshold, by bisection.* Each layer's rank at threshold ``e`` is its
   ``energy_rank(e)`` (at least ``min_rank``); the model's MACs are non-decreasing in ``e``, so
   a binary search over the sorted set of every layer's cumulative energy shares (the only
   values where any rank changes) finds the largest threshold within the budget: O(log(sum
   of ranks)) evaluations of O(layers * log rank) each.
2. *Greedy top-up.* The slack left is spent one rank at a time, always on the step with the
   most energy regained per MAC that still fits (a step that would make a layer no cheaper
   than the original restores the original layer and all its energy); it stops when no step
   fits. At most ``sum of ranks`` steps of O(layers) each.

One SVD per layer (computed once, shared with the factorisation) dominates the cost.
"""

from __future__ import annotations

import dataclasses
import math

import torch

Svd = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class Candidate:
    """A layer that may be factorised: its scheme, SVD and MAC counts (see the module doc)."""

    name: str
    scheme: str
    svd: Svd
    macs: int
    macs_per_rank: int

    @property
    def max_rank(self) -> int:
        return int(self.svd[1].numel())

    @property
    def shares(self) -> torch.Tensor:
        """Cumulative energy share kept at rank 1, 2, ..., max_rank (float64, last = 1)."""
        s2 = self.svd[1].to(torch.float64).square()
        total = float(s2.sum())
        if total <= 0.0:  # an all-zero weight: any rank keeps everything
            return torch.ones_like(s2)
        return s2.cumsum(0) / total

    def cost(self, rank: int) -> int:
        """MACs of the layer at ``rank``: factorised if that is cheaper, else as it is."""
        return min(rank * self.macs_per_rank, self.macs)

    def factorised(self, rank: int) -> bool:
        return rank * self.macs_per_rank < self.macs


def energy_rank(shares: torch.Tensor, energy: float, min_rank: int = 1) -> int:
    """Smallest rank ``r >= min_rank`` whose cumulative energy share ``shares[r-1]`` is at least
    ``energy``, capped at the full rank."""
    full = int(shares.numel())
    r = int(torch.searchsorted(shares, torch.tensor([energy], dtype=shares.dtype)).item()) + 1
    return max(min(r, full), min(min_rank, full))


def search_ranks(candidates: list[Candidate], fixed_macs: int, target_macs: float,
                 min_rank: int) -> dict[str, int]:
    """Ranks (name -> rank) with total MACs ``fixed_macs + sum(cost)`` at most ``target_macs``
    and as close to it as the two passes allow. ValueError when even ``min_rank`` everywhere
    does not fit."""
    shares = [c.shares for c in candidates]

    def ranks_at(e: float) -> list[int]:
        return [energy_rank(s, e, min_rank) for s in shares]

    def total(ranks: list[int]) -> int:
        return fixed_macs + sum(c.cost(r) for c, r in zip(candidates, ranks, strict=True))

    floor = ranks_at(0.0)
    if total(floor) > target_macs:
        raise ValueError(
            f"macs_target cannot be met: the least the factorisable layers can cost (rank "
            f"{min_rank}, min_rank) leaves {total(floor)} MACs, above the target "
            f"{math.floor(target_macs)}; lower min_rank or skip fewer layers")
    levels = sorted({float(v) for s in shares for v in s.tolist()})
    lo, hi, best = 0, len(levels) - 1, floor
    while lo <= hi:  # largest threshold within the budget
        mid = (lo + hi) // 2
        ranks = ranks_at(levels[mid])
        if total(ranks) <= target_macs:
            best, lo = ranks, mid + 1
        else:
            hi = mid - 1
    final = _top_up(candidates, best, total(best), target_macs)
    return {c.name: r for c, r in zip(candidates, final, strict=True)}


def _top_up(candidates: list[Candidate], ranks: list[int], macs: int,
            target_macs: float) -> list[int]:
    """Spend the slack greedily: the affordable one-rank step with the most energy per MAC."""
    ranks = list(ranks)
    s2 = [c.svd[1].to(torch.float64).square() for c in candidates]
    totals = [max(float(v.sum()), 1e-300) for v in s2]
    while True:
        slack = target_macs - macs
        best, best_ratio, best_delta = -1, -1.0, 0
        for i, c in enumerate(candidates):
            r = ranks[i]
            if r >= c.max_rank or not c.factorised(r):
                continue  # kept as it is, or already full: nothing to gain
            delta = c.cost(r + 1) - c.cost(r)
            if delta > slack:
                continue
            gain = (float(s2[i][r:].sum()) if not c.factorised(r + 1)
                    else float(s2[i][r])) / totals[i]
            ratio = math.inf if delta <= 0 else gain / delta
            if ratio > best_ratio:
                best, best_ratio, best_delta = i, ratio, delta
        if best < 0:
            return ranks
        ranks[best] += 1
        macs += best_delta
