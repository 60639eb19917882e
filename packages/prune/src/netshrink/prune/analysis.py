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
from netshrink.prune.forward_edits import owner_of
from netshrink.prune.propagation import LabelPropagator, Partition, describe_node


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
        self.attr_labels: dict[str, Any] = {}
        #: label -> where it was first pinned (``propagation.describe_node``)
        self.pin_reason: dict[int, str] = {}
        #: split / slice node -> (channel dim, input channel labels, piece bounds): its
        #: literal sizes are rewritten after pruning (``forward_edits``)
        self.resizable_nodes: dict[str, tuple[int, torch.Tensor, list[tuple[int, int]]]] = {}
        #: one-channel convs sliding along the channels (ECA): they pass them through
        self.sliding: set[str] = set()
        #: reductions / softmaxes combining whole slices along a dim (SKNet's paths)
        self.slice_ops: set[str] = set()

    def get_attr_labels(self, n: Node, value: Any) -> Any:
        """A stored tensor (a layer scale, a norm's affine read in a traced forward): every
        element its own label, *not* pinned. Combined element-wise with channels (``x *
        gamma.view(1, -1, 1, 1)``) each element merges with its channel and is sliced with it
        (``planning``); any other use (an unknown op, a broadcast) pins it as usual. Scalars
        and huge tensors stay pinned; one tensor read twice has the same labels."""
        if n.target in self.attr_labels:
            return self.attr_labels[n.target]

        def one(t: torch.Tensor) -> torch.Tensor:
            if t.numel() > (1 << 22):
                return self.fresh_like(n, t)
            return self.new_labels(n, t.numel(), pinned=t.ndim == 0).reshape(t.shape)
        labels = L.tree_map(value, one)
        self.attr_labels[n.target] = labels
        return labels

    def new_labels(self, n: Node, count: int, *, pinned: bool) -> torch.Tensor:
        ids = self.uf.add(count)
        if pinned:
            self.pinned.update(ids)
            reason = describe_node(self.module, n)
            for i in ids:
                self.pin_reason.setdefault(i, reason)
        vec = torch.arange(ids.start, ids.stop, dtype=torch.long)
        self.node_new_labels.setdefault(n.name, []).append(vec)
        return vec

    def pin(self, *trees: Any, reason: str | None = None) -> None:
        reason = reason or describe_node(self.module, self.current)
        for tree in trees:
            labels = L.unique_labels(tree)
            self.pinned.update(labels)
            for i in labels:
                self.pin_reason.setdefault(i, reason)

    def slides_along_channels(self, n: Node, m: Any, lab: torch.Tensor,
                              x: torch.Tensor) -> bool:
        """Decided on the original model and remembered (``sliding``): after pruning, a
        channel vector of length 1 no longer shows where the channels are."""
        slides = super().slides_along_channels(n, m, lab, x)
        if slides:
            self.sliding.add(n.name)
        return slides

    def across_slices(self, n: Node, c: torch.Tensor, d: int) -> bool:
        """Decided on the original model and remembered (``slice_ops``), as ``sliding``."""
        across = super().across_slices(n, c, d)
        if across:
            self.slice_ops.add(n.name)
        return across

    def resizable(self, n: Node, lab: torch.Tensor, x: torch.Tensor, dim: int,
                  bounds: list[tuple[int, int]]) -> None:
        """A channel split / slice with literal sizes in a block's forward: the channels flow
        through (recorded for the planning to rewrite the sizes); in the model's own forward,
        which cannot be rewritten, they are pinned."""
        vec = L.channel_vector(lab, x.shape[dim], dim)
        if vec is None or not owner_of(n):
            self.pin(lab)
            return
        self.resizable_nodes[n.name] = (dim, vec, list(bounds))

    def partition(self, n: Node, blocks: list[torch.Tensor], why: str) -> None:
        self.partitions.append(Partition(n.name, why, [b.clone() for b in blocks]))

    def combine_pair(self, n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Same-position channels are merged (one channel index, pruned together); a label
        paired with many (broadcast, e.g. a scalar gate) is pinned instead."""
        if torch.equal(a, b):
            return a
        pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)], 1), dim=0)
        # A label meeting several others is pinned only when its operand is broadcast (a
        # scalar gate, constant where the other operand varies). A label repeated along the
        # channels (GhostNet's concat of a conv and its depthwise copy) merges with every
        # label it meets: they are one channel, pruned together.
        dims_a, dims_b = set(L.varying_dims(a)), set(L.varying_dims(b))
        fan_a = _fanned(pairs[:, 0]) if not dims_a & dims_b else set()
        fan_b = _fanned(pairs[:, 1]) if not dims_a & dims_b else set()
        self.fanned.update(fan_a | fan_b)
        self.pin(torch.tensor(sorted(fan_a | fan_b), dtype=torch.long))
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
                self.pin(call.in_vec, call.out_vec,
                         reason=f"'{call.module}' (called {counts[call.module]} times)")


def _fanned(column: torch.Tensor) -> set[int]:
    ids, counts = torch.unique(column, return_counts=True)
    return set(ids[counts > 1].tolist())

