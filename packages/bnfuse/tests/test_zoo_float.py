"""Float folds on the model zoo: logits unchanged within rounding, no BN left after a layer."""

import pytest
import torch
import torch.fx
from bnfuse_testing import randomize_bn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from netshrink.bnfuse import compare, fuse, fuse_report

models = pytest.importorskip("netshrink.models")

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)

CASES = [
    ("nin", {"width": 0.25}),
    ("nin", {"width": 0.25, "block_order": "bacp"}),
    ("nin", {"width": 0.25, "block_order": "bacp", "act": "identity"}),
    ("nin_gc", {"width": 0.125}),
    ("nin_gc", {"width": 0.125, "block_order": "bacp"}),
    ("mobilenet_student", {"width": 0.25}),
    ("resnet18_cifar", {"width": 0.25}),
    ("tv:resnet18", {}),
    ("tv:mobilenet_v2", {}),
]


def _bns_after_a_layer(model: nn.Module) -> list[str]:
    """BN modules whose input comes straight from a conv or linear module (plain fx trace)."""
    gm = torch.fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    return [str(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(mods[n.target], _BatchNorm)
            and n.args[0].op == "call_module" and isinstance(mods[n.args[0].target], LAYERS)]


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_float_fold(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = randomize_bn(models.create_model(name, **kwargs), seed=1).eval()
    assert _bns_after_a_layer(model)  # the check below can fail
    x = torch.randn(4, 3, 32, 32)

    fused = fuse(model)

    report = fuse_report(fused)
    assert _bns_after_a_layer(fused) == []
    # float32 weights: the fold's only error is rounding the folded weights once
    result = compare(model, fused, [x])
    assert result.max_rel_diff < 1e-5 and result.top1_agreement == 1.0
    # float64: the closed form itself is exact to ~1e-15, so any formula slip shows here
    model64 = model.double()
    fused64 = fuse(model64)
    assert compare(model64, fused64, [x.double()]).max_rel_diff < 1e-11

    left = set(report.left_names)
    assert left == {n for n, m in fused.named_modules() if isinstance(m, _BatchNorm)}
    if kwargs.get("block_order") == "bacp":
        # bn3 and bn6 normalise a max-pool's output: they stay, with the reason
        assert left == {"features.bn3", "features.bn6"}
        reason = report.reason("features.bn3")
        assert reason.startswith("follows features.pool1 (MaxPool2d), not a conv or linear")
        if kwargs.get("act") == "identity":  # then bn3 directly feeds conv4 (5x5, padded)
            assert "it precedes a padded conv features.conv4" in reason
    else:
        assert left == set()
