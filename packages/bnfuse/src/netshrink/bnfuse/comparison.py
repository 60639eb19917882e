"""compare(): how closely a fused model reproduces its reference, on real batches.

Non-finite logits (NaN or infinite, on either side) make the comparison fail: a NaN difference
compares False with every tolerance, and the arg-max of NaN logits agrees with itself, so
without this a broken model would "agree 100 %". Such a report has ``ok`` False, says how many
samples had non-finite outputs, and leaves the differences and the agreement undefined (None).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class CompareReport:
    """Logit agreement of ``fused`` with ``reference`` over ``samples`` inputs.

    ``max_rel_diff`` is, over samples, the largest ``max|fused - ref| / max|ref|`` (each
    sample's logits compared at the scale of its own largest reference logit).
    ``top1_agreement`` is the fraction of samples with the same arg-max. The accuracies are
    None unless every batch came with labels (and a side's accuracy is None when its logits
    are not all finite). ``non_finite_reference`` / ``non_finite_fused``
    count the samples whose logits hold a NaN or infinity; if any does, the differences and
    the agreement are None and ``ok`` is False.
    """

    samples: int
    max_abs_diff: float | None
    max_rel_diff: float | None
    top1_agreement: float | None
    reference_accuracy: float | None = None
    fused_accuracy: float | None = None
    non_finite_reference: int = 0
    non_finite_fused: int = 0

    @property
    def non_finite(self) -> int:
        """Samples with a non-finite logit on either side (counted once per side)."""
        return self.non_finite_reference + self.non_finite_fused

    @property
    def ok(self) -> bool:
        """Every logit finite on both sides and every difference a finite number: only then
        do the numbers mean anything (it says nothing about how large they are)."""
        values = (self.max_abs_diff, self.max_rel_diff, self.top1_agreement)
        return self.non_finite == 0 and all(v is not None and math.isfinite(v) for v in values)

    def within(self, abs_tol: float, rel_tol: float | None = None) -> bool:
        """``ok`` and the differences at most the tolerances (written so that NaN fails)."""
        if not self.ok:
            return False
        assert self.max_abs_diff is not None and self.max_rel_diff is not None
        return self.max_abs_diff <= abs_tol and (rel_tol is None or self.max_rel_diff <= rel_tol)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, with ``ok``; never holds NaN or infinity."""
        return {**asdict(self), "ok": self.ok}

    def __str__(self) -> str:
        lines = [f"compared on {self.samples} samples"]
        if self.non_finite:
            lines += [f"  FAILED: non-finite outputs: reference {self.non_finite_reference} of "
                      f"{self.samples} samples, fused {self.non_finite_fused} of {self.samples}",
                      "  differences and top-1 agreement are undefined"]
        else:
            lines += [f"  max |logit diff|        {self.max_abs_diff:.3e}",
                      f"  max relative logit diff {self.max_rel_diff:.3e}",
                      f"  top-1 agreement         {100 * self.top1_agreement:.2f}%"]
        if self.reference_accuracy is not None and self.fused_accuracy is not None:
            lines.append(f"  accuracy                reference {100 * self.reference_accuracy:.2f}%"
                         f", fused {100 * self.fused_accuracy:.2f}%")
        return "\n".join(lines)


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"a batch must be a tensor or an (inputs, labels) pair, got "
                    f"{type(batch).__name__}")


def _device(model: nn.Module) -> torch.device | None:
    t = next(iter((*model.parameters(), *model.buffers())), None)
    return None if t is None else t.device


@torch.no_grad()
def compare(reference: nn.Module, fused: nn.Module,
            batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> CompareReport:
    """Run both models (in eval mode; their modes are restored after) on every batch.

    ``batches`` yields input tensors or ``(inputs, labels)`` pairs; inputs go to the
    reference model's device. Accuracy needs labels on every batch.
    """
    modes = (reference.training, fused.training)
    reference.eval()
    fused.eval()
    device = _device(reference)
    samples = labelled = agree = ref_correct = fused_correct = bad_ref = bad_out = 0
    max_abs = max_rel = torch.zeros((), dtype=torch.float64)  # torch.maximum keeps NaNs
    try:
        for batch in batches:
            x, y = _split(batch)
            if device is not None:
                x = x.to(device)
            ref = reference(x).flatten(1).double()
            out = fused(x).flatten(1).double()
            bad_ref += int((~torch.isfinite(ref)).any(dim=1).sum())
            bad_out += int((~torch.isfinite(out)).any(dim=1).sum())
            diff = (out - ref).abs().amax(dim=1)
            scale = ref.abs().amax(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
            max_abs = torch.maximum(max_abs, diff.max().cpu())
            max_rel = torch.maximum(max_rel, (diff / scale).max().cpu())
            ref_top, out_top = ref.argmax(dim=1), out.argmax(dim=1)
            agree += int((ref_top == out_top).sum())
            samples += ref.shape[0]
            if y is not None:
                y = y.to(ref_top.device)
                labelled += ref.shape[0]
                ref_correct += int((ref_top == y).sum())
                fused_correct += int((out_top == y).sum())
    finally:
        reference.train(modes[0])
        fused.train(modes[1])
    if samples == 0:
        raise ValueError("compare needs at least one non-empty batch")
    if labelled not in (0, samples):
        raise ValueError(f"labels came with {labelled} of {samples} samples; give labels with "
                         f"every batch or with none")
    acc = (ref_correct / samples, fused_correct / samples) if labelled else (None, None)
    if bad_ref or bad_out:  # an accuracy from NaN logits is not a measurement either
        return CompareReport(samples, None, None, None, None if bad_ref else acc[0],
                             None if bad_out else acc[1], non_finite_reference=bad_ref,
                             non_finite_fused=bad_out)
    return CompareReport(samples, max_abs.item(), max_rel.item(), agree / samples, *acc)
