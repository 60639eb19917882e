"""Each criterion picks, on hand-made tensors, the channels its paper's rule picks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netshrink.prune import (
    ChannelPruneConfig,
    apoz_scores,
    bn_gamma_scores,
    fpgm_scores,
    l1_scores,
    l2_scores,
    list_criteria,
    mean_activation_scores,
    plan_channels,
    random_scores,
    register_criterion,
    taylor_scores,
)


def _lowest(scores: torch.Tensor, k: int = 1) -> list[int]:
    return sorted(scores.argsort()[:k].tolist())


def test_registry_lists_every_criterion():
    assert set(list_criteria()) >= {"bn_gamma", "l1", "l2", "fpgm", "taylor", "apoz",
                                    "mean_activation", "random"}


def test_bn_gamma_uses_the_magnitude_of_the_scale():
    gamma = torch.tensor([0.5, -0.1, 2.0, 0.05])
    assert torch.equal(bn_gamma_scores(gamma), gamma.abs())
    assert _lowest(bn_gamma_scores(gamma), 2) == [1, 3]


def test_l1_and_l2_norms_rank_filters_differently():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    w = w.reshape(3, 1, 2, 2)
    assert l1_scores(w).tolist() == [4.0, 3.0, 8.0]
    assert torch.allclose(l2_scores(w), torch.tensor([2.0, 3.0, 4.0]))
    assert _lowest(l1_scores(w)) == [1] and _lowest(l2_scores(w)) == [0]


def _geometric_median(points: torch.Tensor, steps: int = 500) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    y = points.mean(0)
    for _ in range(steps):
        d = (points - y).norm(dim=1).clamp_min(1e-12)
        y = (points / d[:, None]).sum(0) / (1 / d).sum()
    return y


def test_fpgm_prunes_the_filter_nearest_the_geometric_median_not_the_smallest():
    pts = torch.tensor([[10.0, 10.5], [13.0, 10.0], [7.0, 10.0], [10.0, 13.0], [10.0, 6.0],
                        [0.5, 0.0]], dtype=torch.float64)
    w = pts.reshape(6, 2, 1, 1)
    gm = _geometric_median(pts)
    nearest = int((pts - gm).norm(dim=1).argmin())
    assert nearest == 0
    assert _lowest(fpgm_scores(w)) == [nearest]
    assert _lowest(l2_scores(w)) == [5]  # a norm criterion would drop another filter
    expected = torch.cdist(pts, pts).sum(1)
    assert torch.allclose(fpgm_scores(w), expected)


def test_taylor_is_the_squared_sum_of_weight_times_gradient():
    w = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 0.5]])
    g = torch.tensor([[1.0, -1.0], [0.0, 5.0], [2.0, 2.0]])
    assert taylor_scores(w, g).tolist() == [1.0, 0.0, 4.0]
    assert _lowest(taylor_scores(w, g)) == [1]


def test_apoz_and_mean_activation_per_channel():
    act = torch.tensor([[[[0.0, 0.0]], [[0.0, 2.0]], [[1.0, 3.0]]],
                        [[[0.0, 0.0]], [[4.0, 0.0]], [[1.0, 1.0]]]])  # (N=2, C=3, 1, 2)
    assert apoz_scores(act).tolist() == [0.0, 0.5, 1.0]  # 1 - fraction of zeros
    assert mean_activation_scores(act).tolist() == [0.0, 1.5, 1.5]
    assert _lowest(apoz_scores(act)) == [0]


def test_random_scores_are_seeded():
    assert torch.equal(random_scores(5, 3), random_scores(5, 3))
    assert not torch.equal(random_scores(5, 3), random_scores(5, 4))


class _DeadChannel(nn.Module):
    """Channel 2 of ``bn`` is always negative, so it is zero after the ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            self.bn.bias[2] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x)))).mean((2, 3))


@pytest.mark.parametrize("criterion", ["apoz", "mean_activation", "taylor"])
def test_data_criteria_drop_the_dead_channel(criterion):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g))
            for _ in range(3)]
    model = _DeadChannel().eval()
    config = ChannelPruneConfig(criterion=criterion, amount=0.25, max_batches=2)
    plan = plan_channels(model, data[0][0], config, data=data)
    assert plan.removed["conv"] == (2,)
    assert model.conv.weight.grad is None  # taylor cleans up its gradients


def test_data_criteria_need_data():
    with pytest.raises(ValueError, match="criterion 'taylor' needs data"):
        plan_channels(_DeadChannel().eval(), torch.randn(1, 3, 6, 6),
                      ChannelPruneConfig(criterion="taylor"))


def test_a_registered_criterion_can_be_used():
    @register_criterion("test_last_channels_first")
    def _score(ctx):
        return {c: -float(i) for i, c in enumerate(ctx.graph.producers["conv"])}

    plan = plan_channels(_DeadChannel().eval(), torch.randn(1, 3, 6, 6),
                         ChannelPruneConfig(criterion="test_last_channels_first", amount=0.5))
    assert plan.removed["conv"] == (2, 3)


@pytest.mark.parametrize("criterion", ["bn_gamma", "l1", "fpgm", "random"])
@pytest.mark.parametrize("where", ["conv.weight", "bn.weight", "bn.running_var"])
def test_non_finite_weights_are_an_error_naming_the_layer(criterion, where):
    """Before, NaN scores were silently kept out of the ranking: nothing was pruned."""
    from netshrink.prune import NonFiniteScoreError, prune_channels

    model = _DeadChannel().eval()
    layer, attr = where.split(".")
    with torch.no_grad():
        getattr(getattr(model, layer), attr)[1] = float("nan")
    with pytest.raises(NonFiniteScoreError, match=f"layer '{layer}' has non-finite {attr}"):
        prune_channels(model, torch.randn(1, 3, 6, 6),
                       ChannelPruneConfig(criterion=criterion, amount=0.5))
    assert issubclass(NonFiniteScoreError, ValueError)


def test_a_non_finite_score_is_an_error_naming_the_layer():
    from netshrink.prune import NonFiniteScoreError

    @register_criterion("test_inf_score")
    def _score(ctx):
        return {c: (math.inf if i == 0 else float(i))
                for i, c in enumerate(ctx.graph.producers["conv"])}

    with pytest.raises(NonFiniteScoreError, match="1 channel\\(s\\) a non-finite score.*'conv'"):
        plan_channels(_DeadChannel().eval(), torch.randn(1, 3, 6, 6),
                      ChannelPruneConfig(criterion="test_inf_score", amount=0.5))
