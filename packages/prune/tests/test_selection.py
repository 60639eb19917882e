"""Selection rules: exact fraction, per layer, regular multiples, group mode, floor, ignored
layers; and the params / MACs of the pruned model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netshrink.core import ModelStats
from netshrink.prune import (
    ChannelPruneConfig,
    DependencyGraph,
    PruningBlockedError,
    plan_channels,
    prune_channels,
)


def _chain(widths=(3, 24, 16, 12, 5)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU()]
    layers += [nn.Conv2d(widths[-2], widths[-1], 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


X = torch.randn(2, 3, 8, 8)


def test_normal_global_drops_the_exact_fraction_with_the_lowest_scores(randomize_bn):
    model = randomize_bn(_chain()).eval()
    pruned = prune_channels(model, X, ChannelPruneConfig(criterion="bn_gamma", amount=0.5))
    kept = [c.out_channels for c in _convs(pruned)]
    assert sum(kept[:3]) == (24 + 16 + 12) // 2 and kept[3] == 5
    gammas = torch.cat([bn.weight.detach() for bn in model.modules()
                        if isinstance(bn, nn.BatchNorm2d)])
    threshold = gammas.sort().values[len(gammas) // 2 - 1]
    expected = [int((bn.weight > threshold).sum()) for bn in model.modules()
                if isinstance(bn, nn.BatchNorm2d)]
    assert kept[:3] == expected  # network slimming's global threshold


def test_per_layer_drops_the_fraction_of_every_layer():
    pruned = prune_channels(_chain().eval(), X,
                            ChannelPruneConfig(criterion="l1", amount=0.25, scope="per_layer"))
    assert [c.out_channels for c in _convs(pruned)] == [18, 12, 9, 5]


def test_params_and_macs_drop_as_expected(randomize_bn):
    model = randomize_bn(_chain()).eval()
    pruned = prune_channels(model, X, ChannelPruneConfig(criterion="l2", amount=0.5))
    a, b, c, _ = (m.out_channels for m in _convs(pruned))
    hw = 8 * 8
    params = 3 * a * 9 + 2 * a + a * b * 9 + 2 * b + b * c * 9 + 2 * c + c * 5 + 5
    macs = (3 * a * 9 + a * b * 9 + b * c * 9 + c * 5) * hw
    stats = ModelStats.measure(pruned, X[:1])
    before = ModelStats.measure(model, X[:1])
    assert (stats.params, stats.macs) == (params, macs)
    assert stats.macs < before.macs and stats.params < before.params
    assert stats.float_bytes < before.float_bytes


@pytest.mark.parametrize("round_to", [4, 8])
def test_regular_mode_keeps_multiples_of_round_to(round_to, randomize_bn):
    model = randomize_bn(_chain((3, 40, 32, 24, 5))).eval()
    config = ChannelPruneConfig(criterion="bn_gamma", amount=0.45, mode="regular",
                                round_to=round_to)
    pruned = prune_channels(model, X, config)
    kept = [c.out_channels for c in _convs(pruned)][:3]
    assert kept != [40, 32, 24]
    assert all(k % round_to == 0 and k >= round_to for k in kept)


def test_regular_mode_on_resnet_keeps_every_pruned_layer_a_multiple_of_8(randomize_bn):
    models = pytest.importorskip("netshrink.models")
    model = randomize_bn(models.create_model("resnet18_cifar", width=0.25)).eval()
    config = ChannelPruneConfig(criterion="bn_gamma", amount=0.5, mode="regular", round_to=8)
    pruned = prune_channels(model, torch.randn(2, 3, 32, 32), config)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    changed = [n for n in before if after[n] != before[n]]
    assert len(changed) > 10
    assert all(after[n] % 8 == 0 for n in changed)


@pytest.mark.parametrize("min_channels", [1, 3])
def test_floor_holds_at_amount_099(min_channels):
    models = pytest.importorskip("netshrink.models")
    model = models.create_model("nin", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    config = ChannelPruneConfig(criterion="l1", amount=0.99, min_channels=min_channels)
    pruned = prune_channels(model, x, config)
    outs = [c.out_channels for c in _convs(pruned)]
    assert outs[:-1] == [min_channels] * 8 and outs[-1] == 10
    assert pruned(x).shape == (2, 10)


def test_group_mode_keeps_nin_gc_grouped_convs_valid():
    models = pytest.importorskip("netshrink.models")
    model = models.create_model("nin_gc", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    config = ChannelPruneConfig(criterion="l1", amount=0.5, mode="group")
    pruned = prune_channels(model, x, config)
    grouped = [(n, m) for n, m in pruned.named_modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 7
    for name, conv in grouped:
        original = model.get_submodule(name)
        assert conv.groups == original.groups
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
    assert sum(m.out_channels for _, m in grouped) < sum(
        model.get_submodule(n).out_channels for n, _ in grouped)
    assert pruned(x).shape == (2, 10)  # the channel shuffles still divide their input
    pruned.train()(x).sum().backward()  # and it trains


def test_normal_mode_leaves_nin_gc_grouped_convs_whole():
    """Every channel of nin_gc is bound by a grouped conv or shuffle: normal mode cannot prune
    any, and says so (naming them and mode='group') instead of returning the model unpruned."""
    models = pytest.importorskip("netshrink.models")
    model = models.create_model("nin_gc", width=0.25).eval()
    with pytest.raises(PruningBlockedError, match=r"groups of features\.conv.*mode='group'"):
        prune_channels(model, torch.randn(2, 3, 32, 32), ChannelPruneConfig(amount=0.5))
    pruned = prune_channels(model, torch.randn(2, 3, 32, 32),
                            ChannelPruneConfig(amount=0.5, mode="group"))
    assert pruned.features.conv4.out_channels < model.features.conv4.out_channels


def test_ignored_layers_and_patterns_are_kept(randomize_bn):
    model = randomize_bn(_chain()).eval()
    config = ChannelPruneConfig(criterion="bn_gamma", amount=0.5, ignored_layers=["0", "3*"])
    pruned = prune_channels(model, X, config)
    assert [c.out_channels for c in _convs(pruned)][:3] == [24, 16, 6]


def test_amount_zero_changes_nothing():
    plan = plan_channels(_chain().eval(), X, ChannelPruneConfig(criterion="l1", amount=0.0))
    assert plan.modules == {} and plan.removed_channels == 0


def test_graph_groups_report_prunable_channels():
    g = DependencyGraph.build(_chain().eval(), X)
    assert sorted(grp.prunable for grp in g.groups()) == [0, 12, 16, 24]
    assert "24 channels" in g.summary()


@pytest.mark.parametrize(("field", "value", "match"), [
    ("criterion", "magic", "criterion='magic' is not allowed"),
    ("amount", 1.5, "amount=1.5 must be at most 1"),
    ("scope", "everywhere", "scope='everywhere' is not allowed"),
    ("mode", "fast", "mode='fast' is not allowed"),
    ("round_to", 8, "round_to=8 is only used by mode='regular'"),
    ("min_channels", 0, "min_channels=0 must be at least 1"),
    ("ignored_layers", "conv1", "ignored_layers='conv1' must be a list"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        ChannelPruneConfig(**{field: value})
    with pytest.raises(ValueError, match="round_to=1 must be at least 2 in regular mode"):
        ChannelPruneConfig(mode="regular")


# -- macs_target: the amount searched for a MACs budget --------------------------------------

@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
@pytest.mark.parametrize(("criterion", "mode", "scope"), [
    ("bn_gamma", "normal", "global"), ("l1", "normal", "per_layer"),
    ("fpgm", "regular", "per_layer"),
])
def test_macs_target_lands_just_under_the_target(target, criterion, mode, scope, randomize_bn):
    model = randomize_bn(_chain((3, 40, 32, 24, 5))).eval()
    config = ChannelPruneConfig(criterion=criterion, macs_target=target, mode=mode, scope=scope,
                                round_to=4 if mode == "regular" else 1)
    before = ModelStats.measure(model, X).macs
    pruned = prune_channels(model, X, config)
    ratio = ModelStats.measure(pruned, X).macs / before
    assert ratio <= target
    # the search takes the largest feasible model: one more step of amount would go far lower
    assert ratio > target - (0.12 if mode == "regular" else 0.06)


def test_macs_target_gives_criteria_the_same_cost_on_resnet(randomize_bn):
    models = pytest.importorskip("netshrink.models")
    model = randomize_bn(models.create_model("resnet18_cifar", width=0.25)).eval()
    x = torch.randn(1, 3, 32, 32)
    before = ModelStats.measure(model, x).macs
    ratios = {}
    for criterion in ("bn_gamma", "l1", "random"):
        config = ChannelPruneConfig(criterion=criterion, macs_target=0.5, scope="per_layer")
        ratios[criterion] = ModelStats.measure(prune_channels(model, x, config), x).macs / before
    assert all(0.47 < r <= 0.5 for r in ratios.values()), ratios


def test_macs_target_and_amount_are_exclusive_and_validated():
    with pytest.raises(ValueError, match="amount=0.3 and macs_target=0.5 were both given"):
        ChannelPruneConfig(amount=0.3, macs_target=0.5)
    with pytest.raises(ValueError, match="macs_target=0"):
        ChannelPruneConfig(macs_target=0.0)
    with pytest.raises(ValueError, match="macs_target=1.5"):
        ChannelPruneConfig(macs_target=1.5)
    assert ChannelPruneConfig().amount == 0.5


def test_unreachable_macs_target_says_what_is_reachable(randomize_bn):
    model = randomize_bn(_chain()).eval()
    with pytest.raises(ValueError, match=r"macs_target=0.001 cannot be reached.*leaves 0\.\d+"):
        prune_channels(model, X, ChannelPruneConfig(macs_target=0.001))


class _Stream(nn.Module):
    """A residual stream of 8 channels made by three filters each (stem + two blocks' second
    convs) and two blocks' hidden 16 channels made by one filter each: 56 filters in all."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.hidden = nn.ModuleList(nn.Conv2d(8, 16, 3, padding=1) for _ in range(2))
        self.back = nn.ModuleList(nn.Conv2d(16, 8, 3, padding=1) for _ in range(2))
        self.head = nn.Linear(8, 5)
        with torch.no_grad():  # the hidden filters rank lowest (as RepVGG's wide last stage)
            for conv in self.hidden:
                conv.weight.mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for hidden, back in zip(self.hidden, self.back, strict=True):
            x = x + back(torch.relu(hidden(x)))
        return self.head(x.mean((2, 3)))


def _filters(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def test_global_amount_counts_channels_when_classes_span_different_filter_counts():
    torch.manual_seed(0)
    model = _Stream().eval()
    pruned = prune_channels(model, X, ChannelPruneConfig(criterion="l1", amount=0.5))
    # half of the 56 prunable filters; counting classes (20 of 40) took 20 hidden filters only
    assert _filters(model) - _filters(pruned) == 28
    assert sum(c.out_channels for c in pruned.hidden) == 4  # the lowest-scored: 28 of 32
    assert pruned.stem.out_channels == 8 and pruned(X).shape == (2, 5)


def test_global_takes_the_next_ranked_classes_when_the_floor_stops_the_lowest():
    torch.manual_seed(0)
    model = _chain((3, 4, 32, 5)).eval()
    with torch.no_grad():
        model[0].weight.mul_(0.01)  # the narrow layer's 4 filters rank lowest
    pruned = prune_channels(model, X, ChannelPruneConfig(criterion="l1", amount=0.5))
    assert [c.out_channels for c in _convs(pruned)] == [1, 17, 5]  # 18 of 36 all the same
