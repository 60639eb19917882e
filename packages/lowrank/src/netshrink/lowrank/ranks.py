"""Choosing ranks: by retained energy per layer, or for a MACs target of the whole model.

Every candidate layer carries its squared singular values and two MAC counts measured from
the shapes one forward pass sees (per call, summed over calls): ``macs`` as the layer is, and
``macs_per_rank``, what one unit of rank costs once factorised. They are exactly what
``netshrink.core.count_macs`` counts (convolutions and matrix products; biases are not MACs):

* linear, ``P`` rows of ``in`` features: ``P*in*out`` -> ``r * P*(in + out)``;
* channel, output ``Ho x Wo``: ``Ho*Wo*out*in*kh*kw`` -> ``r * Ho*Wo*(in*kh*kw + out)``;
* spatial, input width ``W``: the vertical factor runs at ``Ho x W`` (no width stride yet),
  ``r * (Ho*W*in*kh + Ho*Wo*out*kw)``;
* tucker2, input ``H x W``, ranks ``(r_in, r_out)`` (``TuckerCandidate``, not linear in the
  ranks): ``r_in * H*W*in + r_in*r_out * Ho*Wo*kh*kw + r_out * Ho*Wo*out``.

A layer is factorised only when ``r * macs_per_rank < macs``; otherwise it is kept as it is.

``energy_rank``: the smallest rank whose kept share of ``sum(s**2)`` is at least ``e``.

``search_ranks`` (MACs target ``t``; budget ``t * total``, the layers not factorised counted
at their own MACs):

1. *Global energy threshold, by bisection.* Each layer's rank at threshold ``e`` is its
   ``energy_rank(e)`` (at least ``min_rank``; a Tucker-2 layer's pair is each mode's
   ``energy_rank(e)`` of its own singular values); the model's MACs are non-decreasing in ``e``, so
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
import functools
import math

import torch

from netshrink.lowrank.decompose import Rank, Svd


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
        return _shares(self.svd[1])

    def levels(self) -> list[float]:
        """The energy thresholds at which this layer's rank changes."""
        return self.shares.tolist()

    def rank_at(self, energy: float, min_rank: int) -> int:
        """The rank at a global energy threshold."""
        return energy_rank(self.shares, energy, min_rank)

    def cost(self, rank: int) -> int:
        """MACs of the layer at ``rank``: factorised if that is cheaper, else as it is."""
        return min(rank * self.macs_per_rank, self.macs)

    def factorised(self, rank: int) -> bool:
        return rank * self.macs_per_rank < self.macs

    def steps(self, rank: int) -> list[tuple[int, float]]:
        """One-rank increments from ``rank`` and the share of the energy each regains."""
        if rank >= self.max_rank or not self.factorised(rank):
            return []  # kept as it is, or already full: nothing to gain
        tail = self._tails
        gain = tail[rank] if not self.factorised(rank + 1) else tail[rank] - tail[rank + 1]
        return [(rank + 1, gain)]

    @functools.cached_property
    def _tails(self) -> list[float]:
        """Share of the energy discarded at rank 0, 1, ..., max_rank (computed once)."""
        return _tails(self.svd[1])

    def release(self) -> None:
        """Free the singular vectors once the layer is factorised (keep the values)."""
        self.svd = (self.svd[0].new_empty(0), self.svd[1], self.svd[2].new_empty(0))


