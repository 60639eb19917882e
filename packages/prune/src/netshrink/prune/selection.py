"""Choose which channel classes to drop: global or per-layer, normal / regular / group mode.

The unit of choice is a *channel class* (see ``graph``), scored by a criterion (lower = less
important). Rules, in order:

* pinned classes (model inputs/outputs, unknown ops, ignored layers, classes the criterion
  cannot score) are never dropped;
* ``scope="global"`` drops the lowest-scored classes across the network (network slimming's
  global threshold) until the ``amount`` fraction of the prunable *channels* is gone: a class
  counts as many channels as the conv / linear filters that produce it (a class of a residual
  stream spans every block of its stage, RepVGG's every branch of it), scaled so that a model
  whose classes all span the same number of filters drops exactly that fraction of its classes;
  ``"per_layer"`` drops that fraction of the classes inside every group of tied layers;
* the floor: no producer ever keeps fewer than ``min_channels`` output channels, and a layer
  with a registered minimum fan-in (a weight-standardized conv, ``register_min_fan_in``)
  keeps enough input channels for it; a class the floor stops is skipped and the next-ranked
  ones are taken until the amount is met (or nothing prunable is left);
* ``mode="normal"`` drops exactly that fraction (unless the floor stops it); a grouped conv
  whose groups bind nothing else loses whole groups (each kept group keeps its width, the
  group count falls); other classes bound by a grouped conv, channel shuffle or chunk are
  left alone;
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
from netshrink.prune.pruners import min_input_channels


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
    class_producers = _class_producers(graph)
    filters = {c: max(1, sum(class_producers[c].values())) for c in candidates}
    remaining = {name: len(cs) for name, cs in graph.producers.items()}
    floors = dict.fromkeys(remaining, min_channels)
    whole: list[_Unit] = []
    if mode == "normal":
        whole = _whole_group_units(graph, scores, blocked, remaining, class_producers, floors)
    if mode != "group":
        blocked |= bound
    units = [_Unit((c,), scores[c]) for c in candidates if c not in blocked and c not in bound]
    units += whole
    if mode == "group":
        units += _lattice_units(graph, scores, blocked)
    in_whole = {c for u in whole for c in u.classes}
    prunable = [c for c in candidates if c not in blocked or c in in_whole]
    _add_input_floors(graph, remaining, class_producers, floors, min_channels)
    dropped: set[int] = set()
    if scope == "global":  # a class weighs its filters over the mean class's
        mean = sum(filters[c] for c in prunable) / max(1, len(prunable))
        weight = {c: filters[c] / mean for c in prunable}
        _greedy(units, round(amount * len(prunable)), remaining, class_producers,
                floors, dropped, weight)
    else:
        group_of = {c: i for i, g in enumerate(graph.groups()) for c in g.classes}
        for u in whole:  # a conv's input and output groups go together: one group of layers
            group_of.update(dict.fromkeys(u.classes, group_of[u.classes[0]]))
        by_group: dict[int, list[_Unit]] = defaultdict(list)
        for u in units:
            by_group[group_of[u.classes[0]]].append(u)
        count = Counter(group_of[c] for c in prunable)
        for gid, group_units in by_group.items():
            _greedy(group_units, round(amount * count[gid]), remaining, class_producers,
                    floors, dropped)
    if mode == "regular":
        _round_groups(graph, scores, blocked, dropped, round_to, min_channels)
    return frozenset(dropped)


def _greedy(units: list[_Unit], target: int, remaining: dict[str, int],
            class_producers: dict[int, Counter], floors: dict[str, int],
            dropped: set[int], weight: dict[int, float] | None = None) -> None:
    """Drop the lowest-scored units until ``target`` classes are dropped (a class counting
    ``weight[c]``, default 1), keeping the floors (``floors``: holder -> channels it keeps at
    least; a unit they stop is skipped, the next ones are taken) and taking each lattice's slots
    in rank order."""
    count = 0.0
    slots_taken: dict[int, int] = defaultdict(int)
    for u in sorted(units, key=lambda u: (u.score, u.rank)):
        size = len(u.classes) if weight is None else sum(weight[c] for c in u.classes)
        if count + size > target + 1e-9:
            continue
        if u.lattice >= 0 and slots_taken[u.lattice] != u.rank:
            continue
        need: Counter = Counter()
        for c in u.classes:
            need.update(class_producers.get(c, {}))
        if any(remaining[p] - k < floors[p] for p, k in need.items()):
            continue
        for p, k in need.items():
            remaining[p] -= k
        dropped.update(u.classes)
        count += size
        if u.lattice >= 0:
            slots_taken[u.lattice] += 1


def _class_producers(graph: DependencyGraph) -> dict[int, Counter]:
    out: dict[int, Counter] = defaultdict(Counter)
    for name, classes in graph.producers.items():
        for c in classes:
            out[c][name] += 1
    return out


def _add_input_floors(graph: DependencyGraph, remaining: dict[str, int],
                      class_producers: dict[int, Counter], floors: dict[str, int],
                      min_channels: int) -> None:
    """Layers with a minimum fan-in become holders of their input classes: ``in:NAME`` keeps
    at least ``min_input_channels`` of them; so does every piece of a split whose sizes are
    rewritten (``piece:NODE:I`` keeps ``min_channels``). One greedy check with the producers'
    floors."""
    for node, (_, vec, bounds) in graph.analysis.resizable_nodes.items():
        for i, (a, b) in enumerate(bounds):  # every piece of a rewritten split keeps a channel
            key = f"piece:{node}:{i}"
            classes = [graph.find(x) for x in vec[a:b].tolist()]
            remaining[key] = len(classes)
            floors[key] = min(min_channels, len(classes))
            for c in classes:
                class_producers[c][key] += 1
    for name, call in graph.calls.items():
        if call.in_vec is None:
            continue
        floor = min_input_channels(graph.model.get_submodule(name))
        if floor <= 1:
            continue
        key = f"in:{name}"
        classes = [graph.find(x) for x in call.in_vec.tolist()]
        remaining[key] = len(classes)
        floors[key] = min(floor, len(classes))
        for c in classes:
            class_producers[c][key] += 1


def _whole_group_units(graph: DependencyGraph, scores: dict[int, float], blocked: set[int],
                       remaining: dict[str, int], class_producers: dict[int, Counter],
                       floors: dict[str, int]) -> list[_Unit]:
    """Normal mode: a grouped conv whose groups bind nothing else loses whole groups (group
    ``j``'s input and output channels together, so every kept group keeps its width and the
    group count falls). Each such conv keeps at least one group (holder ``groups:NAME``)."""
    units: list[_Unit] = []
    for name, cells in whole_group_cells(graph, blocked).items():
        flat = [c for cell in cells for c in cell]
        key = f"groups:{name}"
        remaining[key] = len(flat)
        floors[key] = max(len(cell) for cell in cells)
        for cell in cells:
            for c in cell:
                class_producers[c][key] += 1
            members = tuple(sorted(cell))
            units.append(_Unit(members, sum(scores[c] for c in members) / len(members)))
    return units


def whole_group_cells(graph: DependencyGraph,
                      blocked: set[int] | frozenset[int]) -> dict[str, list[set[int]]]:
    """Grouped convs whose groups can go whole in the normal mode -> the classes of each group
    (its input and output channels): every class is bound by this conv's groups only, none is
    blocked, none repeats."""
    membership: Counter = Counter()
    for blocks in graph.partitions:
        membership.update({c for b in blocks for c in b})
    out: dict[str, list[set[int]]] = {}
    for name, call in graph.calls.items():
        if call.kind != "grouped" or call.in_vec is None:
            continue
        g = call.groups
        ins = [[graph.find(x) for x in b.tolist()] for b in call.in_vec.chunk(g)]
        outs = [[graph.find(x) for x in b.tolist()] for b in call.out_vec.chunk(g)]
        flat = [c for block in ins + outs for c in block]
        if (len(flat) != len(set(flat)) or any(membership[c] != 1 for c in flat)
                or any(c in blocked for c in flat)):
            continue
        out[name] = [set(i) | set(o) for i, o in zip(ins, outs, strict=True)]
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
