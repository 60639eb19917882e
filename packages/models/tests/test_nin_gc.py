"""NIN-GC: exact size, group counts, shuffle positions, width rounding."""

import pytest
import torch
from torch import nn

from netshrink.core import ModelStats
from netshrink.models import NINGC, ChannelShuffle, create_model

HIDDEN = [256, 256, 256, 512, 512, 512, 1024, 1024]
GROUPS = [1, 2, 2, 16, 4, 4, 32, 8, 1]
SHUFFLES = {"shuffle3": 2, "shuffle4": 2, "shuffle5": 16, "shuffle6": 4, "shuffle7": 4,
            "shuffle8": 32}


@pytest.mark.parametrize("block_order", ["cbap", "bacp"])
def test_exact_size_at_width_1(block_order: str) -> None:
    stats = ModelStats.measure(NINGC(block_order=block_order), torch.zeros(1, 3, 32, 32))
    assert stats.params == 587_028
    assert stats.macs == 157_679_616
    assert round(stats.mparams, 2) == 0.59
    assert round(stats.gmacs, 2) == 0.16


def test_conv_groups_kernels_channels() -> None:
    convs = [m for m in NINGC().modules() if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == GROUPS
    assert [c.kernel_size[0] for c in convs] == [5, 1, 1, 3, 1, 1, 3, 1, 1]
    assert [c.out_channels for c in convs] == [*HIDDEN, 10]


@pytest.mark.parametrize("block_order", ["cbap", "bacp"])
def test_shuffles_sit_right_before_their_conv(block_order: str) -> None:
    layers = NINGC(block_order=block_order, width=0.125).features
    names = list(layers._modules)
    found = {n: m.groups for n, m in layers.named_children() if isinstance(m, ChannelShuffle)}
    assert found == SHUFFLES
    for name in SHUFFLES:
        assert names[names.index(name) + 1] == "conv" + name.removeprefix("shuffle")


def test_shuffle_groups_equal_previous_conv_groups() -> None:
    layers = NINGC().features
    for name, groups in SHUFFLES.items():
        k = int(name.removeprefix("shuffle"))
        assert getattr(layers, f"conv{k - 1}").groups == groups


@pytest.mark.parametrize(("width", "hidden"), [
    (0.5, [128, 128, 128, 256, 256, 256, 512, 512]),
    (0.3, [64, 64, 64, 160, 160, 160, 320, 320]),
    (0.01, [32] * 8),
])
def test_width_rounds_to_multiples_of_32(width: float, hidden: list[int]) -> None:
    model = NINGC(width=width, num_classes=5).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [*hidden, 5]
    assert [c.groups for c in convs] == GROUPS
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_width_half_params() -> None:
    # by hand: convs 151,936 + BN 4,372
    assert sum(p.numel() for p in NINGC(width=0.5).parameters()) == 156_308


@pytest.mark.parametrize("block_order", ["cbap", "bacp"])
def test_one_sgd_step(block_order: str) -> None:
    torch.manual_seed(0)
    model = create_model("nin_gc", width=0.125, block_order=block_order)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert [n for n, p in model.named_parameters() if not torch.equal(p, before[n])] == \
        list(before)
