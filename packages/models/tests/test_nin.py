"""NIN: exact size, structure of both block orders, options, one training step."""

import pytest
import torch
from torch import nn

from netshrink.core import ModelStats
from netshrink.models import NIN, create_model

HIDDEN = [192, 160, 96, 192, 192, 192, 192, 192]
KERNELS = [5, 1, 1, 5, 1, 1, 3, 1, 1]


def _expected_params(hidden: list[int], num_classes: int = 10, in_channels: int = 3) -> int:
    """Bias-free convs + BN (weight, bias) per conv output, from the plan by hand."""
    chans = [in_channels, *hidden, num_classes]
    convs = sum(chans[i] * chans[i + 1] * k * k for i, k in enumerate(KERNELS))
    return convs + 2 * sum(chans[1:])


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("block_order", ["cbap", "bacp"])
def test_exact_size_at_width_1(block_order: str) -> None:
    stats = ModelStats.measure(NIN(block_order=block_order), torch.zeros(1, 3, 32, 32))
    assert stats.params == 968_404
    assert stats.macs == 222_486_528
    assert stats.params == _expected_params(HIDDEN)
    assert round(stats.mparams, 2) == 0.97
    assert round(stats.gmacs, 2) == 0.22


def test_cbap_layer_order() -> None:
    names = list(NIN().features._modules)
    assert names[:7] == ["conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3"]
    assert names[7:11] == ["bn3", "act3", "pool1", "conv4"]
    assert names[-3:] == ["conv9", "bn9", "act9"]
    assert names.count("pool2") == 1 and len(names) == 9 * 3 + 2


def test_bacp_layer_order_and_bn_sizes() -> None:
    model = NIN(block_order="bacp", act="hardtanh")
    names = list(model.features._modules)
    assert names[:5] == ["conv1", "bn1", "act1", "conv2", "bn2"]
    assert names[6:11] == ["conv3", "pool1", "bn3", "act3", "conv4"]
    assert names[-3:] == ["conv9", "bn9", "act9"]
    assert len(names) == 9 * 3 + 2
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == [*HIDDEN, 10]
    acts = [m for m in model.modules() if isinstance(m, nn.Hardtanh)]
    assert len(acts) == 9 and (acts[0].min_val, acts[0].max_val) == (-1.0, 1.0)


@pytest.mark.parametrize(("act", "cls"), [("relu", nn.ReLU), ("hardtanh", nn.Hardtanh),
                                          ("identity", nn.Identity)])
def test_activation_modules(act: str, cls: type) -> None:
    acts = [m for n, m in NIN(width=0.1, act=act).features.named_children()
            if n.startswith("act")]
    assert len(acts) == 9 and all(type(a) is cls for a in acts)
    assert all(not getattr(a, "inplace", False) for a in acts)


def test_convs_have_plan_kernels_and_no_bias() -> None:
    convs = _convs(NIN())
    assert [c.kernel_size[0] for c in convs] == KERNELS
    assert [c.padding[0] for c in convs] == [k // 2 for k in KERNELS]
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize("width", [0.5, 0.25, 1.5, 0.001])
def test_width_scales_hidden_channels_only(width: float) -> None:
    model = NIN(width=width, num_classes=7, in_channels=1)
    hidden = [max(1, int(c * width + 0.5)) for c in HIDDEN]
    convs = _convs(model)
    assert [c.out_channels for c in convs] == [*hidden, 7]
    assert convs[0].in_channels == 1
    assert sum(p.numel() for p in model.parameters()) == _expected_params(hidden, 7, 1)


def test_width_half_params() -> None:
    # by hand: convs 245,472 + BN 1,428
    assert sum(p.numel() for p in NIN(width=0.5).parameters()) == 246_900


@pytest.mark.parametrize("block_order", ["cbap", "bacp"])
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_one_sgd_step(block_order: str, act: str) -> None:
    torch.manual_seed(0)
    model = create_model("nin", width=0.25, block_order=block_order, act=act)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == list(before)


@pytest.mark.parametrize("block_order", ["cbap", "bacp"])
def test_output_shape(block_order: str) -> None:
    out = NIN(width=0.25, num_classes=13, block_order=block_order).eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 13)
