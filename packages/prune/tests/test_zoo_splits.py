"""More patterns of real model zoos (timm), each in a tiny hand-built model: weight-standardized
convs (NFNets), channel splits with literal sizes (MixNet, CSP, FasterNet, DPN, MambaOut),
ECA's 1-D conv across the channel axis and grouped convs in the normal mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.prune import (
    LEAVES,
    MIN_FAN_IN,
    ChannelPruneConfig,
    apply_plan_,
    plan_channels,
    prune_channels,
    register_leaf,
    register_min_fan_in,
)

# -- weight standardization (timm's ScaledStdConv2d, NFNets) ---------------------------------


class StdConv(nn.Conv2d):
    """Standardizes each filter over its fan-in, as timm's StdConv2d (F.batch_norm in
    training mode refuses a single value per filter)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class _StdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = StdConv(8, 8, 1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


@pytest.fixture
def std_conv():
    """StdConv as a leaf with a minimum fan-in of 2, for one test."""
    register_leaf(StdConv)
    register_min_fan_in(StdConv, 2)
    yield StdConv
    LEAVES.discard(StdConv)
    MIN_FAN_IN.pop(StdConv, None)


def test_weight_standardized_conv_keeps_two_inputs_and_runs(std_conv) -> None:
    torch.manual_seed(0)
    model = _StdNet().eval()
    with torch.no_grad():  # conv1's filters all score below conv2's: global L1 takes them
        model.conv1.weight.mul_(0.01)
    x = torch.randn(2, 3, 8, 8)
    pruned = prune_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))
    assert pruned.conv2.in_channels == 2  # the floor, not 1 (one weight has no std)
    assert pruned.conv1.out_channels + pruned.conv2.out_channels == 16 - 8
    assert pruned(x).shape == (2, 4, 8, 8)


def test_min_fan_in_counts_the_kernel() -> None:
    from netshrink.prune.pruners import min_input_channels

    register_min_fan_in(StdConv, 2)
    try:
        assert min_input_channels(StdConv(8, 8, 1)) == 2
        assert min_input_channels(StdConv(8, 8, 3)) == 1
        assert min_input_channels(StdConv(8, 8, 1, groups=4)) == 8
        assert min_input_channels(nn.Conv2d(8, 8, 1)) == 1
    finally:
        MIN_FAN_IN.pop(StdConv, None)
    with pytest.raises(ValueError, match="fan_in=0"):
        register_min_fan_in(StdConv, 0)
    with pytest.raises(TypeError, match="convolution subclass"):
        register_min_fan_in(nn.BatchNorm2d, 2)


# -- channel splits with literal sizes -------------------------------------------------------


def _cbr(c_in: int, c_out: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class _Mixed(nn.Module):
    """MixNet's MixedConv2d: a split with sizes from the constructor, a conv per piece."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.splits = [c - 2 * (c // 3), c // 3, c // 3]
        self.convs = nn.ModuleList(nn.Conv2d(s, s, 2 * i + 1, padding=i, groups=s)
                                   for i, s in enumerate(self.splits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = torch.split(x, self.splits, 1)
        return torch.cat([conv(xs[i]) for i, conv in enumerate(self.convs)], 1)


class _CrossStage(nn.Module):
    """CSP: an int split (two halves), one half through blocks, then concatenated."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand_chs = c
        self.block = _cbr(c // 2, c // 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, xb = x.split(self.expand_chs // 2, dim=1)
        return torch.cat([xs, self.block(xb)], dim=1)


class _Partial(nn.Module):
    """FasterNet: a conv over the first part of the channels, the rest untouched; the forward
    is chosen in the constructor (an instance attribute, the class has none)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dim_conv3, self.dim_untouched = c // 4, c - c // 4
        self.conv = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, padding=1, bias=False)
        self.forward = self.forward_split_cat

    def forward_split_cat(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return torch.cat((self.conv(x1), x2), 1)


class _DualPath(nn.Module):
    """DPN: slices of a conv's output; the first part is added to the residual path, the rest
    concatenated to the dense path."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.num_1x1_c = c
        self.conv = _cbr(c, c + 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([x + y[:, :self.num_1x1_c], y[:, self.num_1x1_c:]], dim=1)


class _SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 12, 3)
        self.mixed = _Mixed(12)
        self.bn = nn.BatchNorm2d(12)
        self.csp = _CrossStage(12)
        self.partial = _Partial(12)
        self.mid = _cbr(12, 8)
        self.dual = _DualPath(8)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.mixed(self.stem(x))))
        x = self.mid(self.partial(self.csp(x)))
        return self.head(self.dual(x))


@pytest.fixture
def split_net(randomize_bn) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(_SplitNet()).eval()


