"""Extension points of netshrink.prune: a user-registered prunable layer type and a
user-registered importance criterion (the snippets of docs/extending.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netshrink.core import stage_from_description
from netshrink.prune import (
    CRITERIA,
    ChannelPruneConfig,
    ChannelPruneStage,
    ChannelPruneStageConfig,
    CriterionContext,
    apply_plan_,
    find_pruner,
    l1_scores,
    list_criteria,
    plan_channels,
    prune_channels,
    register_criterion,
    register_pruner,
    registered_pruner,
    unregister_criterion,
    unregister_pruner,
)


class ChannelScale(nn.Module):
    """A learned per-channel scale (as a layer-scale), NCHW: ``x * scale[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class _ScaledNet(nn.Module):
    """conv -> custom per-channel scale -> ReLU -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = ChannelScale(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.scale(self.conv1(x))))


@torch.no_grad()
def prune_channel_scale(m: ChannelScale, keep: torch.Tensor) -> ChannelScale:
    """docs/extending.md, "A prunable layer type"."""
    new = ChannelScale(len(keep))
    new.scale.copy_(m.scale[keep])
    return new


def _model() -> _ScaledNet:
    torch.manual_seed(0)
    model = _ScaledNet().eval()
    with torch.no_grad():
        model.scale.scale.copy_(torch.linspace(0.5, 2.0, 8))
    return model


def test_registered_layer_is_pruned_exactly() -> None:
    model, x = _model(), torch.randn(2, 3, 8, 8)
    with registered_pruner(ChannelScale, prune_channel_scale, per_channel=True):
        plan = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))
        pruned = apply_plan_(copy.deepcopy(model), plan)
    assert set(plan.modules) == {"conv1", "scale", "conv2"}
    keep = torch.tensor(plan.modules["conv1"].out_idx)
    assert len(keep) == 4 and plan.modules["scale"].out_idx == tuple(keep.tolist())
    assert pruned.scale.scale.shape == (4,)
    assert pruned.conv1.weight.shape == (4, 3, 3, 3) and pruned.conv2.weight.shape == (4, 4, 3, 3)
    # the kept channels by hand: the slices of the original tensors
    assert torch.equal(pruned.scale.scale, model.scale.scale[keep])
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[keep])
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[:, keep])
    # and the outputs equal the unpruned model with the removed channels zeroed
    zeroed = copy.deepcopy(model)
    dropped = sorted(set(range(8)) - set(keep.tolist()))
    with torch.no_grad():
        zeroed.conv1.weight[dropped] = 0
        zeroed.conv1.bias[dropped] = 0
        expected, got = zeroed(x), pruned(x)
    assert (expected - got).abs().max().item() < 1e-5
    assert expected.abs().max().item() > 1e-3
    assert find_pruner(ChannelScale) is None  # the context manager unregistered it


def test_registered_layer_is_rebuilt_from_the_stage_record() -> None:
    model, x = _model(), torch.randn(2, 3, 8, 8)
    with registered_pruner(ChannelScale, prune_channel_scale, per_channel=True):
        stage = ChannelPruneStage(ChannelPruneStageConfig(
            prune=ChannelPruneConfig(criterion="l1", amount=0.5), input_shape=(1, 3, 8, 8)))
        pruned = stage.apply(copy.deepcopy(model))
        assert stage.structure["scale"] == {"channels": 4}
        fresh = stage_from_description(stage.describe()).rebuild(_model())
        fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


class EinsumScale(ChannelScale):
    """A per-channel scale applied through an op the analysis does not follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,c->nchw", x, self.scale)


def test_unregistered_layer_is_a_clear_error_not_a_silent_no_op() -> None:
    model, x = _model(), torch.randn(2, 3, 8, 8)
    model.scale = EinsumScale(8)
    with pytest.raises(TypeError, match=r"'scale' \(EinsumScale\): einsum.*register_pruner"):
        prune_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))


def test_unregistered_scale_multiplied_in_is_cut_with_its_channels() -> None:
    """Without a registration, ChannelScale is traced into; its parameter, multiplied
    element-wise into the channels, is cut with them (as a ConvNeXt layer scale)."""
    model, x = _model(), torch.randn(2, 3, 8, 8)
    plan = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))
    pruned = apply_plan_(copy.deepcopy(model), plan)
    keep = list(plan.modules["conv1"].out_idx)
    assert plan.tensors == {"scale.scale": (0, tuple(keep))}
    assert torch.equal(pruned.scale.scale, model.scale.scale[keep])
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.conv1.weight[sorted(set(range(8)) - set(keep))] = 0
        zeroed.conv1.bias[sorted(set(range(8)) - set(keep))] = 0
        assert (zeroed(x) - pruned(x)).abs().max().item() < 1e-5


