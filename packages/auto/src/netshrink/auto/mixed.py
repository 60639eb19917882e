"""Mixed precision: per-layer weight precisions that meet a packed-file size with the least
summed sensitivity loss.

``allocate_precisions(model, sensitivity, budget_bytes)`` predicts each layer's stored bytes
at each candidate precision (packed codes plus the per-channel scales ternary / binary store)
and picks one precision per layer by the exact multiple-choice knapsack (``knapsack``), the
loss of a choice being the accuracy drop ``SensitivityResult.quant_loss`` measured for that
layer alone (summed: the usual additive approximation, as HAWQ's).

``mixed_precision(model, sensitivity, budget_bytes, path)`` then quantizes a copy with those
precisions (``netshrink.quant.quantize_(..., precisions=...)``), writes the packed file and
reads its size: everything else the file stores (biases, BatchNorms, scales, the structure)
is taken from the measured file, and while the file is over the budget the code budget is set
that far under the allocation's own bytes and the allocation is solved again, so the budget
holds *as measured*.

``smallest_within_loss(model, sensitivity, max_loss, evaluate)`` is the other mode (the
compression survey's accuracy-guaranteed AMC mode): the smallest file whose *measured* accuracy
loss is within ``max_loss``. The least weight budget whose least-loss allocation predicts a
summed loss within an allowance (``max_loss`` at first) is found by bisection over bytes (the
knapsack's optimum never rises with the budget), to 1 % of the byte range; the result is
written and evaluated, and while its measured loss is over ``max_loss`` the allowance halves
(``MAX_ROUNDS`` tries, the last allowing no predicted loss). Cost: ~7 knapsack solves and one
evaluation per round.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from netshrink.auto.knapsack import auto_granularity, solve_mckp
from netshrink.auto.sensitivity import Evaluate, Prepare, SensitivityResult, _score
from netshrink.core import check_float
from netshrink.quant import QuantConfig, quantizable_layers, quantize_, save_packed
from netshrink.quant.bitpack import packed_nbytes

DEFAULT_CANDIDATES: tuple[Any, ...] = (8, 4, 2, "ternary", "binary")
#: Re-solves allowed when the written file is over the budget.
MAX_ROUNDS = 6
_CODE_BITS = {8: 8, 4: 4, 3: 3, 2: 2, "ternary": 1.6, "binary": 1}


def weight_bytes(layer: nn.Module, precision: Any) -> int:
    """Bytes ``layer``'s weight takes in a packed file at ``precision`` (codes, plus one
    float32 scale per output channel for ternary / binary)."""
    n = layer.weight.numel()
    if precision == 32:
        return 4 * n
    if precision == 16:
        return 2 * n
    if precision not in _CODE_BITS:
        raise ValueError(f"precision {precision!r} is not allowed; allowed: 32, 16, "
                         f"{', '.join(map(repr, _CODE_BITS))}")
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    scales = 4 * out if precision in ("ternary", "binary") else 0
    return packed_nbytes(n, _CODE_BITS[precision]) + scales


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Per-layer weight precisions, their predicted weight bytes and summed loss."""

    precisions: dict[str, Any]
    weight_bytes: int
    loss: float
    granularity: int


def allocate_precisions(model: nn.Module, sensitivity: SensitivityResult, weight_budget: int,
                        candidates: Sequence[Any] = DEFAULT_CANDIDATES,
                        granularity: int | None = None) -> Allocation:
    """The least-loss precisions whose weights fit ``weight_budget`` bytes (see the module
    docstring); ``granularity`` (bytes per DP cell) defaults to ``auto_granularity``."""
    layers = quantizable_layers(model)
    missing = [(n, p) for n, _ in layers for p in candidates
               if p != 32 and p not in sensitivity.quant.get(n, {})]
    if missing:
        raise ValueError(f"the sensitivity result has no measurement for {missing[:4]} ...; "
                         "analyse with these precisions first")
    items = {name: [(weight_bytes(m, p), sensitivity.quant_loss(name, p)) for p in candidates]
             for name, m in layers}
    g = granularity or auto_granularity(weight_budget)
    picked, loss, cost = solve_mckp(items, weight_budget, g)
    return Allocation({n: candidates[j] for n, j in picked.items()}, cost, loss, g)


@dataclasses.dataclass(frozen=True)
class MixedPrecisionReport:
    """What ``mixed_precision`` did: the allocation, the budget and the file's real size."""

    allocation: Allocation
    budget_bytes: int
    file_bytes: int
    rounds: int
    accuracy: float | None = None  # measured (smallest_within_loss)
    baseline: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"precisions": {k: str(v) for k, v in self.allocation.precisions.items()},
                "predicted_weight_bytes": self.allocation.weight_bytes,
                "sensitivity_loss": self.allocation.loss,
                "granularity": self.allocation.granularity,
                "budget_bytes": self.budget_bytes, "file_bytes": self.file_bytes,
                "rounds": self.rounds, "accuracy": self.accuracy, "baseline": self.baseline}


