"""Exact multiple-choice knapsack: one option per item, total cost within a budget, least loss.

``solve_mckp(items, budget, granularity)``: ``items`` maps a name to its options, each a
``(cost, loss)`` pair (cost: non-negative integer, e.g. bytes); exactly one option is chosen per
item so that the summed cost is at most ``budget`` and the summed loss is the least possible.

Method: dynamic programming over the cost, in units of ``granularity`` (costs rounded *up* to
whole units, the budget down, so every answer is feasible in true costs). With granularity 1
the answer is exactly optimal; with granularity g it is optimal for the rounded costs (it can
miss a better solution only when that one uses the last < n_items x g of the budget). Time and
memory: items x options x (budget / g) steps (vectorised with torch), and items x (budget / g)
bytes for the choices; ``auto_granularity`` keeps budget / g near 2**20.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

#: Cost units the DP uses by default (budget / granularity), ~1 M: a fraction of a second.
DEFAULT_UNITS = 2**20


def auto_granularity(budget: int, units: int = DEFAULT_UNITS) -> int:
    """The smallest granularity that keeps ``budget`` within ``units`` DP cells."""
    return max(1, math.ceil(budget / units))


def solve_mckp(items: Mapping[str, Sequence[tuple[int, float]]], budget: int,
               granularity: int = 1) -> tuple[dict[str, int], float, int]:
    """(chosen option index per item, summed loss, summed true cost); see the module
    docstring. Raises ValueError when even the cheapest options exceed the budget."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"budget={budget!r} must be an integer >= 0")
    if isinstance(granularity, bool) or not isinstance(granularity, int) or granularity < 1:
        raise ValueError(f"granularity={granularity!r} must be an integer >= 1")
    for name, options in items.items():
        if not options:
            raise ValueError(f"item {name!r} has no options")
        for cost, loss in options:
            if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
                raise ValueError(f"item {name!r}: cost {cost!r} must be an integer >= 0")
            if not math.isfinite(loss):
                raise ValueError(f"item {name!r}: loss {loss!r} must be finite")
    cheapest = sum(min(c for c, _ in options) for options in items.values())
    if cheapest > budget:
        raise ValueError(f"budget={budget} cannot be met: the cheapest option of every item "
                         f"already costs {cheapest}; allowed: a budget of at least that")
    cap = budget // granularity
    best = torch.zeros(cap + 1, dtype=torch.float64)  # best[c]: least loss with cost <= c
    choices: list[torch.Tensor] = []
    for options in items.values():
        new = torch.full_like(best, math.inf)
        choice = torch.zeros(cap + 1, dtype=torch.int16)
        for j, (cost, loss) in enumerate(options):
            units = -(-cost // granularity)
            if units > cap:
                continue
            cand = torch.full_like(best, math.inf)
            cand[units:] = best[:cap + 1 - units] + loss
            better = cand < new
            new = torch.where(better, cand, new)
            choice = torch.where(better, torch.tensor(j, dtype=torch.int16), choice)
        best = new
        choices.append(choice)
    if not torch.isfinite(best[cap]):
        # rounding up made the cheapest combination too expensive at this granularity
        raise ValueError(f"budget={budget} cannot be met at granularity={granularity} "
                         f"(costs rounded up); use a smaller granularity")
    picked: dict[str, int] = {}
    c = cap
    names = list(items)
    for name, choice in zip(reversed(names), reversed(choices), strict=True):
        j = int(choice[c])
        picked[name] = j
        c -= -(-items[name][j][0] // granularity)
    picked = {name: picked[name] for name in names}
    loss = sum(items[n][j][1] for n, j in picked.items())
    cost = sum(items[n][j][0] for n, j in picked.items())
    return picked, loss, cost
