"""The prune stages: slimming penalty, channel pruning (hard and soft) and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from netshrink.core import (
    STAGES,
    load_checkpoint,
    save_checkpoint,
    stage_from_description,
)
from netshrink.prune import (
    ChannelPruneConfig,
    ChannelPruneStage,
    ChannelPruneStageConfig,
    SlimmingConfig,
    SlimmingStage,
)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Linear(6, 4))


def test_stage_kinds_are_registered():
    assert {"prune.slimming", "prune.channels", "prune.magnitude"} <= set(STAGES.names())


def test_slimming_penalty_is_s_times_l1_of_every_bn_scale_and_its_gradient_is_s_sign():
    model = _net()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-1, 1, 8))
    stage = SlimmingStage(SlimmingConfig(s=1e-3))
    assert stage.apply(model) is model
    gammas = [model[1].weight, model[4].weight, model[9].weight]
    expected = 1e-3 * sum(g.abs().sum() for g in gammas)
    loss = stage.extra_loss(model)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.allclose(model[1].weight.grad, 1e-3 * torch.linspace(-1, 1, 8).sign())
    assert model[0].weight.grad is None
    hist = stage.histograms(model)["prune/bn_abs_gamma"]
    assert hist.shape == (8 + 12 + 6,) and bool((hist >= 0).all())


def test_slimming_ignores_layers_and_validates():
    stage = SlimmingStage(SlimmingConfig(s=1.0, ignored_layers=["4", "9"]))
    model = _net()
    assert torch.allclose(stage.extra_loss(model), model[1].weight.abs().sum())
    with pytest.raises(ValueError, match="s=-1.0 must be at least 0"):
        SlimmingConfig(s=-1.0)
    record = stage.describe()
    assert record == {"kind": "prune.slimming",
                      "config": {"s": 1.0, "ignored_layers": ["4", "9"]}}
    assert stage_from_description(json.loads(json.dumps(record))).config == stage.config


def _stage(amount: float = 0.5, soft: bool = False) -> ChannelPruneStage:
    return ChannelPruneStage(ChannelPruneStageConfig(
        prune=ChannelPruneConfig(criterion="l2", amount=amount, scope="per_layer"),
        input_shape=(1, 3, 8, 8), soft=soft))


def test_channel_stage_records_counts_and_a_checkpoint_round_trips(tmp_path):
    model = _net().eval()
    stage = _stage()
    pruned = stage.apply(model)
    assert pruned[3].out_channels == 6 and pruned[8].out_features == 3
    record = json.loads(json.dumps(stage.describe()))
    assert record["kind"] == "prune.channels"
    assert record["config"]["structure"]["3"] == {"in_channels": 4, "out_channels": 6,
                                                  "groups": 1}
    assert record["config"]["structure"]["9"] == {"num_features": 3}
    path = save_checkpoint(tmp_path / "pruned.safetensors", pruned, meta={"recipe": [record]})

    ckpt = load_checkpoint(path)
    fresh = _net()
    for rec in ckpt.meta["recipe"]:
        fresh = stage_from_description(rec).rebuild(fresh)
    fresh.load_state_dict(ckpt.model_state, strict=True)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(fresh.eval()(x), pruned.eval()(x))


def test_zoo_model_save_and_load_rebuild_the_pruned_structure(tmp_path):
    models = pytest.importorskip("netshrink.models")
    model = models.create_model("nin", width=0.25)
    stage = ChannelPruneStage(ChannelPruneStageConfig(
        prune=ChannelPruneConfig(criterion="bn_gamma", amount=0.5)))
    pruned = stage.apply(model).eval()
    path = models.save_model(tmp_path / "nin.safetensors", pruned, recipe=[stage])
    loaded = models.load_model(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), pruned(x))
    assert loaded.features.conv2.in_channels == pruned.features.conv2.in_channels < 48


def test_rebuild_rejects_a_structure_that_does_not_fit():
    stage = stage_from_description({"kind": "prune.channels", "config": {
        "structure": {"8": {"in_channels": 3, "out_channels": 3, "groups": 1}}}})
    with pytest.raises(ValueError, match="does not fit module '8'"):
        stage.rebuild(_net())
    stage = stage_from_description({"kind": "prune.channels", "config": {
        "structure": {"nope": {"num_features": 3}}}})
    with pytest.raises(ValueError, match="'nope' does not exist"):
        stage.rebuild(_net())


def test_soft_filter_pruning_zeroes_then_removes(randomize_bn):
    model = randomize_bn(_net())
    stage = _stage(soft=True)
    assert stage.apply(model) is model and model[3].out_channels == 12
    stage.after_epoch(model, 0, 3)
    zero_rows = (model[3].weight.flatten(1).abs().sum(1) == 0).sum().item()
    assert zero_rows == 6 and model[3].out_channels == 12  # zeroed, not removed
    # the zeroed filters keep training and can recover (those whose BN shift passes the ReLU)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 3, 8, 8)).square().sum().backward()
    opt.step()
    assert (model[3].weight.flatten(1).abs().sum(1) == 0).sum().item() < zero_rows
    stage.after_epoch(model, 1, 3)
    stage.after_epoch(model, 2, 3)  # the last epoch: removed physically
    assert model[3].out_channels == 6 and model[8].out_features == 3
    assert stage.describe()["config"]["structure"]["3"]["out_channels"] == 6


def test_stage_config_validation():
    with pytest.raises(ValueError, match="input_shape"):
        ChannelPruneStageConfig(input_shape=(1, 0, 8))
    with pytest.raises(ValueError, match="soft=1 is not allowed"):
        ChannelPruneStageConfig(soft=1)
    cfg = ChannelPruneStageConfig(prune={"criterion": "l1", "ignored_layers": ["a"]})
    assert cfg.prune == ChannelPruneConfig(criterion="l1", ignored_layers=("a",))