def apply_precisions(model: nn.Module, precisions: dict[str, Any], a: Any = 32) -> nn.Module:
    """A quantized deep copy: each layer's weights at its precision, activations at ``a``
    (the first layer's input, the data, stays float)."""
    first = quantizable_layers(model)[0][0]
    pairs = {n: (w, 32 if n == first else a) for n, w in precisions.items()}
    return quantize_(copy.deepcopy(model), QuantConfig(w=32, a=32), precisions=pairs)


def mixed_precision(model: nn.Module, sensitivity: SensitivityResult, budget_bytes: int,
                    path: str | os.PathLike[str] | None = None, *,
                    candidates: Sequence[Any] = DEFAULT_CANDIDATES, a: Any = 32,
                    granularity: int | None = None) -> tuple[nn.Module, MixedPrecisionReport]:
    """Quantize a copy of ``model`` to fit a packed file of at most ``budget_bytes`` (measured
    by writing it to ``path``, or a temporary file); see the module docstring."""
    layers = dict(quantizable_layers(model))
    top = max(candidates, key=lambda p: sum(weight_bytes(m, p) for m in layers.values()))
    base = apply_precisions(model, dict.fromkeys(layers, top), a)
    overhead = _file_bytes(base, path) - sum(weight_bytes(m, top) for m in layers.values())
    weight_budget = budget_bytes - overhead
    for rounds in range(1, MAX_ROUNDS + 1):
        if weight_budget < 0:
            break
        try:
            allocation = allocate_precisions(model, sensitivity, weight_budget, candidates,
                                             granularity)
        except ValueError as err:
            raise ValueError(f"budget_bytes={budget_bytes} cannot be met: {err}") from err
        quantized = apply_precisions(model, allocation.precisions, a)
        size = _file_bytes(quantized, path)
        if size <= budget_bytes:
            return quantized, MixedPrecisionReport(allocation, budget_bytes, size, rounds)
        # under this allocation's own bytes by the excess: the next one must be smaller (the
        # budget less the excess alone may still hold this same allocation, again and again)
        weight_budget = min(weight_budget, allocation.weight_bytes) - (size - budget_bytes)
    raise ValueError(f"budget_bytes={budget_bytes} cannot be met: the packed file stays "
                     f"larger after {MAX_ROUNDS} allocations; allow more bytes")


def smallest_within_loss(model: nn.Module, sensitivity: SensitivityResult, max_loss: float,
                         evaluate: Evaluate, path: str | os.PathLike[str] | None = None, *,
                         prepare: Prepare | None = None,
                         candidates: Sequence[Any] = DEFAULT_CANDIDATES, a: Any = 32,
                         granularity: int | None = None,
                         ) -> tuple[nn.Module, MixedPrecisionReport]:
    """The smallest packed file (written to ``path`` or a temporary file) whose accuracy, by
    ``evaluate`` after ``prepare`` (e.g. BatchNorm re-estimation, run on the returned model),
    is at most ``max_loss`` below ``sensitivity.baseline``; see the module docstring."""
    check_float("max_loss", max_loss, min_value=0.0)
    layers = dict(quantizable_layers(model))
    totals = [sum(weight_bytes(m, p) for m in layers.values()) for p in candidates]
    baseline = sensitivity.baseline
    measured: list[float] = []

    def fits(budget: int, allowance: float) -> Allocation | None:
        try:
            alloc = allocate_precisions(model, sensitivity, budget, candidates, granularity)
        except ValueError:  # below the cheapest choice at this granularity
            return None
        return alloc if alloc.loss <= allowance else None

    allowance = max_loss
    for rounds in range(1, MAX_ROUNDS + 1):
        if rounds == MAX_ROUNDS:
            allowance = 0.0
        lo, hi = min(totals), max(totals)
        best = fits(hi, allowance) or allocate_precisions(model, sensitivity, hi, candidates,
                                                          granularity)
        while hi - lo > max(1, (max(totals) - min(totals)) // 100):
            mid = (lo + hi) // 2
            found = fits(mid, allowance)
            if found is None:
                lo = mid
            else:
                hi, best = mid, found
        found = fits(lo, allowance)  # the cheapest budget itself may already do
        best = found or best
        quantized = apply_precisions(model, best.precisions, a)
        size = _file_bytes(quantized, path)
        measured.append(_score(quantized, evaluate, prepare))
        if baseline - measured[-1] <= max_loss:
            return quantized, MixedPrecisionReport(best, size, size, rounds, measured[-1],
                                                   baseline)
        allowance /= 2
    raise ValueError(f"max_loss={max_loss!r} cannot be met: the allocations measured "
                     f"{', '.join(f'{m:.4f}' for m in measured)} against the baseline "
                     f"{baseline:.4f}; allow more loss or add higher precisions to candidates")


def _file_bytes(model: nn.Module, path: str | os.PathLike[str] | None) -> int:
    if path is not None:
        return save_packed(model.eval(), path).stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        return save_packed(model.eval(), Path(tmp) / "m.safetensors").stat().st_size
