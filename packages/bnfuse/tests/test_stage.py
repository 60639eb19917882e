"""The bnfuse.fuse stage: registered, JSON-described, and rebuildable for checkpoints."""

import json

import pytest
import torch
from bnfuse_testing import BinaryConv2d, randomize_bn
from torch import nn

from netshrink.bnfuse import FuseConfig, FuseStage
from netshrink.core import STAGES, apply_recipe_, stage_from_description


def _net() -> nn.Sequential:
    """conv -> max-pool -> BN -> sign-input binary conv -> BN: the first BN folds as a
    threshold through the pool only when its scales are >= 0."""
    torch.manual_seed(0)
    binary = BinaryConv2d.from_conv(nn.Conv2d(4, 4, 1))
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(4),
                         nn.Hardtanh(), binary, nn.BatchNorm2d(4), nn.ReLU())


def test_registered_and_applied_through_a_recipe() -> None:
    assert STAGES.get("bnfuse.fuse") is FuseStage
    model = randomize_bn(_net(), seed=1, negative=0.0).eval()
    stage = FuseStage(FuseConfig())
    fused = apply_recipe_(model, [stage])
    assert stage.report is not None and stage.report.folded_names == ("2", "5")
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="needs a FuseConfig"):
        FuseStage({"binary": True})


def test_describe_records_what_folded_and_rebuild_reproduces_the_structure() -> None:
    model = randomize_bn(_net(), seed=2, negative=0.0).eval()
    stage = FuseStage()
    assert stage.describe() == {"kind": "bnfuse.fuse",
                                "config": {"binary": True, "into_next": True, "only": None}}
    fused = stage.apply(model)
    record = json.loads(json.dumps(stage.describe()))
    assert record["config"]["only"] == ["2", "5"]
    # a fresh model whose BN 2 has negative scales would not fold through the pool on its own
    fresh = _net()
    with torch.no_grad():
        fresh[2].weight.fill_(-1.0)
    with pytest.raises(ValueError, match="no longer fold: 2: a sign-threshold fold through"):
        stage_from_description(record).rebuild(fresh)
    rebuilt = stage_from_description(record).rebuild(_net())
    rebuilt.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(rebuilt(x), fused(x))


def test_fused_zoo_model_checkpoint_round_trip(tmp_path) -> None:
    models = pytest.importorskip("netshrink.models")
    torch.manual_seed(0)
    model = randomize_bn(models.create_model("nin", width=0.125, block_order="bacp"),
                         seed=3).eval()
    stage = FuseStage()
    fused = apply_recipe_(model, [stage])
    path = models.save_model(tmp_path / "fused.safetensors", fused, recipe=[stage])
    loaded = models.load_model(path)
    assert not any(isinstance(m, nn.BatchNorm2d) and n not in ("features.bn3", "features.bn6")
                   for n, m in loaded.named_modules())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), fused(x))
