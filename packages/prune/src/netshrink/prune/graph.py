"""The dependency graph: which channels of which layers must be pruned together.

``DependencyGraph.build(model, example_input)`` traces the model with torch.fx and runs the
label analysis (``analysis.Analysis``) once on one example. The result is expressed in
*channel classes*: a class is a set of channels, across layers, that stand or fall together
(a conv's output channel, the BatchNorm channel after it, the depthwise channel it feeds, and
every channel added to it by a residual connection). Pruning chooses classes to drop.

* ``producers``: conv / linear modules whose output channels can be dropped, and the class of
  each output channel;
* ``followers``: BatchNorms and depthwise convs, per-channel layers that follow a class;
* ``partitions``: blocks of classes that must keep equal counts (grouped convs, channel
  shuffles, chunk) - only pruned in ``group`` mode;
* ``pinned``: classes never pruned: the model's input and output channels, anything reaching
  an op the analysis does not understand, layers called more than once.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch
from torch import nn

from netshrink.prune.analysis import Analysis
from netshrink.prune.propagation import ModuleCall
from netshrink.prune.tracing import trace


@dataclasses.dataclass(frozen=True)
class PruningGroup:
    """Producers whose output channels are tied together, and their channel classes."""

    producers: tuple[str, ...]
    classes: tuple[int, ...]
    pinned: int

    @property
    def prunable(self) -> int:
        return len(self.classes) - self.pinned


class DependencyGraph:
    """Channel dependencies of one model, read from its fx graph (see the module docstring)."""

    def __init__(self, model: nn.Module, analysis: Analysis, gm: torch.fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        self.analysis = analysis
        find = analysis.uf.find
        self.find = find
        self.calls: dict[str, ModuleCall] = {}
        for call in analysis.calls:
            self.calls.setdefault(call.module, call)
        self.producers: dict[str, list[int]] = {}
        self.followers: dict[str, list[int]] = {}
        for name, call in self.calls.items():
            classes = [find(x) for x in call.out_vec.tolist()]
            if call.kind in ("dense", "grouped"):
                self.producers[name] = classes
            elif call.kind in ("bn", "depthwise") and call.in_vec is not None:
                self.followers[name] = classes
        self.pinned: frozenset[int] = frozenset(find(x) for x in analysis.pinned)
        #: pinned class -> where it was first pinned (a module, an op inside one, ...)
        self.pin_reasons: dict[int, str] = {}
        for label, reason in analysis.pin_reason.items():
            self.pin_reasons.setdefault(find(label), reason)
        self.partitions: list[list[list[int]]] = []
        self.partition_reasons: list[str] = []
        for part in analysis.partitions:
            blocks = [list(dict.fromkeys(find(x) for x in b.tolist())) for b in part.blocks]
            if all(sorted(b) == sorted(blocks[0]) for b in blocks[1:]):
                continue  # every block holds the same classes: always balanced
            self.partitions.append(blocks)
            self.partition_reasons.append(part.why)
        self.activations: dict[str, list[int]] = {
            node: [find(x) for x in vec.tolist()] for node, vec in analysis.activations}

    @classmethod
    def build(cls, model: nn.Module, example_input: torch.Tensor) -> DependencyGraph:
        """Trace ``model`` and analyse it on ``example_input`` (only its first sample is run,
        in eval mode, without gradients; the model's mode is restored)."""
        gm = trace(model)
        analysis = Analysis(gm)
        analysis.input_dtype = example_input.dtype
        analysis.input_device = example_input.device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                analysis.run(example_input[:1])
        finally:
            model.train(was_training)
        analysis.finish()
        return cls(model, analysis, gm)

    # queries --------------------------------------------------------------------------------
    def classes(self) -> list[int]:
        """Every class that some producer outputs, in first-seen order."""
        seen: dict[int, None] = {}
        for classes in self.producers.values():
            seen.update(dict.fromkeys(classes))
        return list(seen)

    def producers_of(self) -> dict[int, list[tuple[str, int]]]:
        """class -> [(producer, output channel index), ...]."""
        out: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for name, classes in self.producers.items():
            for i, c in enumerate(classes):
                out[c].append((name, i))
        return dict(out)

    def groups(self) -> list[PruningGroup]:
        """Producers linked by shared classes or partitions, with their classes."""
        parent: dict[int, int] = {c: c for c in self.classes()}

        def find(c: int) -> int:
            while parent[c] != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        def link(items: list[int]) -> None:
            items = [c for c in items if c in parent]
            for c in items[1:]:
                ra, rb = find(items[0]), find(c)
                if ra != rb:
                    parent[rb] = ra

        for classes in self.producers.values():
            link(classes)
        for blocks in self.partitions:
            link([c for b in blocks for c in b])
        members: dict[int, list[int]] = defaultdict(list)
        for c in parent:
            members[find(c)].append(c)
        owner = {c: root for root, cs in members.items() for c in cs}
        names: dict[int, list[str]] = defaultdict(list)
        for name, classes in self.producers.items():
            names[owner[classes[0]]].append(name)
        return [PruningGroup(tuple(names[root]), tuple(cs),
                             sum(1 for c in cs if c in self.pinned))
                for root, cs in members.items()]

    def summary(self) -> str:
        """One line per group: its producers, channel count and how many are pinned."""
        lines = []
        for g in self.groups():
            shown = ", ".join(g.producers[:4]) + (" ..." if len(g.producers) > 4 else "")
            lines.append(f"{len(g.classes):5d} channels, {g.pinned:5d} pinned: {shown}")
        return "\n".join(lines)
