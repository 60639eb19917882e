"""The multiple-choice knapsack behind mixed precision: optimal on small instances (brute
force), feasible at a coarser granularity, clear errors."""

from __future__ import annotations

import itertools
import random

import pytest

from netshrink.auto import auto_granularity, solve_mckp


def _brute_force(items, budget, granularity=1):
    best = None
    names = list(items)
    for combo in itertools.product(*(range(len(items[n])) for n in names)):
        units = sum(-(-items[n][j][0] // granularity) for n, j in zip(names, combo, strict=True))
        if units > budget // granularity:
            continue
        loss = sum(items[n][j][1] for n, j in zip(names, combo, strict=True))
        if best is None or loss < best:
            best = loss
    return best


def test_hand_made_instance() -> None:
    # three layers, (bytes, accuracy loss) at 8 / 4 / 2 bits; budget 11 bytes
    items = {"a": [(8, 0.0), (4, 0.1), (2, 0.5)],
             "b": [(4, 0.0), (2, 0.05), (1, 0.06)],
             "c": [(6, 0.0), (3, 0.3), (2, 0.31)]}
    picked, loss, cost = solve_mckp(items, 11)
    # the greedy choice "cheapest loss per byte" takes a at 4 bytes; the optimum keeps c whole
    assert picked == {"a": 1, "b": 2, "c": 0}
    assert loss == pytest.approx(0.16) and cost == 11


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    items = {f"l{i}": [(rng.randrange(0, 40), rng.random()) for _ in range(rng.randrange(1, 5))]
             for i in range(rng.randrange(1, 6))}
    cheapest = sum(min(c for c, _ in opts) for opts in items.values())
    budget = cheapest + rng.randrange(0, 60)
    picked, loss, cost = solve_mckp(items, budget)
    assert cost <= budget
    assert cost == sum(items[n][j][0] for n, j in picked.items())
    assert loss == pytest.approx(sum(items[n][j][1] for n, j in picked.items()))
    assert loss == pytest.approx(_brute_force(items, budget))


@pytest.mark.parametrize("seed", range(6))
def test_coarse_granularity_is_feasible_and_optimal_for_rounded_costs(seed: int) -> None:
    rng = random.Random(100 + seed)
    items = {f"l{i}": [(rng.randrange(0, 400), rng.random()) for _ in range(3)]
             for i in range(4)}
    budget = sum(max(c for c, _ in opts) for opts in items.values()) // 2 + 40
    try:
        picked, loss, cost = solve_mckp(items, budget, granularity=7)
    except ValueError:
        assert _brute_force(items, budget, 7) is None
        return
    assert cost <= budget
    assert loss == pytest.approx(_brute_force(items, budget, 7))
    assert loss >= _brute_force(items, budget) - 1e-12  # never better than the exact optimum


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="cheapest option of every item already costs 5"):
        solve_mckp({"a": [(3, 0.0)], "b": [(2, 0.0), (9, 0.0)]}, 4)
    with pytest.raises(ValueError, match="budget=-1 must be an integer >= 0"):
        solve_mckp({"a": [(3, 0.0)]}, -1)
    with pytest.raises(ValueError, match="item 'a': cost 1.5 must be an integer"):
        solve_mckp({"a": [(1.5, 0.0)]}, 4)
    assert auto_granularity(10) == 1
    assert auto_granularity(3 * 2**20) == 3
