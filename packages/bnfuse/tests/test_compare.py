"""compare(): the numbers it reports, on models with known differences."""

import math

import pytest
import torch
from torch import nn

from netshrink.bnfuse import CompareReport, compare


class Fixed(nn.Module):
    """Returns preset logits for each batch index it is called with (x holds the index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long()]


def test_differences_agreement_and_accuracy_are_counted() -> None:
    ref = torch.tensor([[2.0, 1.0, 0.0], [0.0, 4.0, 1.0], [1.0, 0.0, 3.0], [0.0, 0.0, -1.0]])
    out = ref.clone()
    out[1, 2] = 5.0   # sample 1: top-1 changes, |diff| 4, relative 4 / 4 = 1
    out[2, 0] = 1.3   # sample 2: |diff| 0.3, relative 0.1
    batches = [(torch.tensor([0, 1]), torch.tensor([0, 1])),
               (torch.tensor([2, 3]), torch.tensor([2, 1]))]
    report = compare(Fixed(ref), Fixed(out), batches)
    assert report.samples == 4
    assert report.max_abs_diff == pytest.approx(4.0)
    assert report.max_rel_diff == pytest.approx(1.0)
    assert report.top1_agreement == 0.75
    assert report.reference_accuracy == 0.75   # sample 3's arg-max is 0, label 1
    assert report.fused_accuracy == 0.5
    text = str(report)
    assert "4 samples" in text and "75.00%" in text and "reference 75.00%, fused 50.00%" in text


def test_without_labels_there_is_no_accuracy_and_nan_fails_the_comparison() -> None:
    ref = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    out = ref.clone()
    out[1, 1] = math.nan
    report = compare(Fixed(ref), Fixed(out), [torch.tensor([0, 1])])
    assert report.reference_accuracy is None and report.fused_accuracy is None
    assert report.non_finite_fused == 1 and report.non_finite_reference == 0
    assert not report.ok and not report.within(1e9, 1e9)
    assert report.max_abs_diff is None and report.top1_agreement is None
    text = str(report)
    assert "accuracy" not in text and "FAILED: non-finite outputs" in text
    assert "fused 1 of 2" in text and "%" not in text  # no agreement figure is shown
    assert isinstance(report, CompareReport) and report.as_dict()["ok"] is False


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_on_either_side_never_pass(bad: float) -> None:
    """All-NaN logits on both sides used to report 100 % top-1 agreement (arg-max of NaN rows
    agrees with itself) and a NaN max difference, which ``not (nan > tol)`` lets through."""
    import json

    logits = torch.full((3, 4), bad)
    report = compare(Fixed(logits), Fixed(logits.clone()),
                     [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))])
    assert not report.ok and not report.within(math.inf)
    assert report.non_finite_reference == 3 and report.non_finite_fused == 3
    assert report.top1_agreement is None and report.reference_accuracy is None
    assert "100.00%" not in str(report) and "reference 3 of 3 samples" in str(report)
    json.dumps(report.as_dict(), allow_nan=False)  # standard JSON: no NaN token
    good = torch.randn(3, 4)
    one_side = compare(Fixed(good), Fixed(torch.where(torch.arange(4) == 2, bad, good)),
                       [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))])
    assert not one_side.ok and one_side.non_finite_fused == 3
    assert one_side.reference_accuracy is not None and one_side.fused_accuracy is None


def test_within_compares_the_differences() -> None:
    ref = torch.tensor([[1.0, 2.0]])
    report = compare(Fixed(ref), Fixed(ref + 0.5), [torch.tensor([0])])
    assert report.ok and report.within(0.5, 0.25) and not report.within(0.4)
    assert not report.within(0.5, 0.2)


def test_identical_models_and_restored_modes() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    report = compare(model, model, [torch.randn(8, 4) for _ in range(2)])
    assert report.max_abs_diff == 0.0 and report.top1_agreement == 1.0  # both run in eval
    assert model.training


def test_bad_batches_are_rejected() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="at least one non-empty batch"):
        compare(model, model, [])
    with pytest.raises(ValueError, match="labels came with 2 of 4 samples"):
        compare(model, model, [(torch.randn(2, 2), torch.tensor([0, 1])), torch.randn(2, 2)])
    with pytest.raises(TypeError, match="tensor or an \\(inputs, labels\\) pair"):
        compare(model, model, [{"x": torch.randn(2, 2)}])
