"""fuse() on small standalone models: what folds, what stays (and why), and exactness."""

import copy

import pytest
import torch
from bnfuse_testing import randomize_bn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from netshrink.bnfuse import (
    REPORT_ATTR,
    FuseConfig,
    FuseReport,
    compare,
    fuse,
    fuse_report,
)


def _bn_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


class Mixed(nn.Module):
    """Every foldable kind: plain, grouped, depthwise and transposed convs, conv -> BN -> BN,
    a BN at the start before an unpadded conv, and flatten -> linear -> BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv0 = nn.Conv2d(3, 8, 1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.bn1b = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2, bias=False)
        self.bn4 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)
        self.bn5 = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(self.bn_in(x))
        x = torch.relu(self.bn1b(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.grouped(x)))
        x = torch.relu(self.bn3(self.dw(x)))
        x = self.bn4(self.up(x))
        x = x.mean(dim=(2, 3)).flatten(1)
        return self.bn5(self.fc(x))


def test_every_bn_of_a_foldable_model_is_folded_exactly() -> None:
    torch.manual_seed(0)
    model = randomize_bn(Mixed().double(), seed=1).eval()
    before = copy.deepcopy(model.state_dict())
    fused = fuse(model)
    report = fuse_report(fused)
    assert _bn_names(fused) == set()
    assert report.left == ()
    kinds = {f.bn: (f.kind, f.into) for f in report.folded}
    assert kinds == {"bn_in": ("input", "conv0"), "bn1": ("affine", "conv1"),
                     "bn1b": ("affine", "conv1"), "bn2": ("affine", "grouped"),
                     "bn3": ("affine", "dw"), "bn4": ("affine", "up"), "bn5": ("affine", "fc")}
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-12, atol=1e-12)
    # the input model is untouched and fused is a new, eval-mode model of the same class
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(fused) is Mixed and not fused.training
    assert isinstance(getattr(fused, REPORT_ATTR), FuseReport)


def test_float32_fold_is_within_rounding() -> None:
    torch.manual_seed(0)
    model = randomize_bn(Mixed(), seed=2).eval()
    report = compare(model, fuse(model), [torch.randn(16, 3, 8, 8)])
    assert report.max_rel_diff < 1e-5 and report.top1_agreement == 1.0


class Unfoldable(nn.Module):
    """BNs that must stay: at the start before a padded conv, after an add, after an average
    pool, after a conv whose output is also used elsewhere, after a shared conv, and one with
    no running statistics. (Each is followed by a ReLU or an add, so none can fold into the
    next layer instead; ``test_bn_after_a_pool_folds_into_an_unpadded_next_conv`` covers that.)"""

    def __init__(self) -> None:
        super().__init__()
        self.bn_start = nn.BatchNorm2d(3)
        self.conv_pad = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_a = nn.Conv2d(4, 4, 1)
        self.bn_add = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.bn_pool = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.bn_branch = nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 1)
        self.bn_shared = nn.BatchNorm2d(4)
        self.conv_c = nn.Conv2d(4, 4, 1)
        self.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pad(self.bn_start(x))
        x = self.bn_add(self.conv_a(x) + x)
        x = torch.relu(self.bn_pool(self.pool(x)))
        y = self.conv_b(x)
        x = self.bn_branch(y) + y
        x = torch.relu(self.bn_shared(self.shared(self.shared(x))))
        return self.bn_batch(self.conv_c(x))


def test_bns_that_cannot_fold_are_left_with_reasons() -> None:
    torch.manual_seed(0)
    model = randomize_bn(Unfoldable().double(), seed=3).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert report.folded == ()
    assert set(report.left_names) == _bn_names(model) == _bn_names(fused)
    assert "padded conv conv_pad (Conv2d) (padding=(1, 1))" in report.reason("bn_start")
    assert "starts the network" in report.reason("bn_start")
    assert "follows an add" in report.reason("bn_add")
    assert "follows pool (AvgPool2d)" in report.reason("bn_pool")
    assert "also used by an add" in report.reason("bn_branch")
    assert "shared is called 2 times" in report.reason("bn_shared")
    assert "no running statistics" in report.reason("bn_batch")
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert torch.equal(fused(x), model(x))
    assert "left   bn_add: follows an add" in str(report)


def test_bn_after_a_pool_folds_into_an_unpadded_next_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(2), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 6, 1, groups=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, padding=1))
    model = randomize_bn(model.double(), seed=8).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert [(f.bn, f.kind, f.into) for f in report.folded] == [("2", "input", "3")]
    assert report.reason("6") == ("follows 5 (MaxPool2d), not a conv or linear layer; it "
                                  "precedes a padded conv 7 (Conv2d) (padding=(1, 1)): the "
                                  "border would see BN(0) = shift instead of 0")
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-12, atol=1e-12)


def test_bn_before_a_reflect_padded_conv_folds_into_it() -> None:
    """Reflect padding copies BN outputs, so unlike zero padding it commutes with the BN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1,
                                                       padding_mode="reflect"))
    model = randomize_bn(model.double(), seed=4).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert [(f.bn, f.kind, f.into) for f in report.folded] == [("0", "input", "1")]
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-12, atol=1e-12)


