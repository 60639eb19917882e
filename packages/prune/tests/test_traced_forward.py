"""A composite "do not trace" leaf (conv -> act -> conv whose forward branches on the input's
spatial size, as timm VGG's ``ConvMlp`` head) is traced through a registered stand-in forward
(``register_traced_forward``): its hidden width prunes (first conv's outputs with the second's
inputs), its inputs with the layers before it and its outputs with the layers after it. As a
plain leaf it held all of them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.prune import (
    LEAVES,
    TRACED_FORWARDS,
    ChannelPruneConfig,
    PruningBlockedError,
    apply_plan_,
    plan_channels,
    register_leaf,
    register_traced_forward,
)

PER_LAYER = ChannelPruneConfig(criterion="l1", amount=0.5, scope="per_layer")


class _SizedMlp(nn.Module):
    """conv(k) -> ReLU -> conv(1): an input smaller than the kernel is pooled up to it first
    (a branch on the spatial size, which fx cannot trace)."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.fc1 = nn.Conv2d(cin, hidden, kernel)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < self.kernel or x.shape[-1] < self.kernel:
            x = F.adaptive_avg_pool2d(x, (max(self.kernel, x.shape[-2]),
                                          max(self.kernel, x.shape[-1])))
        return self.fc2(self.act(self.fc1(x)))


@torch.fx.wrap
def _at_least(height: int, width: int, kernel: int) -> tuple[int, int]:
    return max(kernel, height), max(kernel, width)


def _sized_mlp_traced(m: _SizedMlp, x: torch.Tensor) -> torch.Tensor:
    """The same without the branch: pooling to the input's own size is the identity."""
    x = F.adaptive_avg_pool2d(x, _at_least(x.shape[-2], x.shape[-1], m.kernel))
    return m.fc2(m.act(m.fc1(x)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.pre_logits = _SizedMlp(8, 16, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.pre_logits(self.features(x))).mean((2, 3)))


@pytest.fixture
def sized_mlp_leaf():
    """_SizedMlp as a leaf (timm marks such modules "do not trace"); restored afterwards."""
    register_leaf(_SizedMlp)
    yield
    LEAVES.discard(_SizedMlp)
    TRACED_FORWARDS.pop(_SizedMlp, None)


def _prune(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return apply_plan_(copy.deepcopy(model), plan_channels(model, x, PER_LAYER))


def test_a_composite_leaf_holds_its_channels(sized_mlp_leaf) -> None:
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(PruningBlockedError, match=r"'pre_logits' \(_SizedMlp\)"):
        _prune(model, x)


@pytest.mark.parametrize("size", [4, 12])  # pooled up to the kernel / not pooled
def test_a_traced_forward_prunes_the_hidden_inputs_and_outputs(sized_mlp_leaf,
                                                              size: int) -> None:
    register_traced_forward(_SizedMlp, _sized_mlp_traced)
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(_sized_mlp_traced(model.pre_logits, model.features(x)),
                           model.pre_logits(model.features(x)))
    pruned = _prune(model, x)
    mlp = pruned.pre_logits
    assert isinstance(mlp, _SizedMlp)  # the model keeps its own module and forward
    assert mlp.fc1.out_channels == mlp.fc2.in_channels == 8  # the hidden width: 16 -> 8
    assert pruned.features[0].out_channels == mlp.fc1.in_channels == 4
    assert mlp.fc2.out_channels == pruned.head.in_features == 6
    with torch.no_grad():
        assert pruned(x).shape == (2, 5)
        assert pruned(torch.randn(1, 3, 16 - size, 16 - size)).shape == (1, 5)  # other branch


def test_register_traced_forward_names_bad_arguments() -> None:
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_traced_forward(int, _sized_mlp_traced)
    with pytest.raises(TypeError, match="needs a function"):
        register_traced_forward(_SizedMlp, 3)


@pytest.mark.slow
def test_timm_vgg_conv_mlp_is_traced_through_its_stand_in() -> None:
    pytest.importorskip("timm")
    from timm.models.vgg import ConvMlp

    from netshrink.prune.third_party import vgg_conv_mlp_forward

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          ConvMlp(8, 16, kernel_size=3, drop_rate=0.0),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
    for size in (2, 6):  # pooled up to the 3 x 3 kernel / not pooled
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            h = model[1](model[0](x))
            assert torch.equal(vgg_conv_mlp_forward(model[2], h), model[2](h))
        pruned = _prune(model, x)
        assert pruned[2].fc1.out_channels == pruned[2].fc2.in_channels == 8
        assert pruned[0].out_channels == pruned[2].fc1.in_channels == 4
        assert pruned[2].fc2.out_channels == pruned[5].in_features == 8
        with torch.no_grad():
            assert pruned(x).shape == (2, 5)
