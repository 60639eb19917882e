"""Patterns of real model zoos (timm, torchvision), each in a tiny hand-built model: fused
norm + activation modules, TF-"same" padding convs that branch on the input shape, layer-scale
parameters read in a block's forward, channels-last LayerNorm, GhostNet's concat-and-slice,
and blocks the analysis cannot follow, which must be reported, never a silent 0 %."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import stage_from_description
from netshrink.prune import (
    LEAVES,
    ChannelPruneConfig,
    ChannelPruneStage,
    ChannelPruneStageConfig,
    PruningBlockedError,
    PruningBlockedWarning,
    UntraceableModelError,
    apply_plan_,
    plan_channels,
    prune_channels,
    register_leaf,
    registered_pruner,
    slice_channels_,
)

L1 = ChannelPruneConfig(criterion="l1", amount=0.5)
PER_LAYER = ChannelPruneConfig(criterion="l1", amount=0.5, scope="per_layer")


def _kept_filters(orig: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of ``orig``'s filters that survive in ``pruned`` (in order)."""
    return [i for i in range(orig.shape[0]) if any(torch.equal(orig[i], w) for w in pruned)]


@pytest.fixture
def leaf():
    """register_leaf for one test: the registry is restored afterwards."""
    added: list[type] = []

    def add(module_type: type) -> type:
        if module_type not in LEAVES:
            added.append(module_type)
        return register_leaf(module_type)
    yield add
    for t in added:
        LEAVES.discard(t)


# -- fused BatchNorm + activation (timm's BatchNormAct2d) -------------------------------------


class BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm subclass holding its activation, with its own constructor and a forward
    that calls F.batch_norm on its tensors (so tracing into it pins every channel)."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(channels)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, self.eps)
        return self.act(x)


class _FusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct(8, nn.ReLU6)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.bn1(self.conv1(x)))


def _randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_fused_norm_act_traced_into_is_reported_not_silently_kept() -> None:
    model, x = _randomized(_FusedNet()), torch.randn(2, 3, 8, 8)
    with pytest.raises(PruningBlockedError, match=r"'bn1' \(BatchNormAct\)"):
        prune_channels(model, x, L1)


def test_fused_norm_act_leaf_is_pruned_exactly_and_keeps_its_activation(leaf) -> None:
    leaf(BatchNormAct)
    model, x = _randomized(_FusedNet()), torch.randn(2, 3, 8, 8)
    plan = plan_channels(model, x, L1)
    pruned = apply_plan_(copy.deepcopy(model), plan)
    keep = list(plan.modules["conv1"].out_idx)
    assert len(keep) == 4 and plan.modules["bn1"].out_idx == tuple(keep)
    bn = pruned.bn1
    assert type(bn) is BatchNormAct and isinstance(bn.act, nn.ReLU6)  # settings kept
    assert bn.num_features == 4 and torch.equal(bn.running_var, model.bn1.running_var[keep])
    zeroed = copy.deepcopy(model)
    dropped = sorted(set(range(8)) - set(keep))
    with torch.no_grad():
        zeroed.bn1.weight[dropped] = 0
        zeroed.bn1.bias[dropped] = 0
        assert (zeroed(x) - pruned(x)).abs().max().item() < 1e-5


def test_fused_norm_act_is_rebuilt_from_the_stage_record(leaf) -> None:
    leaf(BatchNormAct)
    model, x = _randomized(_FusedNet()), torch.randn(2, 3, 8, 8)
    stage = ChannelPruneStage(ChannelPruneStageConfig(
        prune=ChannelPruneConfig(criterion="l1", amount=0.5), input_shape=(1, 3, 8, 8)))
    pruned = stage.apply(copy.deepcopy(model))
    fresh = stage_from_description(stage.describe()).rebuild(_randomized(_FusedNet()))
    assert type(fresh.bn1) is BatchNormAct and isinstance(fresh.bn1.act, nn.ReLU6)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned(x))


# -- TF-"same" padding conv (timm's Conv2dSame) -----------------------------------------------


