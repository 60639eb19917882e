"""Surgery is exact: zeroing the BN scale and shift of the removed channels in the original
model gives the same outputs as the physically pruned model (eval mode, random BN statistics;
every activation here maps 0 to 0, which is what makes a zeroed channel contribute nothing)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.prune import ChannelPruneConfig, apply_plan_, plan_channels, prune_channels


def _cbr(c_in: int, c_out: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class _Mixed(nn.Module):
    """Residual add, concat, depthwise conv, SE gate, flatten into a BN-ed linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.a = _cbr(8, 8)
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.left = _cbr(8, 6)
        self.right = _cbr(8, 6, groups=2)
        self.dw = _cbr(12, 12, groups=12)
        self.fc1 = nn.Conv2d(12, 4, 1)
        self.fc2 = nn.Conv2d(4, 12, 1)
        self.fc = nn.Linear(12 * 4, 16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        x = self.dw(torch.cat([self.left(x), self.right(x)], 1))
        x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = F.adaptive_max_pool2d(x, 2).flatten(1)
        return self.out(F.relu(self.bn(self.fc(x))))


class _SplitShuffle(nn.Module):
    """ShuffleNet-v2-like: chunk, a branch, concat, channel shuffle, grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.branch = nn.Sequential(_cbr(8, 8), _cbr(8, 8, groups=8), _cbr(8, 8))
        self.grouped = _cbr(16, 16, groups=4)
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.stem(x).chunk(2, dim=1)
        x = torch.cat([x1, self.branch(x2)], 1)
        x = x.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)
        return self.head(self.grouped(x)).mean((2, 3))


def _check_exact(model: nn.Module, x: torch.Tensor, config: ChannelPruneConfig, zeroed,
                 bn_only: bool = True) -> tuple[nn.Module, object]:
    model.eval()
    plan = plan_channels(model, x, config)
    assert plan.removed_channels > 0
    pruned = apply_plan_(copy.deepcopy(model), plan).eval()
    reference = zeroed(model, plan, bn_only=bn_only).eval()
    with torch.no_grad():
        expected, got = reference(x), pruned(x)
    assert got.shape == expected.shape
    assert (expected - got).abs().max().item() < 1e-5
    assert expected.abs().max().item() > 1e-3  # the comparison is not between zeros
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < n_params
    return pruned, plan


@pytest.mark.parametrize("criterion", ["bn_gamma", "l1", "fpgm", "random"])
def test_mixed_model_is_pruned_exactly(criterion, randomize_bn, zeroed):
    torch.manual_seed(0)
    model = randomize_bn(_Mixed())
    pruned, plan = _check_exact(model, torch.randn(3, 3, 8, 8),
                                ChannelPruneConfig(criterion=criterion, amount=0.4,
                                                   scope="per_layer"), zeroed, bn_only=False)
    # residual summands lose the same channels; the output layer keeps its 5 outputs
    assert pruned.stem[0].out_channels == pruned.b[0].out_channels
    assert pruned.out.out_features == 5
    assert pruned.fc.out_features == 16 - round(0.4 * 16)  # linear neurons, per layer
    assert pruned.left[0].out_channels < 6
    # the grouped conv ``right`` (fed by the stem) loses whole groups in normal mode: every
    # kept group keeps its width, the group count falls
    right = pruned.right[0]
    assert right.in_channels == 4 * right.groups == pruned.stem[0].out_channels
    assert right.out_channels == 3 * right.groups


def test_split_and_shuffle_pruned_group_wise(randomize_bn, zeroed):
    torch.manual_seed(0)
    model = randomize_bn(_SplitShuffle())
    config = ChannelPruneConfig(criterion="bn_gamma", amount=0.5, mode="group",
                                scope="per_layer")
    pruned, plan = _check_exact(model, torch.randn(2, 3, 8, 8), config, zeroed)
    assert pruned.stem[0].out_channels < 16  # the chunked, shuffled channels were pruned
    assert pruned.grouped[0].groups == 4 and pruned.grouped[0].in_channels % 4 == 0


def test_normal_mode_leaves_split_and_shuffle_channels(randomize_bn):
    model = randomize_bn(_SplitShuffle()).eval()
    pruned = prune_channels(model, torch.randn(2, 3, 8, 8), ChannelPruneConfig(amount=0.5))
    assert pruned.stem[0].out_channels == 16
    assert pruned.grouped[0].out_channels == 16
    assert pruned.branch[2][0].out_channels == 8
    assert pruned.branch[0][0].out_channels == 4  # the free channels inside the branch


ZOO = [
    ("nin", {"width": 0.25}, "normal"),
    ("nin", {"width": 0.25, "block_order": "bacp", "act": "hardtanh"}, "normal"),
    ("nin_gc", {"width": 0.25}, "group"),
    ("nin_gc", {"width": 0.25, "block_order": "bacp"}, "group"),
    ("mobilenet_student", {"width": 0.25}, "normal"),
    ("resnet18_cifar", {"width": 0.25}, "normal"),
    ("tv:resnet18", {}, "normal"),
    ("tv:mobilenet_v2", {}, "normal"),
    ("tv:shufflenet_v2_x0_5", {}, "group"),
]


@pytest.mark.parametrize(("name", "kwargs", "mode"), ZOO,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ZOO)])
def test_zoo_models_are_pruned_exactly(name, kwargs, mode, randomize_bn, zeroed):
    models = pytest.importorskip("netshrink.models")
    torch.manual_seed(0)
    model = randomize_bn(models.create_model(name, **kwargs))
    scope = "per_layer" if mode == "group" else "global"
    config = ChannelPruneConfig(criterion="bn_gamma", amount=0.5, mode=mode, scope=scope)
    pruned, plan = _check_exact(model, torch.randn(2, 3, 32, 32), config, zeroed)
    if name == "nin_gc":  # grouped convs lost channels and kept their group counts
        conv = pruned.features.conv5
        assert conv.groups == 4 and conv.out_channels < model.features.conv5.out_channels
    if name == "tv:shufflenet_v2_x0_5":  # the split-and-shuffle outputs were pruned too
        assert pruned.stage2[0].branch2[5].out_channels < 24