@dataclasses.dataclass
class TuckerCandidate:
    """A conv that may be Tucker-2 factorised: ``svd`` is its HOSVD, the SVDs of the input
    (mode-1) and output (mode-0) unfoldings; ranks are pairs ``(r_in, r_out)``. MACs at a
    rank: ``r_in * per_in + r_in * r_out * per_core + r_out * per_out`` (see the module doc)."""

    name: str
    scheme: str
    svd: tuple[Svd, Svd]
    macs: int
    per_in: int
    per_core: int
    per_out: int

    @property
    def max_rank(self) -> tuple[int, int]:
        return int(self.svd[0][1].numel()), int(self.svd[1][1].numel())

    def levels(self) -> list[float]:
        return _shares(self.svd[0][1]).tolist() + _shares(self.svd[1][1]).tolist()

    def rank_at(self, energy: float, min_rank: int) -> tuple[int, int]:
        """Each mode's smallest rank keeping ``energy`` of that mode's singular values."""
        return (energy_rank(_shares(self.svd[0][1]), energy, min_rank),
                energy_rank(_shares(self.svd[1][1]), energy, min_rank))

    def factorised_macs(self, rank: tuple[int, int]) -> int:
        r_in, r_out = rank
        return r_in * self.per_in + r_in * r_out * self.per_core + r_out * self.per_out

    def cost(self, rank: tuple[int, int]) -> int:
        return min(self.factorised_macs(rank), self.macs)

    def factorised(self, rank: tuple[int, int]) -> bool:
        return self.factorised_macs(rank) < self.macs

    def steps(self, rank: tuple[int, int]) -> list[tuple[tuple[int, int], float]]:
        """One step per mode that is not full; a step that is no cheaper than the original
        regains all the discarded energy of both modes (the original comes back)."""
        if not self.factorised(rank):
            return []
        tails = self._tails  # both unfoldings hold all of ||W||^2: shares of the same total
        discarded = tails[0][rank[0]] + tails[1][rank[1]]
        out: list[tuple[tuple[int, int], float]] = []
        for m in (0, 1):
            if rank[m] >= self.max_rank[m]:
                continue
            new = (rank[0] + 1, rank[1]) if m == 0 else (rank[0], rank[1] + 1)
            gain = (tails[m][rank[m]] - tails[m][rank[m] + 1] if self.factorised(new)
                    else discarded)
            out.append((new, gain))
        return out

    @functools.cached_property
    def _tails(self) -> tuple[list[float], list[float]]:
        return _tails(self.svd[0][1]), _tails(self.svd[1][1])

    def release(self) -> None:
        """Free the singular vectors once the layer is factorised (keep the values)."""
        self.svd = tuple((u.new_empty(0), s, vh) for u, s, vh in self.svd)


AnyCandidate = Candidate | TuckerCandidate


def _shares(s: torch.Tensor) -> torch.Tensor:
    """Cumulative energy share kept at rank 1, 2, ... of singular values ``s`` (last = 1)."""
    s2 = s.to(torch.float64).square()
    total = float(s2.sum())
    if total <= 0.0:  # an all-zero weight: any rank keeps everything
        return torch.ones_like(s2)
    return s2.cumsum(0) / total


def _tails(s: torch.Tensor) -> list[float]:
    """Share of ``sum(s**2)`` discarded at rank 0, 1, ..., len(s) (the last is 0)."""
    s2 = s.to(torch.float64).square()
    total = max(float(s2.sum()), 1e-300)
    rev = s2.flip(0).cumsum(0).flip(0) / total
    return [*rev.tolist(), 0.0]


def energy_rank(shares: torch.Tensor, energy: float, min_rank: int = 1) -> int:
    """Smallest rank ``r >= min_rank`` whose cumulative energy share ``shares[r-1]`` is at least
    ``energy``, capped at the full rank."""
    full = int(shares.numel())
    r = int(torch.searchsorted(shares, torch.tensor([energy], dtype=shares.dtype)).item()) + 1
    return max(min(r, full), min(min_rank, full))


def search_ranks(candidates: list[AnyCandidate], fixed_macs: int, target_macs: float,
                 min_rank: int) -> dict[str, Rank]:
    """Ranks (name -> rank) with total MACs ``fixed_macs + sum(cost)`` at most ``target_macs``
    and as close to it as the two passes allow. ValueError when even ``min_rank`` everywhere
    does not fit."""

    def ranks_at(e: float) -> list[Rank]:
        return [c.rank_at(e, min_rank) for c in candidates]

    def total(ranks: list[Rank]) -> int:
        return fixed_macs + sum(c.cost(r) for c, r in zip(candidates, ranks, strict=True))

    floor = ranks_at(0.0)
    if total(floor) > target_macs:
        raise ValueError(
            f"macs_target cannot be met: the least the factorisable layers can cost (rank "
            f"{min_rank}, min_rank) leaves {total(floor)} MACs, above the target "
            f"{math.floor(target_macs)}; lower min_rank or skip fewer layers")
    levels = sorted({v for c in candidates for v in c.levels()})
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


def _top_up(candidates: list[AnyCandidate], ranks: list[Rank], macs: int,
            target_macs: float) -> list[Rank]:
    """Spend the slack greedily: the affordable one-rank step with the most energy per MAC."""
    ranks = list(ranks)
    while True:
        slack = target_macs - macs
        best, best_ratio, best_delta, best_rank = -1, -1.0, 0, None
        for i, c in enumerate(candidates):
            for new, gain in c.steps(ranks[i]):
                delta = c.cost(new) - c.cost(ranks[i])
                if delta > slack:
                    continue
                ratio = math.inf if delta <= 0 else gain / delta
                if ratio > best_ratio:
                    best, best_ratio, best_delta, best_rank = i, ratio, delta, new
        if best < 0:
            return ranks
        ranks[best] = best_rank
        macs += best_delta