class TokenLinear(nn.Module):
    """Linear over the last dim of (N, L, F) with L == F, then BatchNorm1d(L): the BN's
    channels are dim 1 (tokens), not the linear's features, so folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_linear_bn_is_only_folded_when_the_output_is_known_2d() -> None:
    torch.manual_seed(0)
    model = randomize_bn(TokenLinear().double(), seed=5).eval()
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    report = fuse_report(fuse(model))
    assert "cannot tell that fc's output is 2-D" in report.reason("bn")
    fused = fuse(model, example_input=x)
    report = fuse_report(fused)
    assert report.left_names == ("bn",)
    assert torch.equal(fused(x), model(x))
    flat = torch.randn(3, 6, dtype=torch.float64)
    fused = fuse(model, example_input=flat)
    report = fuse_report(fused)
    assert report.folded_names == ("bn",)
    torch.testing.assert_close(fused(flat), model(flat), rtol=1e-12, atol=1e-12)


def test_config_only_and_validation() -> None:
    model = randomize_bn(Mixed(), seed=6).eval()
    report = fuse_report(fuse(model, FuseConfig(only=["bn2", "bn5"])))
    assert set(report.folded_names) == {"bn2", "bn5"}
    assert report.reason("bn1") == "not selected (FuseConfig.only)"
    with pytest.raises(ValueError, match=r"only names \['nope'\] that are not BatchNorm"):
        fuse(model, FuseConfig(only=("nope",)))
    with pytest.raises(ValueError, match="binary=1 is not allowed"):
        FuseConfig(binary=1)
    with pytest.raises(ValueError, match="into_next='yes' is not allowed"):
        FuseConfig(into_next="yes")
    with pytest.raises(ValueError, match="only='bn1' must be None or a list"):
        FuseConfig(only="bn1")
    assert FuseConfig(only=["a"]).only == ("a",)


def test_untraceable_model_gives_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(TypeError, match="Branchy cannot be traced"):
        fuse(Branchy())


def test_report_as_dict_is_json_able() -> None:
    import json

    report = fuse_report(fuse(randomize_bn(Unfoldable(), seed=1).eval()))
    record = json.loads(json.dumps(report.as_dict()))
    assert {b["bn"] for b in record["left"]} == set(report.left_names)


class FakeQuantConv(nn.Conv2d):
    """Rounds its weight in forward: rewriting its float weight would change its codes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, torch.round(self.weight * 4) / 4, self.bias)


def test_layers_whose_weights_are_not_plain_storage_are_left() -> None:
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = nn.Sequential(FakeQuantConv(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                          weight_norm(nn.Conv2d(4, 4, 1)), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    model[7].register_forward_hook(lambda m, i, o: None)
    model[9].register_forward_hook(lambda m, i, o: o.clamp(-0.5, 0.5))  # changes conv 9's output
    model = randomize_bn(model, seed=9).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert report.folded == ()
    assert "FakeQuantConv subclasses Conv2d with its own forward" in report.reason("1")
    assert "has parametrizations" in report.reason("4")
    assert "forward hooks, which removing it would drop" in report.reason("7")
    assert "9 has forward hooks, which would see the folded output" in report.reason("10")
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(fused(x), model(x))


def test_tied_weights_are_not_folded() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    model = randomize_bn(nn.Sequential(a, nn.BatchNorm1d(4), b), seed=1).eval()
    report = fuse_report(fuse(model))
    assert "0 shares a parameter with another module" in report.reason("1")


def test_a_bn_with_two_names_is_removed_under_both() -> None:
    class Alias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)
            self.same_bn = self.bn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.same_bn(self.conv(x))

    model = randomize_bn(Alias().double(), seed=2).eval()
    fused = fuse(model)
    report = fuse_report(fused)
    assert len(report.folded) == 1 and _bn_names(fused) == set()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-12, atol=1e-12)
