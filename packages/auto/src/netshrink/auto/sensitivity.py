"""Per-layer sensitivity: the accuracy with one layer group pruned, or one layer quantized.

``analyze_sensitivity(model, example_input, evaluate, config)`` measures, without any
fine-tuning and always on a deep copy:

* for every prunable layer group (``groups.GroupPruner``: producers whose channels are tied),
  the accuracy with that group alone pruned to each of ``config.prune_ratios`` (channel surgery,
  lowest-``criterion`` channels first);
* for every quantizable layer (``netshrink.quant.quantizable_layers``), the accuracy with that
  layer's weights alone quantized to each of ``config.precisions`` (``quantize_`` with a
  per-layer override; activations stay float).

``evaluate(model) -> float`` is the caller's accuracy (or any higher-is-better score) on a
held-out batch set. ``prepare(model)``, when given, runs on every changed copy before it is
evaluated: e.g. BatchNorm re-estimation on a few training batches, which changes no weight but
removes the statistics shift that pruning or a weight rescale (DoReFa's normalisation) causes,
so the measured drop is the layer's, not the stale statistics'.

The result (``SensitivityResult``) is JSON (``save_json``, atomic) and a plot (``plot``, one
curve per group / layer; needs matplotlib). Cost: (groups x ratios + layers x precisions)
evaluations.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.auto.groups import GroupPruner
from netshrink.core import check_choice, check_int, write_atomic, write_text_atomic
from netshrink.prune import list_criteria
from netshrink.quant import PRECISIONS, QuantConfig, quantizable_layers, quantize_

Evaluate = Callable[[nn.Module], float]
Prepare = Callable[[nn.Module], None]
Progress = Callable[[str], None]

#: Weight precisions the sensitivity analysis may try (float 32 is the baseline).
SENSITIVITY_PRECISIONS = tuple(p for p in PRECISIONS if p != 32)
_FLOAT_ONLY = QuantConfig(w=32, a=32)  # every layer float unless overridden


def _precision_key(p: Any) -> str:
    return str(p)


def _precision_from_key(key: str) -> Any:
    return int(key) if key.isdigit() else key


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    """What to measure. ``prune_ratios``: fractions of a group's prunable channels removed,
    each in (0, 1). ``precisions``: weight precisions (16, 8, 4, 3, 2, "ternary", "binary").
    Either may be empty to skip that half. ``criterion``: the channel-importance criterion
    (a ``netshrink.prune`` name); ``min_channels``: the floor every layer keeps."""

    prune_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    precisions: tuple[Any, ...] = (8, 4, 2, "ternary", "binary")
    criterion: str = "l1"
    min_channels: int = 1

    def __post_init__(self) -> None:
        ratios = tuple(self.prune_ratios)
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0:
                raise ValueError(f"prune_ratios={self.prune_ratios!r}: {r!r} must be a number "
                                 "in (0, 1)")
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"prune_ratios={self.prune_ratios!r} repeats a value")
        object.__setattr__(self, "prune_ratios", tuple(sorted(float(r) for r in ratios)))
        precisions = tuple(self.precisions)
        for p in precisions:
            if isinstance(p, bool) or p not in SENSITIVITY_PRECISIONS:
                raise ValueError(f"precisions={self.precisions!r}: {p!r} is not allowed; "
                                 f"allowed: {', '.join(map(repr, SENSITIVITY_PRECISIONS))}")
        if len(set(precisions)) != len(precisions):
            raise ValueError(f"precisions={self.precisions!r} repeats a value")
        object.__setattr__(self, "precisions", precisions)
        check_choice("criterion", self.criterion, list_criteria())
        check_int("min_channels", self.min_channels, min_value=1)


@dataclasses.dataclass(frozen=True)
class SensitivityResult:
    """Accuracies measured by ``analyze_sensitivity``.

    ``prune[group][ratio]`` and ``quant[layer][precision]``: accuracy with only that change;
    ``baseline``: the unchanged model's. ``group_channels``: prunable channels per group;
    ``layer_weights``: weight elements per layer. ``seconds``: the analysis' wall time.
    """

    baseline: float
    prune: dict[str, dict[float, float]]
    quant: dict[str, dict[Any, float]]
    group_channels: dict[str, int]
    layer_weights: dict[str, int]
    criterion: str = "l1"
    seconds: float = 0.0

    def removed_fraction(self, group: str, ratio: float) -> float:
        """The fraction of ``group``'s channels that pruning by ``ratio`` really removes:
        ``round(ratio x channels)`` (as netshrink.prune selects), at most all but one."""
        channels = self.group_channels[group]
        return min(round(ratio * channels), channels - 1) / channels

    def prune_loss(self, group: str, ratio: float) -> float:
        """Accuracy lost with ``group`` pruned by ``ratio``, linearly interpolated between
        the measured ratios in *channels removed* (so a 2-channel group's 0.3 counts as its
        measured 0.5): 0 when nothing is removed, the largest measured loss beyond."""
        points: dict[float, float] = {0.0: 0.0}
        for r, a in self.prune[group].items():
            x = self.removed_fraction(group, r)
            points[x] = max(points.get(x, 0.0), self.baseline - a)
        curve = sorted(points.items())
        x = self.removed_fraction(group, ratio)
        if x >= curve[-1][0]:
            return curve[-1][1]
        for (r0, l0), (r1, l1) in zip(curve, curve[1:], strict=False):
            if r0 <= x <= r1:
                return l0 + (l1 - l0) * (x - r0) / (r1 - r0)
        return 0.0

    def quant_loss(self, layer: str, precision: Any) -> float:
        """Accuracy lost with ``layer``'s weights at ``precision`` (0 for float 32)."""
        if precision == 32:
            return 0.0
        return self.baseline - self.quant[layer][precision]

    def ranking(self, kind: str = "prune") -> list[tuple[str, float]]:
        """(name, mean accuracy loss over the measured settings), most sensitive first."""
        check_choice("kind", kind, ("prune", "quant"))
        table = self.prune if kind == "prune" else self.quant
        means = [(name, sum(self.baseline - a for a in accs.values()) / len(accs))
                 for name, accs in table.items() if accs]
        return sorted(means, key=lambda item: -item[1])

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ratios and precisions become strings (JSON keys)."""
        return {
            "baseline": self.baseline,
            "criterion": self.criterion,
            "seconds": self.seconds,
            "prune": {g: {repr(r): a for r, a in accs.items()} for g, accs in self.prune.items()},
            "quant": {n: {_precision_key(p): a for p, a in accs.items()}
                      for n, accs in self.quant.items()},
            "group_channels": dict(self.group_channels),
            "layer_weights": dict(self.layer_weights),
            "ranking": {"prune": self.ranking("prune"), "quant": self.ranking("quant")},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SensitivityResult:
        """The inverse of ``as_dict`` (the ranking is recomputed)."""
        try:
            return cls(
                baseline=float(doc["baseline"]),
                prune={str(g): {float(r): float(a) for r, a in accs.items()}
                       for g, accs in doc["prune"].items()},
                quant={str(n): {_precision_from_key(str(p)): float(a) for p, a in accs.items()}
                       for n, accs in doc["quant"].items()},
                group_channels={str(k): int(v) for k, v in doc["group_channels"].items()},
                layer_weights={str(k): int(v) for k, v in doc["layer_weights"].items()},
                criterion=str(doc.get("criterion", "l1")),
                seconds=float(doc.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not a sensitivity result: {err!r}") from err

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``as_dict()`` as JSON, atomically."""
        return write_text_atomic(path, json.dumps(self.as_dict(), indent=1, sort_keys=True,
                                                  allow_nan=False) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> SensitivityResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, path: str | os.PathLike[str], title: str = "") -> Path:
        """A PNG: accuracy vs pruning ratio (one curve per group) and vs weight precision
        (one curve per layer). Needs matplotlib (ImportError otherwise)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_p, ax_q) = plt.subplots(1, 2, figsize=(13, 5))
        for name, accs in self.prune.items():
            xs = [0.0, *sorted(accs)]
            ax_p.plot(xs, [self.baseline] + [accs[r] for r in xs[1:]], marker="o", label=name)
        ax_p.set(xlabel="fraction of the group's channels pruned", ylabel="accuracy",
                 title="pruning, one group at a time")
        precisions = list(dict.fromkeys(p for accs in self.quant.values() for p in accs))
        labels = ["float", *map(str, precisions)]
        for name, accs in self.quant.items():
            ys = [self.baseline] + [accs.get(p, math.nan) for p in precisions]
            ax_q.plot(range(len(labels)), ys, marker="o", label=name)
        ax_q.set_xticks(range(len(labels)), labels)
        ax_q.set(xlabel="weight precision", ylabel="accuracy",
                 title="weight quantization, one layer at a time")
        for ax in (ax_p, ax_q):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6, ncol=2)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        try:
            return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        finally:
            plt.close(fig)


@torch.no_grad()
def _score(model: nn.Module, evaluate: Evaluate, prepare: Prepare | None) -> float:
    if prepare is not None:
        prepare(model)
    model.eval()
    value = float(evaluate(model))
    if not math.isfinite(value):
        raise ValueError(f"evaluate returned {value!r}; it must return a finite score")
    return value


def analyze_sensitivity(model: nn.Module, example_input: torch.Tensor, evaluate: Evaluate,
                        config: SensitivityConfig | None = None, *,
                        prepare: Prepare | None = None, data: Any = None,
                        progress: Progress | None = None) -> SensitivityResult:
    """Measure the sensitivity of ``model`` (unchanged; see the module docstring). ``data``:
    batches for criteria that need them; ``progress(label)`` is called before each
    evaluation."""
    config = config or SensitivityConfig()
    start = time.perf_counter()
    baseline = _score(copy.deepcopy(model), evaluate, prepare)
    prune: dict[str, dict[float, float]] = {}
    channels: dict[str, int] = {}
    if config.prune_ratios:
        pruner = GroupPruner(model, example_input, criterion=config.criterion, data=data,
                             min_channels=config.min_channels)
        for name, group in pruner.groups.items():
            channels[name] = group.channels
            prune[name] = {}
            for ratio in config.prune_ratios:
                if progress:
                    progress(f"prune {name} {ratio:g}")
                prune[name][ratio] = _score(pruner.prune({name: ratio}), evaluate, prepare)
    quant: dict[str, dict[Any, float]] = {}
    weights = {name: int(m.weight.numel()) for name, m in quantizable_layers(model)}
    for name in weights if config.precisions else ():
        quant[name] = {}
        for p in config.precisions:
            if progress:
                progress(f"quant {name} {p}")
            q = quantize_(copy.deepcopy(model), _FLOAT_ONLY, precisions={name: (p, 32)})
            quant[name][p] = _score(q, evaluate, prepare)
    return SensitivityResult(baseline=baseline, prune=prune, quant=quant,
                             group_channels=channels, layer_weights=weights,
                             criterion=config.criterion,
                             seconds=time.perf_counter() - start)
