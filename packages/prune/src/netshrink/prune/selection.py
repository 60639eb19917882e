"""Choose which channel classes to drop: global or per-layer, normal / regular / group mode.

The unit of choice is a *channel class* (see ``graph``), scored by a criterion (lower = less
important). Rules, in order:

* pinned classes (model inputs/outputs, unknown ops, ignored layers, classes the criterion
  cannot score) are never dropped;
* ``scope="global"`` drops the ``amount`` fraction of all prunable classes with the lowest
  scores across the network (network slimming's global threshold); ``"per_layer"`` drops that
  fraction inside every group of tied layers;
* the floor: no producer ever keeps fewer than ``min_channels`` output channels;
* ``mode="normal"`` drops exactly that fraction (unless the floor stops it); classes bound by a
  grouped conv, channel shuffle or chunk are left alone;
* ``mode="regular"`` then rounds every pruned group's kept count to the nearest multiple of
  ``round_to`` (at least ``round_to``), keeping the best-scored channels;
* ``mode="group"`` also prunes classes bound by grouped convs, shuffles and chunks: such
  classes form *lattices* of cells (the common refinement of the blocks that must keep equal
  counts); a lattice is pruned a *slot* at a time, a slot being the next-lowest-scored
  channel(s) of every cell, so every group of every grouped conv and every shuffle row loses
  the same number of channels.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict

from netshrink.prune.graph import DependencyGraph


@dataclasses.dataclass(frozen=True)
class _Unit:
    classes: tuple[int, ...]
    score: float
    lattice: int = -1  # -1: a free class; else the lattice it is a slot of
    rank: int = 0  # slot rank inside its lattice (slots go in rank order)


def select_dropped(graph: DependencyGraph, scores: dict[int, float], *, amount: float,
                   scope: str, mode: str, round_to: int = 1, min_channels: int = 1,
                   pinned: set[int] | frozenset[int] = frozenset()) -> frozenset[int]:
    """The classes to drop (see the module docstring)."""
    candidates = graph.classes()
    blocked = set(graph.pinned) | set(pinned)
    blocked |= {c for c in candidates if c not in scores or not math.isfinite(scores[c])}
    bound = {c for blocks in graph.partitions for b in blocks for c in b}
    if mode != "group":
        blocked |= bound
    units = [_Unit((c,), scores[c]) for c in candidates if c not in blocked and c not in bound]
    if mode == "group":
        units += _lattice_units(graph, scores, blocked)
    prunable = [c for c in candidates if c not in blocked]
    class_producers = _class_producers(graph)
    remaining = {name: len(cs) for name, cs in graph.producers.items()}
    dropped: set[int] = set()
    if scope == "global":
        _greedy(units, round(amount * len(prunable)), remaining, class_producers,
                min_channels, dropped)
    else:
        group_of = {c: i for i, g in enumerate(graph.groups()) for c in g.classes}
        by_group: dict[int, list[_Unit]] = defaultdict(list)
        for u in units:
            by_group[group_of[u.classes[0]]].append(u)
        count = Counter(group_of[c] for c in prunable)
        for gid, group_units in by_group.items():
            _greedy(group_units, round(amount * count[gid]), remaining, class_producers,
                    min_channels, dropped)
    if mode == "regular":
        _round_groups(graph, scores, blocked, dropped, round_to, min_channels)
    return frozenset(dropped)


def _greedy(units: list[_Unit], target: int, remaining: dict[str, int],
            class_producers: dict[int, Counter], min_channels: int, dropped: set[int]) -> None:
    """Drop the lowest-scored units until ``target`` classes are dropped, keeping the floor
    and taking each lattice's slots in rank order."""
    count = 0
    slots_taken: dict[int, int] = defaultdict(int)
    for u in sorted(units, key=lambda u: (u.score, u.rank)):
        if count + len(u.classes) > target:
            continue
        if u.lattice >= 0 and slots_taken[u.lattice] != u.rank:
            continue
        need: Counter = Counter()
        for c in u.classes:
            need.update(class_producers.get(c, {}))
        if any(remaining[p] - k < min_channels for p, k in need.items()):
            continue
        for p, k in need.items():
            remaining[p] -= k
        dropped.update(u.classes)
        count += len(u.classes)
        if u.lattice >= 0:
            slots_taken[u.lattice] += 1


def _class_producers(graph: DependencyGraph) -> dict[int, Counter]:
    out: dict[int, Counter] = defaultdict(Counter)
    for name, classes in graph.producers.items():
        for c in classes:
            out[c][name] += 1
    return out


def _lattice_units(graph: DependencyGraph, scores: dict[int, float],
                   blocked: set[int]) -> list[_Unit]:
    """Slots of every lattice of partition-bound classes (see the module docstring)."""
    parent: dict[int, int] = {}

    def find(c: int) -> int:
        parent.setdefault(c, c)
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for blocks in graph.partitions:
        flat = [c for b in blocks for c in b]
        for c in flat[1:]:
            parent[find(c)] = find(flat[0])
    signature: dict[int, list[tuple[int, int]]] = defaultdict(list)
    valid: dict[int, bool] = defaultdict(lambda: True)
    for pid, blocks in enumerate(graph.partitions):
        sizes = {len(b) for b in blocks}
        for bid, block in enumerate(blocks):
            for c in block:
                signature[c].append((pid, bid))
            if len(sizes) != 1:
                valid[find(block[0])] = False
    lattices: dict[int, dict[tuple, list[int]]] = defaultdict(lambda: defaultdict(list))
    for c, sig in signature.items():
        if len({pid for pid, _ in sig}) != len(sig):  # twice in one partition
            valid[find(c)] = False
        lattices[find(c)][tuple(sorted(sig))].append(c)
    units: list[_Unit] = []
    for lid, (root, cells) in enumerate(lattices.items()):
        sizes = [len(cell) for cell in cells.values()]
        smallest = min(sizes)
        if not valid[root] or any(s % smallest for s in sizes):
            continue
        ranked = [sorted(cell, key=lambda c: (c in blocked, scores.get(c, math.inf)))
                  for cell in cells.values()]
        for rank in range(smallest - 1):  # the last slot always stays (no empty group)
            members: list[int] = []
            for cell in ranked:
                q = len(cell) // smallest
                members += cell[rank * q:(rank + 1) * q]
            if any(c in blocked for c in members):
                break
            score = sum(scores[c] for c in members) / len(members)
            units.append(_Unit(tuple(members), score, lid, rank))
    return units


def _round_groups(graph: DependencyGraph, scores: dict[int, float], blocked: set[int],
                  dropped: set[int], n: int, min_channels: int) -> None:
    """Regular mode: every pruned group keeps a multiple of ``n`` channels."""
    for group in graph.groups():
        cls = group.classes
        gone = [c for c in cls if c in dropped]
        if not gone:
            continue
        dropped.difference_update(gone)
        simple = all(sorted(graph.producers[p]) == sorted(cls) for p in group.producers)
        if not simple:
            continue
        total = len(cls)
        keep = max(n, math.floor((total - len(gone)) / n + 0.5) * n)
        pinned = sum(1 for c in cls if c in blocked)
        keep = max(keep, math.ceil(max(min_channels, pinned) / n) * n)
        if keep >= total:
            continue
        droppable = sorted((c for c in cls if c not in blocked), key=lambda c: scores[c])
        dropped.update(droppable[:total - keep])