class SameConv(nn.Conv2d):
    """TF-"same" padding computed from the input size: the forward branches on x.shape, so
    fx cannot trace into it. Its constructor differs from nn.Conv2d's."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, k, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        size = x.shape[-1]
        pad = max((-(size // -s) - 1) * s + k - size, 0)
        if pad > 0:
            x = F.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride)


class _SameNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = SameConv(3, 8, 3, stride=2)
        self.conv2 = SameConv(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def test_same_padding_conv_is_untraceable_unless_registered_as_a_leaf(leaf) -> None:
    torch.manual_seed(0)
    model, x = _SameNet().eval(), torch.randn(2, 3, 9, 9)
    with pytest.raises(UntraceableModelError, match=r"'conv1' \(SameConv\)"):
        prune_channels(model, x, L1)
    leaf(SameConv)
    pruned = prune_channels(model, x, L1)
    assert type(pruned.conv1) is SameConv and pruned.conv1.stride == (2, 2)
    keep = _kept_filters(model.conv1.weight, pruned.conv1.weight)
    assert len(keep) == 4 and pruned.conv2.weight.shape == (4, 4, 3, 3)
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[:, keep])
    zeroed = copy.deepcopy(model)
    dropped = sorted(set(range(8)) - set(keep))
    with torch.no_grad():
        zeroed.conv1.weight[dropped] = 0
        zeroed.conv1.bias[dropped] = 0
        assert (zeroed(x) - pruned(x)).abs().max().item() < 1e-5


# -- ConvNeXt block: channels-last LayerNorm and a layer scale in the block's forward ---------


class _NeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + y.mul(self.gamma.reshape(1, -1, 1, 1))


class _NeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.block = _NeXtBlock(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_convnext_block_prunes_layer_scale_layernorm_and_the_residual_stream() -> None:
    torch.manual_seed(0)
    model, x = _NeXt().eval(), torch.randn(2, 3, 8, 8)
    plan = plan_channels(model, x, PER_LAYER)
    assert plan.blocked == {}
    pruned = apply_plan_(copy.deepcopy(model), plan)
    stream = _kept_filters(model.stem.weight, pruned.stem.weight)
    assert len(stream) < 8  # the residual stream itself lost channels
    assert plan.tensors["block.gamma"] == (0, tuple(stream))
    assert torch.equal(pruned.block.gamma, model.block.gamma[stream])
    assert torch.equal(pruned.block.norm.weight, model.block.norm.weight[stream])
    assert pruned.block.norm.normalized_shape == (len(stream),)
    assert torch.equal(pruned.block.conv_dw.weight, model.block.conv_dw.weight[stream])
    assert pruned.block.fc1.in_features == len(stream) and pruned.head.in_features == len(stream)
    assert pruned.block.fc1.out_features < 16
    assert pruned(x).shape == (2, 5)


def test_layer_scale_is_rebuilt_from_the_stage_record() -> None:
    torch.manual_seed(0)
    model, x = _NeXt().eval(), torch.randn(2, 3, 8, 8)
    stage = ChannelPruneStage(ChannelPruneStageConfig(prune=PER_LAYER, input_shape=(1, 3, 8, 8)))
    pruned = stage.apply(copy.deepcopy(model))
    record = stage.describe()
    assert record["config"]["structure"]["block.gamma"] == {
        "tensor_dim": 0, "tensor_size": pruned.block.gamma.numel()}
    fresh = stage_from_description(record).rebuild(_NeXt())
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned(x))


def test_layernorm_over_two_dims_keeps_its_channels_and_says_so() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 1)
            self.norm = nn.LayerNorm((8, 4))  # over channels and a spatial dim: not sliceable
            self.conv2 = nn.Conv2d(3, 8, 1)
            self.conv3 = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.norm(self.conv1(x).mean(2))  # (N, 8, 4)
            return self.conv3(self.conv2(x) * a.unsqueeze(2).mean(-1, keepdim=True))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 4, 4)
    with pytest.raises(PruningBlockedError, match=r"held by 'norm' \(LayerNorm\) \(8\)"):
        prune_channels(model, x, L1)  # conv2 is gated by the norm's output: nothing else


class _Grn(nn.Module):
    """A per-channel layer whose channel dimension is a setting of the instance (as timm's
    GlobalResponseNorm): y = x * weight along ``channel_dim``."""

    def __init__(self, c: int, channels_last: bool) -> None:
        super().__init__()
        self.channel_dim = -1 if channels_last else 1
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.channel_dim] = -1
        return x * self.weight.view(shape)


def test_channel_dim_read_from_each_instance() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.first = nn.Conv2d(3, 8, 1), _Grn(8, channels_last=False)
            self.conv2, self.last = nn.Conv2d(8, 6, 1), _Grn(6, channels_last=True)
            self.conv3 = nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.first(self.conv1(x)))
            x = self.last(self.conv2(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.conv3(torch.relu(x))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 4, 4)
    with registered_pruner(_Grn, slice_channels_, per_channel=True,
                           channel_dim=lambda m: m.channel_dim):
        plan = plan_channels(model, x, PER_LAYER)
        pruned = apply_plan_(copy.deepcopy(model), plan)
    for conv, grn in (("conv1", "first"), ("conv2", "last")):
        keep = list(plan.modules[conv].out_idx)
        assert len(keep) < model.get_submodule(conv).out_channels
        assert torch.equal(pruned.get_submodule(grn).weight,
                           model.get_submodule(grn).weight[keep])
    assert pruned(x).shape == (2, 2, 4, 4)


# -- GhostNet: concat of a conv and its depthwise copy, then a channel slice -------------------


class _Ghost(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.out_chs = c_out
        init = -(-c_out // 2)
        self.primary = nn.Conv2d(c_in, init, 1, bias=False)
        self.cheap = nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = torch.relu(self.primary(x))
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return out[:, :self.out_chs, :, :]


class _GhostNet(nn.Module):
    """A ghost module, a squeeze-excite gate on it, and a conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.ghost = _Ghost(3, c)
        self.se_reduce = nn.Conv2d(c, 4, 1)
        self.se_expand = nn.Conv2d(4, c, 1)
        self.conv = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.ghost(x)
        gate = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(g.mean((2, 3), True)))))
        return self.conv(g * gate)


