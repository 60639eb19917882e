"""Binary-activation folds: every sign activation sees exactly the same signs after fusing,
weight codes never change, and a BN a threshold cannot replace is left in place."""

from collections import OrderedDict

import pytest
import torch
from bnfuse_testing import BinaryConv2d, SignInputs, randomize_bn
from torch import nn

from netshrink.bnfuse import FuseConfig, compare, fuse, fuse_report


def _binary(cin: int, cout: int, k: int, seed: int) -> BinaryConv2d:
    torch.manual_seed(seed)
    return BinaryConv2d.from_conv(nn.Conv2d(cin, cout, k, padding=k // 2))


def _binary_net() -> nn.Sequential:
    """Float stem, binary convs with sign inputs; the BN positions of both NIN block orders:
    BN -> act -> pool -> sign (cbap) and conv -> pool -> BN -> act -> sign (bacp)."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(8),
        act1=nn.Hardtanh(),
        conv2=_binary(8, 8, 3, 1), bn2=nn.BatchNorm2d(8), act2=nn.Hardtanh(),
        pool1=nn.MaxPool2d(2),
        conv3=_binary(8, 8, 1, 2), pool2=nn.MaxPool2d(2), bn3=nn.BatchNorm2d(8),
        act3=nn.Hardtanh(),
        conv4=_binary(8, 8, 3, 3), pool3=nn.MaxPool2d(2, padding=1), bn4=nn.BatchNorm2d(8),
        act4=nn.Hardtanh(),
        conv5=_binary(8, 10, 1, 4), bn5=nn.BatchNorm2d(10), act5=nn.ReLU(),
        gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
    ))


def _signs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    rec = SignInputs(model)
    try:
        model(x)
    finally:
        rec.remove()
    return rec.signs


def _assert_binary_equivalent(model: nn.Module, fused: nn.Module, x: torch.Tensor) -> None:
    before, after = _signs(model, x), _signs(fused, x)
    assert before.keys() == after.keys() and before
    for name in before:
        assert torch.equal(before[name], after[name]), f"signs into {name} changed"
    for name, m in model.named_modules():
        if isinstance(m, BinaryConv2d):
            assert torch.equal(fused.get_submodule(name).codes, m.codes), name
    assert compare(model, fused, [x]).max_rel_diff < 1e-5


def test_threshold_folds_keep_every_sign_and_every_code() -> None:
    model = randomize_bn(_binary_net(), seed=1, negative=0.25, zero=0.125).eval()
    with torch.no_grad():  # bn3 sits after a max-pool: fine with scales >= 0 (zeros included)
        model.bn3.weight.abs_()
    fused = fuse(model)
    report = fuse_report(fused)
    folded = {f.bn: f for f in report.folded}
    assert (folded["bn1"].kind, folded["bn1"].into) == ("threshold", "conv1")
    assert (folded["bn1"].negated, folded["bn1"].constant) == (2, 1)
    assert (folded["bn2"].kind, folded["bn2"].into) == ("threshold", "conv2")
    assert (folded["bn3"].kind, folded["bn3"].via) == ("threshold", ("pool2",))
    assert folded["bn3"].constant == 1
    assert (folded["bn5"].kind, folded["bn5"].into) == ("affine", "conv5")
    assert report.left_names == ("bn4",)
    assert "through the max-pool pool3 needs every BN scale >= 0, and 2 channel(s) are " \
           "negative" in report.reason("bn4")
    torch.manual_seed(5)
    _assert_binary_equivalent(model, fused, torch.randn(8, 3, 16, 16))
    # binary weights stay binary: threshold folds only flip or zero a channel's scale, and
    # the float stem's weights are only negated or zeroed
    for name in ("conv2", "conv3"):
        ratio = fused.get_submodule(name).scale / model.get_submodule(name).scale
        assert set(ratio.tolist()) <= {1.0, -1.0, 0.0}
    ratio = fused.conv1.weight / model.conv1.weight
    assert set(ratio.unique().tolist()) == {1.0, -1.0, 0.0}


def test_without_binary_folds_only_affine_folds_happen() -> None:
    model = randomize_bn(_binary_net(), seed=2).eval()
    report = fuse_report(fuse(model, FuseConfig(binary=False)))
    assert {f.kind for f in report.folded} == {"affine"}
    assert set(report.left_names) == {"bn3", "bn4"}


def test_a_bn_whose_output_also_feeds_a_float_path_gets_the_exact_fold() -> None:
    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.binary = _binary(4, 4, 1, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.clamp(self.bn(self.conv(x)), -1, 1)
            return self.binary(y) + y

    model = randomize_bn(Split(), seed=3).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert [(f.bn, f.kind) for f in report.folded] == [("bn", "affine")]
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_sign_through_data_movement_and_functional_sign() -> None:
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn(self.conv(x)))
            y = y.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)  # channel shuffle
            return torch.sign(torch.cat([y, x], dim=1))

    model = randomize_bn(Shuffle().double(), seed=4, negative=0.3, zero=0.2).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert [(f.bn, f.kind) for f in report.folded] == [("bn", "threshold")]
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(fused(x), model(x))


def _binary_nin(block_order: str) -> nn.Module:
    models = pytest.importorskip("netshrink.models")
    torch.manual_seed(0)
    model = models.create_model("nin", width=0.25, block_order=block_order, act="hardtanh")
    for k in range(2, 9):  # a float stem and classifier, binary convs in between
        conv = model.features.get_submodule(f"conv{k}")
        model.features.set_submodule(f"conv{k}", BinaryConv2d.from_conv(conv))
    return randomize_bn(model, seed=11, negative=0.25, zero=0.1).eval()


def test_binary_nin_cbap_every_bn_folds_and_signs_are_identical() -> None:
    model = _binary_nin("cbap")
    fused = fuse(model)
    report = fuse_report(fused)
    assert report.left == ()
    kinds = {f.bn: f.kind for f in report.folded}
    assert kinds == {**{f"features.bn{k}": "threshold" for k in range(1, 8)},
                     "features.bn8": "affine", "features.bn9": "affine"}
    assert all(f.negated and f.constant for f in report.folded if f.kind == "threshold")
    torch.manual_seed(1)
    _assert_binary_equivalent(model, fused, torch.randn(6, 3, 32, 32))


def test_binary_nin_bacp_folds_through_pools_only_with_non_negative_scales() -> None:
    model = _binary_nin("bacp")
    with torch.no_grad():
        model.features.bn3.weight.abs_()  # bn3 folds through pool1; bn6 keeps negatives
    fused = fuse(model)
    report = fuse_report(fused)
    folded = {f.bn: f for f in report.folded}
    assert folded["features.bn3"].via == ("features.pool1",)
    assert folded["features.bn3"].into == "features.conv3"
    assert folded["features.bn8"].kind == folded["features.bn9"].kind == "affine"
    assert report.left_names == ("features.bn6",)
    assert "max-pool features.pool2 needs every BN scale >= 0" in report.reason("features.bn6")
    torch.manual_seed(2)
    _assert_binary_equivalent(model, fused, torch.randn(6, 3, 32, 32))


def test_functional_max_pool_before_the_bn() -> None:
    import torch.nn.functional as F

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)
            self.bn = nn.BatchNorm2d(5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(F.max_pool2d(self.conv(x), 2, padding=1))
            return torch.sign(F.hardtanh(y))

    model = randomize_bn(Pooled().double(), seed=6, negative=0.0, zero=0.2).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert [(f.bn, f.kind, f.via, f.constant) for f in report.folded] == [
        ("bn", "threshold", ("max_pool2d",), 1)]
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    assert torch.equal(fused(x), model(x))
