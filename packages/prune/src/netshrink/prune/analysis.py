"""The analysis of the original model: merges, ties, partitions and pins.

``Analysis`` runs the label propagation once on the original model. Fresh labels come from a
union-find: element-wise ops (residual adds, SE multiplies) merge the labels that meet at the
same position, so a class of merged labels is a set of channels pruned together. A label paired
with many others (a broadcast gate or scalar) is pinned instead of merged.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.fx
from torch.fx.node import Node

from netshrink.prune import _labels as L
from netshrink.prune.propagation import LabelPropagator, Partition


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> range:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return range(start, start + n)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class Analysis(LabelPropagator):
    """Reads merges, ties, partitions and pins from one run of the original model."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.uf = _UnionFind()
        self.pinned: set[int] = set()
        self.fanned: set[int] = set()
        self.partitions: list[Partition] = []
        self.node_new_labels: dict[str, list[torch.Tensor]] = {}
        self.input_dtype = torch.float32
        self.input_device = torch.device("cpu")

    def new_labels(self, n: Node, count: int, *, pinned: bool) -> torch.Tensor:
        ids = self.uf.add(count)
        if pinned:
            self.pinned.update(ids)
        vec = torch.arange(ids.start, ids.stop, dtype=torch.long)
        self.node_new_labels.setdefault(n.name, []).append(vec)
        return vec

    def pin(self, *trees: Any) -> None:
        for tree in trees:
            self.pinned.update(L.unique_labels(tree))

    def partition(self, n: Node, blocks: list[torch.Tensor], why: str) -> None:
        self.partitions.append(Partition(n.name, why, [b.clone() for b in blocks]))

    def combine_pair(self, n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Same-position channels are merged (one channel index, pruned together); a label
        paired with many (broadcast, e.g. a scalar gate) is pinned instead."""
        if torch.equal(a, b):
            return a
        pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)], 1), dim=0)
        fan_a = _fanned(pairs[:, 0])
        fan_b = _fanned(pairs[:, 1])
        self.fanned.update(fan_a | fan_b)
        self.pinned.update(fan_a | fan_b)
        for x, y in pairs.tolist():
            if x not in fan_a and y not in fan_b:
                self.uf.union(x, y)
        if not fan_a:
            return a
        mask = torch.tensor(sorted(fan_a), dtype=torch.long)
        return torch.where(torch.isin(a, mask), b, a)

    def finish(self) -> None:
        """After the run: a module called more than once keeps all its channels."""
        counts = Counter(call.module for call in self.calls)
        for call in self.calls:
            if counts[call.module] > 1:
                self.pin(call.in_vec, call.out_vec)


def _fanned(column: torch.Tensor) -> set[int]:
    ids, counts = torch.unique(column, return_counts=True)
    return set(ids[counts > 1].tolist())

