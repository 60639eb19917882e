"""The automatic searches as recipe stages: ``auto.prune`` and ``auto.mixed``.

Both search inside ``apply`` on the batches given by ``use_data`` (training batches: the first
``eval_batches`` measure accuracy, the rest re-estimate BatchNorm statistics before each
measurement; the first image is the example input that traces the model), record what they
chose in ``describe()`` (the pruned structure / the per-layer precisions, and the search's wall
time in ``search_seconds``), and ``rebuild`` recreates that on a fresh model from the record,
so checkpoints load without searching again.

* ``auto.prune``: sensitivity (pruning only) then ``prune_to_budget`` (a MACs target, a CPU
  latency target timed on the first training image, or an accuracy loss); the chosen channels
  are cut in place; a latency target's measured result is recorded (``latency``).
* ``auto.mixed``: sensitivity (quantization only) then ``mixed_precision`` for a packed-file
  budget: ``budget_bytes``, or ``size_like=w``, the size of the file of the same model with
  every layer at weight precision ``w`` (uniform), measured; or ``smallest_within_loss`` for
  ``max_loss`` (the smallest file whose accuracy on the search batches is within it). The
  model is then quantized in place with the chosen precisions; as with ``quant.quantize``,
  binary layers centre and clip their own latent weights (no call after each step).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.auto.budget import BudgetPruneConfig, prune_to_budget
from netshrink.auto.groups import GroupPruner
from netshrink.auto.mixed import (
    DEFAULT_CANDIDATES,
    apply_precisions,
    mixed_precision,
    smallest_within_loss,
)
from netshrink.auto.sensitivity import SensitivityConfig, analyze_sensitivity
from netshrink.core import Stage, check_float, check_int, register_stage
from netshrink.prune import apply_plan_, apply_structure_, channel_structure, tensor_structure
from netshrink.quant import (
    PRECISIONS,
    QuantConfig,
    quantizable_layers,
    quantize_,
    save_packed,
)


class _SearchData:
    """Accuracy on the first ``eval_batches`` batches; BN re-estimation on the rest."""

    def __init__(self, batches: list[Any] | None, eval_batches: int, kind: str) -> None:
        if not batches or len(batches) <= eval_batches:
            raise ValueError(f"{kind} needs more than eval_batches={eval_batches} training "
                             f"batches (use_data), got {len(batches or [])}")
        self.eval = batches[:eval_batches]
        self.calib = batches[eval_batches:]
        self.example = batches[0][0][:1]  # traces the model, counts its MACs

    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        device = next(model.parameters()).device
        correct = total = 0
        for x, y in self.eval:
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += y.numel()
        return correct / total

    @torch.no_grad()
    def recalibrate(self, model: nn.Module) -> None:
        bns = [m for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        device = next(model.parameters()).device
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for x, _ in self.calib:
            model(x.to(device))
        model.eval()


@dataclasses.dataclass(frozen=True)
class AutoPruneConfig:
    """``macs_target``, ``latency_target`` / ``latency_seconds`` or ``max_loss``
    (``BudgetPruneConfig``), the sensitivity ``ratios`` and ``criterion``, the greedy ``step``,
    ``eval_batches`` (see the module docstring); ``structure`` / ``amounts`` /
    ``search_seconds`` (and ``latency``) are recorded by the stage."""

    macs_target: float | None = None
    max_loss: float | None = None
    latency_target: float | None = None
    latency_seconds: float | None = None
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    criterion: str = "l1"
    step: float = 0.05
    eval_batches: int = 2
    structure: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    amounts: dict[str, float] = dataclasses.field(default_factory=dict)
    search_seconds: float = 0.0
    latency: dict[str, float] = dataclasses.field(default_factory=dict)

    def budget(self) -> BudgetPruneConfig:
        return BudgetPruneConfig(macs_target=self.macs_target, max_loss=self.max_loss,
                                 step=self.step, latency_target=self.latency_target,
                                 latency_seconds=self.latency_seconds)

    def __post_init__(self) -> None:
        self.budget()  # validates them
        object.__setattr__(self, "ratios", SensitivityConfig(
            prune_ratios=self.ratios, precisions=(), criterion=self.criterion).prune_ratios)
        check_int("eval_batches", self.eval_batches, min_value=1)
        if not isinstance(self.structure, Mapping):
            raise ValueError(f"structure={self.structure!r} must map module names to shapes")


@register_stage("auto.prune")
class AutoPruneStage(Stage):
    """Budget-driven channel pruning in a recipe (see the module docstring)."""

    config_class = AutoPruneConfig

    def __init__(self, config: AutoPruneConfig) -> None:
        super().__init__(config)
        self.batches: list[Any] | None = None
        self.record: dict[str, Any] = {}

    def use_data(self, batches: list[Any]) -> None:
        self.batches = batches

    def apply(self, model: nn.Module) -> nn.Module:
        """Search, then cut the chosen channels of ``model`` in place."""
        c = self.config
        start = time.perf_counter()
        data = _SearchData(self.batches, c.eval_batches, "auto.prune")
        example = data.example
        was_training = model.training
        pruner = GroupPruner(model, example, criterion=c.criterion)
        sens = analyze_sensitivity(
            model, example, data.accuracy,
            SensitivityConfig(prune_ratios=c.ratios, precisions=(), criterion=c.criterion),
            prepare=data.recalibrate)
        _, report = prune_to_budget(
            model, example, sens, c.budget(),
            evaluate=data.accuracy if c.max_loss is not None else None,
            prepare=data.recalibrate, pruner=pruner)
        plan = pruner.plan(report.amounts)
        apply_plan_(model, plan)
        model.train(was_training)
        structure = channel_structure(model, list(plan.modules))
        structure.update(tensor_structure(model, plan))  # cut layer scales, rewritten splits
        self.record = {"structure": structure,
                       "amounts": {g: round(a, 6) for g, a in report.amounts.items()},
                       "search_seconds": round(time.perf_counter() - start, 3)}
        if report.latency is not None:
            self.record["latency"] = report.latency
        return model

    def rebuild(self, model: nn.Module) -> nn.Module:
        return apply_structure_(model, dict(self.record.get("structure", self.config.structure)))

    def describe(self) -> dict[str, Any]:
        record = super().describe()
        record["config"].update(self.record)
        return record


@dataclasses.dataclass(frozen=True)
class AutoMixedConfig:
    """``budget_bytes``, ``size_like`` (a weight precision: the budget is the measured file
    of the model with every layer at it) or ``max_loss`` (accuracy loss allowed), the
    ``candidates``, activation precision ``a``, ``eval_batches``; ``precisions`` / ``budget``
    / ``search_seconds`` are recorded."""

    budget_bytes: int | None = None
    size_like: Any = None
    max_loss: float | None = None
    candidates: tuple[Any, ...] = DEFAULT_CANDIDATES
    a: Any = 32
    eval_batches: int = 2
    precisions: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget: int = 0
    search_seconds: float = 0.0

    def __post_init__(self) -> None:
        given = (self.budget_bytes, self.size_like, self.max_loss)
        if sum(v is not None for v in given) != 1:
            raise ValueError(f"budget_bytes={self.budget_bytes!r}, size_like={self.size_like!r}"
                             f", max_loss={self.max_loss!r}: give exactly one of them")
        if self.max_loss is not None:
            check_float("max_loss", self.max_loss, min_value=0.0)
        if self.budget_bytes is not None:
            check_int("budget_bytes", self.budget_bytes, min_value=1)
        candidates = tuple(self.candidates)
        SensitivityConfig(prune_ratios=(), precisions=tuple(p for p in candidates if p != 32))
        object.__setattr__(self, "candidates", candidates)
        for name in ("size_like", "a"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value not in PRECISIONS):
                raise ValueError(f"{name}={value!r} is not a precision; allowed: "
                                 f"{', '.join(map(repr, PRECISIONS))}")
        check_int("eval_batches", self.eval_batches, min_value=1)


def _pairs(model: nn.Module, precisions: Mapping[str, Any], a: Any) -> dict[str, tuple]:
    first = quantizable_layers(model)[0][0]
    return {n: (int(w) if str(w).isdigit() else w, 32 if n == first else a)
            for n, w in precisions.items()}


@register_stage("auto.mixed")
class AutoMixedStage(Stage):
    """Mixed-precision weights for a packed-size budget in a recipe (module docstring)."""

    config_class = AutoMixedConfig

    def __init__(self, config: AutoMixedConfig) -> None:
        super().__init__(config)
        self.batches: list[Any] | None = None
        self.record: dict[str, Any] = {}

    def use_data(self, batches: list[Any]) -> None:
        self.batches = batches

    def apply(self, model: nn.Module) -> nn.Module:
        """Search, then quantize ``model`` in place with the chosen precisions."""
        c = self.config
        start = time.perf_counter()
        data = _SearchData(self.batches, c.eval_batches, "auto.mixed")
        example = data.example
        was_training = model.training
        quantized = [p for p in c.candidates if p != 32]
        sens = analyze_sensitivity(model, example, data.accuracy,
                                   SensitivityConfig(prune_ratios=(), precisions=quantized),
                                   prepare=data.recalibrate)
        with tempfile.TemporaryDirectory() as tmp:
            budget = c.budget_bytes
            if c.max_loss is not None:
                _, report = smallest_within_loss(
                    copy.deepcopy(model), sens, c.max_loss, data.accuracy,
                    Path(tmp) / "m.safetensors", prepare=data.recalibrate,
                    candidates=c.candidates, a=c.a)
                budget = report.file_bytes
            elif budget is None:
                uniform = apply_precisions(
                    model, dict.fromkeys(dict(quantizable_layers(model)), c.size_like), c.a)
                budget = save_packed(uniform.eval(), Path(tmp) / "u.safetensors").stat().st_size
            if c.max_loss is None:
                _, report = mixed_precision(copy.deepcopy(model), sens, budget,
                                            Path(tmp) / "m.safetensors",
                                            candidates=c.candidates, a=c.a)
        chosen = {n: str(p) for n, p in report.allocation.precisions.items()}
        quantize_(model, QuantConfig(w=32, a=32), precisions=_pairs(model, chosen, c.a))
        model.train(was_training)
        self.record = {"precisions": chosen, "budget": budget,
                       "search_seconds": round(time.perf_counter() - start, 3)}
        return model

    def rebuild(self, model: nn.Module) -> nn.Module:
        chosen = self.record.get("precisions", self.config.precisions)
        if not chosen:
            raise ValueError("auto.mixed has no recorded precisions to rebuild from")
        return quantize_(model, QuantConfig(w=32, a=32),
                         precisions=_pairs(model, chosen, self.config.a))

    def describe(self) -> dict[str, Any]:
        record = super().describe()
        record["config"].update(self.record)
        return record
