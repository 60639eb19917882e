"""Issue 16, item 5: every public bnfuse function that takes a model keeps the naming rule
(``netshrink.core.call_checked``), and ``fuse`` is one verb: the fused copy, whose report is
``fuse_report(fused)``."""

import copy
import inspect

import pytest
import torch
from torch import nn

import netshrink.bnfuse as bnfuse
from netshrink.bnfuse import FuseReport, fuse, fuse_report
from netshrink.core import call_checked, takes_a_model

X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def _net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 2))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model.eval()


SCALE, SHIFT = torch.full((4,), 2.0), torch.full((4,), 0.5)
#: name -> (the model to call it on, the call's other arguments), built lazily
CASES = {
    "fuse": lambda: (_net(), ()),
    "fuse_report": lambda: (fuse(_net()), ()),
    "compare": lambda: (_net(), (fuse(_net()), [X])),
    "fold_output_affine_": lambda: (nn.Conv2d(3, 4, 3), (SCALE, SHIFT)),
    "fold_input_affine_": lambda: (nn.Conv2d(4, 2, 1), (SCALE, SHIFT)),
}


def test_every_public_function_taking_a_model_is_classified():
    public = {n for n in bnfuse.__all__ if inspect.isfunction(getattr(bnfuse, n))
              and takes_a_model(getattr(bnfuse, n))}
    assert public == set(CASES), "add the new function to CASES (docs/api-conventions.md)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bnfuse_functions_keep_the_naming_rule(name):
    model, args = CASES[name]()
    call_checked(getattr(bnfuse, name), model, *args)


def test_fuse_is_one_verb_and_the_report_travels_with_the_model():
    model = _net()
    fused = fuse(model)
    report = fuse_report(fused)
    assert isinstance(report, FuseReport) and [f.bn for f in report.folded] == ["1"]
    assert fuse_report(copy.deepcopy(fused)) == report
    torch.testing.assert_close(fused(X), model(X))
    with pytest.raises(ValueError, match="carries no fuse report"):
        fuse_report(model)
    with pytest.warns(DeprecationWarning, match="fuse_with_report is deprecated"):
        again, old_report = bnfuse.fuse_with_report(model)
    assert old_report == report and "fuse_with_report" not in bnfuse.__all__
    assert torch.equal(again(X), fused(X))