def test_literal_splits_and_slices_are_pruned_exactly(split_net, zeroed) -> None:
    model, x = split_net, torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # stem channels 1, 2 reach every split (partial's first piece too)
        model.stem[0].weight[1:3] *= 0.01
    config = ChannelPruneConfig(criterion="l1", amount=0.4)
    plan = plan_channels(model, x, config)
    assert plan.blocked == {}  # no split holds any channel
    pruned = apply_plan_(copy.deepcopy(model), plan)
    assert {e.owner for e in plan.forward_edits} == {"mixed", "csp", "partial", "dual"}
    assert pruned.stem[0].out_channels < 12 and pruned.mid[0].out_channels < 8
    assert sum(pruned.mixed.splits) == 12  # the attribute is left alone: the graph is edited
    with torch.no_grad():
        expected = zeroed(model, plan)(x)
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-5)


def test_every_split_piece_keeps_a_channel(split_net) -> None:
    model, x = split_net, torch.randn(2, 3, 8, 8)
    plan = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.95))
    pruned = apply_plan_(copy.deepcopy(model), plan)
    assert all(v >= 1 for e in plan.forward_edits if e.op == "split" for v in e.values)
    assert pruned(x).shape == (2, 5, 8, 8)


def test_rewritten_splits_are_rebuilt_from_the_stage_record(split_net) -> None:
    from netshrink.core import stage_from_description
    from netshrink.prune import ChannelPruneStage, ChannelPruneStageConfig

    model, x = split_net, torch.randn(2, 3, 8, 8)
    stage = ChannelPruneStage(ChannelPruneStageConfig(
        prune=ChannelPruneConfig(criterion="l1", amount=0.4, scope="per_layer"),
        input_shape=(1, 3, 8, 8)))
    pruned = stage.apply(copy.deepcopy(model))
    record = stage.describe()
    assert any("#split." in k for k in record["config"]["structure"])
    fresh = stage_from_description(record).rebuild(_SplitNet().eval())
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x))


def test_a_pruned_model_with_rewritten_splits_traces_and_prunes_again(split_net) -> None:
    model, x = split_net, torch.randn(2, 3, 8, 8)
    config = ChannelPruneConfig(criterion="l1", amount=0.3)
    once = prune_channels(model, x, config)
    twice = prune_channels(once, x, config)
    count = sum(m.out_channels for m in twice.modules() if isinstance(m, nn.Conv2d))
    assert count < sum(m.out_channels for m in once.modules() if isinstance(m, nn.Conv2d))
    assert twice(x).shape == (2, 5, 8, 8)


