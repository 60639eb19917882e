"""Shared layers: weight = centroids[indices]; centroid gradients are the per-cluster sums;
pruned weights stay zero and send no gradient."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import HasCodebookForm
from netshrink.share import SharedConv2d, SharedLinear, share_layer


def _conv(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(3, 6, 3, padding=1).double()


def test_weight_is_the_codebook_lookup_and_the_output_the_plain_layers() -> None:
    conv = _conv()
    shared = share_layer(conv, bits=3)
    assert isinstance(shared, SharedConv2d) and isinstance(shared, HasCodebookForm)
    assert "weight" not in dict(shared.named_parameters())
    assert torch.equal(shared.weight, shared.centroids[shared.indices.long()])
    assert len(torch.unique(shared.weight)) <= 8
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert torch.equal(shared(x), F.conv2d(x, shared.weight.detach(), conv.bias, padding=1))
    form = shared.codebook_form()
    assert form.bits == 3 and form.mask is None and torch.equal(form.weight(), shared.weight)


@pytest.mark.parametrize("pruned", [False, True])
def test_centroid_gradient_is_the_sum_of_its_weights_gradients(pruned: bool) -> None:
    conv = _conv()
    if pruned:  # a quarter of the weights pruned to exact zero
        with torch.no_grad():
            conv.weight.mul_(torch.rand(conv.weight.shape, generator=torch.Generator()
                                        .manual_seed(1)) > 0.25)
    shared = share_layer(conv, bits=4)
    assert (shared.mask is not None) == pruned
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    r = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    (shared(x) * r).sum().backward()
    # by hand: the gradient of the loss w.r.t. every weight of the plain layer, summed per
    # cluster over the weights that are not pruned
    w = shared.weight.detach().clone().requires_grad_(True)
    (F.conv2d(x, w, conv.bias.detach(), padding=1) * r).sum().backward()
    keep = torch.ones_like(w, dtype=torch.bool) if shared.mask is None else shared.mask
    expected = torch.zeros(16, dtype=torch.float64)
    for c in range(16):
        expected[c] = w.grad[(shared.indices.long() == c) & keep].sum()
    assert torch.allclose(shared.centroids.grad, expected, rtol=1e-12, atol=1e-12)
    if pruned:  # the pruned weights had gradients, and none of it reached a centroid
        assert w.grad[~keep].abs().sum() > 0
        assert torch.count_nonzero(shared.weight[~keep]) == 0


def test_pruned_zeros_stay_zero_through_fine_tuning() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 7)
    with torch.no_grad():
        lin.weight[:, ::2] = 0
    shared = share_layer(lin, bits=2)
    assert isinstance(shared, SharedLinear) and int(shared.mask.sum()) == 70
    opt = torch.optim.SGD(shared.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    before = shared.centroids.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        shared(torch.randn(8, 20)).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(before, shared.centroids.detach())  # the centroids did train
    assert torch.count_nonzero(shared.weight[:, ::2]) == 0
    assert len(torch.unique(shared.weight[:, 1::2])) <= 4


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="bits=9"):
        SharedLinear(3, 4, bits=9)
    layer = SharedLinear(3, 4, bits=2)
    with pytest.raises(ValueError, match="exactly when the layer was built sparse"):
        layer.set_codebook(torch.zeros(4), torch.zeros(4, 3), torch.ones(4, 3, dtype=torch.bool))