def test_ghost_module_concat_and_slice_prunes_its_primary_conv_exactly() -> None:
    torch.manual_seed(0)
    model, x = _GhostNet(16).eval(), torch.randn(2, 3, 6, 6)
    # the squeeze-excite's hidden channels stay, so only the ghost module's are cut
    config = ChannelPruneConfig(criterion="l1", amount=0.5, ignored_layers=("se_reduce",))
    plan = plan_channels(model, x, config)
    pruned = apply_plan_(copy.deepcopy(model), plan)
    keep = list(plan.modules["ghost.primary"].out_idx)
    assert len(keep) < 8
    assert pruned.ghost.cheap.weight.shape[0] == len(keep)
    both = keep + [8 + i for i in keep]  # a channel and its depthwise copy go together
    assert torch.equal(pruned.se_expand.weight, model.se_expand.weight[both])
    assert torch.equal(pruned.conv.weight, model.conv.weight[:, both])
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.ghost.primary.weight[sorted(set(range(8)) - set(keep))] = 0
        assert (zeroed(x) - pruned(x)).abs().max().item() < 1e-5


def test_ghost_module_whose_slice_cuts_a_channel_is_pruned_exactly() -> None:
    torch.manual_seed(0)
    model, x = _GhostNet(15).eval(), torch.randn(2, 3, 6, 6)  # 8 + 8 channels cut to 15
    plan = plan_channels(model, x, L1)
    pruned = apply_plan_(copy.deepcopy(model), plan)
    keep = list(plan.modules["ghost.primary"].out_idx)
    assert len(keep) < 8  # the literal cut is rewritten (forward_edits), not a pin
    cut = len(keep) + len([i for i in keep if i < 7])  # the copy of channel 7 stays cut
    assert [(e.owner, e.values) for e in plan.forward_edits] == [("ghost", (0, cut))]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.ghost.primary.weight[sorted(set(range(8)) - set(keep))] = 0
        assert (zeroed(x) - pruned(x)).abs().max().item() < 1e-5


# -- LeViT's LinearNorm: a BatchNorm over flattened tokens, reshaped back with reshape_as ----


class _LinearNorm(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


def test_reshape_as_follows_the_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_LinearNorm(6, 8), nn.ReLU(), _LinearNorm(8, 4)).eval()
    x = torch.randn(2, 5, 6)
    plan = plan_channels(model, x, PER_LAYER)
    assert plan.blocked == {} and len(plan.modules["0.linear"].out_idx) == 4
    pruned = apply_plan_(copy.deepcopy(model), plan)
    keep = list(plan.modules["0.linear"].out_idx)
    assert torch.equal(pruned[0].bn.running_var, model[0].bn.running_var[keep])
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed[0].bn.weight[sorted(set(range(8)) - set(keep))] = 0
        zeroed[0].bn.bias[sorted(set(range(8)) - set(keep))] = 0
        assert (zeroed(x) - pruned(x)).abs().max().item() < 1e-5