class _ChannelsLast(nn.Module):
    """MambaOut's gated block: a channels-last linear, split along the last dim."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, 2 * c)
        self.split_indices = (c, c // 2, c - c // 2)
        self.conv = nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2)
        self.fc2 = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x.permute(0, 2, 3, 1))
        g, i, c = torch.split(y, self.split_indices, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.fc2(F.gelu(g) * torch.cat((i, c), dim=-1)).permute(0, 3, 1, 2)


def test_channels_last_split_is_rewritten() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _ChannelsLast(8), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 6, 6)
    plan = plan_channels(model.eval(), x, ChannelPruneConfig(criterion="l1", amount=0.4))
    assert [e.owner for e in plan.forward_edits] == ["1"]
    pruned = apply_plan_(copy.deepcopy(model), plan)
    assert pruned[1].fc1.out_features < 16
    assert pruned(x).shape == (2, 4, 6, 6)


# -- ECA: a 1-D conv sliding over the pooled channel vector ----------------------------------


class _Eca(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x)


def test_eca_conv_over_the_channels_passes_them_through(randomize_bn, zeroed) -> None:
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(_cbr(3, 8, 3), _Eca(), nn.Conv2d(8, 4, 1))).eval()
    with torch.no_grad():  # a kernel without neighbours: then pruning is exact
        model[1].conv.weight.copy_(torch.tensor([[[0.0, 1.5, 0.0]]]))
    x = torch.randn(2, 3, 6, 6)
    plan = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))
    assert plan.blocked == {}
    pruned = apply_plan_(copy.deepcopy(model), plan)
    assert pruned[0][0].out_channels == 4
    assert torch.equal(pruned[1].conv.weight, model[1].conv.weight)  # kept as it is
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(model, plan)(x), rtol=1e-5, atol=1e-5)


# -- SKNet: paths stacked, an attention softmax across them, summed --------------------------


class _SelectiveKernel(nn.Module):
    def __init__(self, c: int, paths: int = 2) -> None:
        super().__init__()
        self.num_paths = paths
        self.paths = nn.ModuleList(_cbr(c, c, 2 * i + 3) for i in range(paths))
        self.fc_reduce = _cbr(c, 4)
        self.fc_select = nn.Conv2d(4, c * paths, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([op(x) for op in self.paths], dim=1)  # B, P, C, H, W
        a = self.fc_select(self.fc_reduce(x.sum(1).mean((2, 3), keepdim=True)))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, self.num_paths, c // self.num_paths, h, w), dim=1)
        return torch.sum(x * a, dim=1)


def test_selective_kernel_paths_are_pruned_together_exactly(randomize_bn, zeroed) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_cbr(3, 8, 3), _SelectiveKernel(8), nn.Conv2d(8, 4, 1))
    model = randomize_bn(model).eval()
    x = torch.randn(2, 3, 6, 6)
    plan = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5,
                                                      scope="per_layer"))
    assert plan.blocked == {}
    pruned = apply_plan_(copy.deepcopy(model), plan)
    widths = {m.out_channels for m in (pruned[1].paths[0][0], pruned[1].paths[1][0])}
    assert len(widths) == 1 and widths.pop() < 8  # the paths keep the same channels
    assert pruned[1].fc_select.out_channels == 2 * pruned[1].paths[0][0].out_channels
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(model, plan)(x), rtol=1e-5, atol=1e-5)


def test_eca_stream_pruned_to_one_channel_still_runs(randomize_bn) -> None:
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(_cbr(3, 8, 3), _Eca(), nn.Conv2d(8, 4, 1))).eval()
    x = torch.randn(2, 3, 6, 6)
    pruned = prune_channels(model, x, ChannelPruneConfig(criterion="l1", amount=1.0))
    assert pruned[0][0].out_channels == 1 and pruned(x).shape == (2, 4, 6, 6)


def test_selective_kernel_paths_pruned_to_one_channel_still_run(randomize_bn) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_cbr(3, 8, 3), _SelectiveKernel(8), nn.Conv2d(8, 4, 1))
    model, x = randomize_bn(model).eval(), torch.randn(2, 3, 6, 6)
    pruned = prune_channels(model, x, ChannelPruneConfig(criterion="l1", amount=1.0))
    assert pruned[1].paths[0][0].out_channels == 1 and pruned(x).shape == (2, 4, 6, 6)


# -- depthwise convs with a channel multiplier (FastViT) --------------------------------------


def test_depthwise_conv_with_a_multiplier_is_pruned_exactly(randomize_bn, zeroed) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_cbr(3, 6, 3), _cbr(6, 12, 3, groups=6), nn.Conv2d(12, 4, 1))
    model, x = randomize_bn(model).eval(), torch.randn(2, 3, 6, 6)
    plan = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.5))
    assert plan.blocked == {}
    pruned = apply_plan_(copy.deepcopy(model), plan)
    dw = pruned[1][0]
    assert dw.in_channels == dw.groups == pruned[0][0].out_channels < 6
    assert dw.out_channels == 2 * dw.in_channels
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(model, plan)(x), rtol=1e-5, atol=1e-5)


# -- grouped convs in the normal mode: whole groups (RegNet, DPN) -----------------------------


class _RegBlock(nn.Module):
    """RegNet's bottleneck: a 1x1 conv, a grouped 3x3 conv (group width 4), a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _cbr(8, 16)
        self.conv2 = _cbr(16, 16, 3, groups=4)
        self.conv3 = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv3(self.conv2(self.conv1(x))))


def test_normal_mode_prunes_whole_groups_of_a_grouped_conv(randomize_bn, zeroed) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_cbr(3, 8, 3), _RegBlock(), nn.Conv2d(8, 4, 1))
    model, x = randomize_bn(model).eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():  # groups 1 and 3 score lowest: their filters are the smallest
        for conv in (model[1].conv1[0], model[1].conv2[0]):
            conv.weight[4:8] *= 0.01
            conv.weight[12:16] *= 0.01
    config = ChannelPruneConfig(criterion="l1", amount=0.5, scope="per_layer")
    plan = plan_channels(model, x, config)
    assert not any("groups of" in k for k in plan.blocked)
    pruned = apply_plan_(copy.deepcopy(model), plan)
    conv2 = pruned[1].conv2[0]
    assert (conv2.in_channels, conv2.out_channels, conv2.groups) == (8, 8, 2)  # width 4 kept
    assert plan.modules["1.conv1.0"].out_idx == (0, 1, 2, 3, 8, 9, 10, 11)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(model, plan)(x), rtol=1e-5, atol=1e-5)
    fresh = copy.deepcopy(model)  # the pruned shapes (and group count) are rebuilt
    from netshrink.prune import apply_structure_, channel_structure

    apply_structure_(fresh, channel_structure(pruned))
    fresh.load_state_dict(pruned.state_dict())
    assert fresh[1].conv2[0].groups == 2