def test_subclasses_use_their_base_class_pruner() -> None:
    class Scale2(ChannelScale):
        pass

    with registered_pruner(ChannelScale, prune_channel_scale, per_channel=True):
        assert find_pruner(Scale2).prune_out is prune_channel_scale
    assert find_pruner(Scale2) is None
    assert find_pruner(nn.SyncBatchNorm).per_channel  # the built-ins are registered alike
    assert find_pruner(nn.LazyConv2d) is find_pruner(nn.Conv2d)  # through the MRO


def test_register_pruner_validates_and_unregisters() -> None:
    with pytest.raises(ValueError, match="per_channel=False"):
        register_pruner(ChannelScale, per_channel=False, prune_in=prune_channel_scale)
    with pytest.raises(ValueError, match="registered twice"):
        register_pruner(nn.Conv2d, per_channel=False, prune_in=prune_channel_scale)(
            prune_channel_scale)
    register_pruner(ChannelScale, per_channel=True)(prune_channel_scale)
    unregister_pruner(ChannelScale)
    assert find_pruner(ChannelScale) is None
    with pytest.raises(KeyError, match="ChannelScale"):
        unregister_pruner(ChannelScale)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def test_registered_criterion_is_accepted_and_used() -> None:
    calls = []

    @register_criterion("test_negated_l1")
    def negated_l1(context: CriterionContext) -> dict[int, float]:
        """docs/extending.md, "An importance criterion": lower scores are pruned first, so
        this keeps the filters with the smallest L1 norms."""
        calls.append(context)
        scores: dict[int, float] = {}
        for name, classes in context.graph.producers.items():
            weight = context.model.get_submodule(name).weight
            for c, s in zip(classes, l1_scores(weight).tolist(), strict=True):
                scores[c] = scores.get(c, 0.0) - s
        return scores

    try:
        assert "test_negated_l1" in list_criteria()
        torch.manual_seed(0)
        model, x = _Net().eval(), torch.randn(1, 3, 8, 8)
        config = ChannelPruneConfig(criterion="test_negated_l1", amount=0.5)
        stage_config = ChannelPruneStageConfig(prune={"criterion": "test_negated_l1"})
        assert stage_config.prune.criterion == "test_negated_l1"
        plan = plan_channels(model, x, config)
        assert len(calls) == 1
        l1 = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))
        norms = model.conv1.weight.abs().sum((1, 2, 3))
        kept = list(plan.modules["conv1"].out_idx)
        assert kept == sorted(norms.argsort()[:4].tolist())  # the smallest L1 norms stay
        assert set(kept).isdisjoint(l1.modules["conv1"].out_idx)
    finally:
        unregister_criterion("test_negated_l1")
    assert "test_negated_l1" not in CRITERIA
    with pytest.raises(ValueError, match="test_negated_l1"):
        ChannelPruneConfig(criterion="test_negated_l1")


class LastDimScale(nn.Module):
    """A per-channel scale on channels-last input (as a channels-last LayerNorm's affine)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@torch.no_grad()
def prune_last_dim_scale(m: LastDimScale, keep: torch.Tensor) -> LastDimScale:
    new = LastDimScale(len(keep))
    new.scale.copy_(m.scale[keep])
    return new


class _ChannelsLastNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = LastDimScale(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(torch.relu(x))


def test_channels_last_layer_uses_channel_dim() -> None:
    torch.manual_seed(0)
    model, x = _ChannelsLastNet().eval(), torch.randn(2, 3, 8, 8)
    with registered_pruner(LastDimScale, prune_last_dim_scale, per_channel=True,
                           channel_dim=-1):
        pruned = prune_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))
    keep = [i for i in range(8) if any(torch.equal(model.conv1.weight[i], w)
                                       for w in pruned.conv1.weight)]
    assert len(keep) == 4
    assert torch.equal(pruned.scale.scale, model.scale.scale[keep])
    zeroed = copy.deepcopy(model)
    dropped = sorted(set(range(8)) - set(keep))
    with torch.no_grad():
        zeroed.conv1.weight[dropped] = 0
        zeroed.conv1.bias[dropped] = 0
        assert (zeroed(x) - pruned(x)).abs().max().item() < 1e-5