# -- blocks the analysis cannot follow (MobileViT's unfold / fold) ----------------------------


class _UnfoldBlock(nn.Module):
    """Patches through F.unfold / F.fold, as MobileViT (the channels mix with positions),
    then a 1x1 projection."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, 2, stride=2)
        return self.proj(F.fold(patches * 0.5, x.shape[-2:], 2, stride=2))


def _unfold_net(extra: bool) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 1), _UnfoldBlock(8), _UnfoldBlock(8)]
    if extra:  # a plain pair of convs after them: prunable
        layers += [nn.Conv2d(8, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1)]
    return nn.Sequential(*layers).eval()


def test_unfollowable_block_is_a_clear_error_naming_it_not_a_silent_no_op() -> None:
    torch.manual_seed(0)
    with pytest.raises(PruningBlockedError, match=r"'1' \(_UnfoldBlock\): unfold \(8\), "
                                                  r"'2' \(_UnfoldBlock\): unfold \(8\)"):
        prune_channels(_unfold_net(extra=False), torch.randn(2, 3, 4, 4), L1)


def test_unfollowable_block_mostly_blocking_warns_and_reports_it(leaf) -> None:
    torch.manual_seed(0)
    model, x = _unfold_net(extra=True), torch.randn(2, 3, 4, 4)
    with pytest.warns(PruningBlockedWarning, match=r"16 of its 27 .*_UnfoldBlock"):
        plan = plan_channels(model, x, L1)
    assert plan.removed_channels > 0 and "3" in plan.modules
    assert plan.blocked == {"'1' (_UnfoldBlock): unfold": 8, "'2' (_UnfoldBlock): unfold": 8}
    leaf(_UnfoldBlock)  # as a registered leaf without a pruner: named the same way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningBlockedWarning)
        plan = plan_channels(model, x, L1)
    assert plan.blocked == {"'1' (_UnfoldBlock)": 8} and plan.removed_channels > 0


# -- real timm models ---------------------------------------------------------------------------


#: small real timm models: TF-"same" padding convs + BatchNormAct2d; ConvNeXt (LayerNorm2d,
#: channels-last LayerNorm, layer scale) made shallow and narrow
TIMM_CASES = {
    "tf_mobilenetv3_small_minimal_100": {},
    "convnext_atto": {"depths": (1, 1, 2, 1), "dims": (16, 32, 48, 64)},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_CASES))
def test_real_timm_models_prune_to_the_asked_amount_and_run(name: str) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **TIMM_CASES[name])
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    plan = plan_channels(model, x, ChannelPruneConfig(criterion="l1", amount=0.3))
    pruned = apply_plan_(copy.deepcopy(model), plan)

    def producer_channels(m: nn.Module) -> int:
        return sum(c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d))
    assert producer_channels(pruned) < 0.8 * producer_channels(model)
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)


@pytest.mark.slow
def test_timm_layers_are_registered_once_timm_is_imported() -> None:
    timm = pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d, Conv2dSame, LayerNorm2d, ScaledStdConv2d
    from timm.models.nfnet import NormFreeBlock

    from netshrink.prune import find_pruner
    from netshrink.prune.pruners import is_registered_leaf

    assert timm is not None
    bn, conv = BatchNormAct2d(4), Conv2dSame(3, 4, 3)
    assert is_registered_leaf(bn) and is_registered_leaf(conv)
    assert is_registered_leaf(ScaledStdConv2d(3, 4, 3))
    assert find_pruner(LayerNorm2d).channel_dim == 1 and find_pruner(LayerNorm2d).per_channel
    assert NormFreeBlock not in LEAVES  # traceable, and it holds the model's convs
    keep = torch.tensor([0, 2])
    pruned = find_pruner(BatchNormAct2d).prune_out(bn, keep)
    assert type(pruned) is BatchNormAct2d and pruned.num_features == 2
    assert find_pruner(Conv2dSame).prune_out(conv, keep).weight.shape == (2, 3, 3, 3)
