"""Two BitConv2d in a row keep their activations packed: the first emits the second's input
bits (its exact sums against per-channel intervals tabulated from the float epilogue and the
layers in between), max-pools in between become OR / AND of bits. Outputs stay bit-identical
to the fake-quantized model: odd channel counts, padding on either side, stride 2, groups,
ternary weights, BatchNorms with negative scales before and after the pool, folded or not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netshrink.kernels import BitConv2d, accelerate, available_paths
from netshrink.quant import QuantConfig, quantize_

pytestmark = pytest.mark.usefixtures("kernels")


def _bn(c: int) -> nn.BatchNorm2d:
    """Eval BN with statistics away from the identity and about half its scales negative."""
    bn = nn.BatchNorm2d(c)
    bn.running_mean.uniform_(-3.0, 3.0)
    bn.running_var.uniform_(0.5, 4.0)
    bn.weight.data.uniform_(-1.0, 1.0)
    bn.weight.data[0] = 0.0  # a constant channel
    bn.bias.data.uniform_(-1.0, 1.0)
    return bn


def _model(cin: int, cmid: int, cout: int, first: dict, between: list[nn.Module],
           second: dict, w: str) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(cin, cmid, bias=False, **first), *between,
                        nn.Conv2d(cmid, cout, bias=False, **second))
    cfg = QuantConfig(w=w, a="binary", binary_scale=False, ternary_scale=False, first="same",
                      last="same")
    return quantize_(net, cfg).eval()


def _check(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        ref = model(x)
    fast = accelerate(model)
    convs = [m for m in fast if isinstance(m, BitConv2d)]
    assert convs[0].emit_lo is not None, "the two convs were not chained on packed bits"
    assert all(isinstance(m, nn.Identity | BitConv2d) for m in list(fast)[1:-1])
    for path in available_paths():
        for conv in convs:
            conv.kernel_path = path
        with torch.no_grad():
            out = fast(x)
        assert out.dtype == torch.float32 and torch.equal(out, ref), path
    return fast


CHAINS = [  # cin, cmid, cout, first conv, second conv: odd counts, > 64 channels, padding
    (5, 70, 33, {"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "padding": 1}),
    (70, 33, 9, {"kernel_size": 1}, {"kernel_size": 3, "padding": 2, "stride": 2}),
    (9, 130, 12, {"kernel_size": 3, "padding": 1, "stride": 2}, {"kernel_size": 1}),
    (8, 66, 21, {"kernel_size": 1}, {"kernel_size": 3, "padding": 1, "groups": 3}),
    # groups on both sides: the producer's blocks of 8 start at odd bits of the consumer's words
    (10, 66, 21, {"kernel_size": 1, "groups": 2}, {"kernel_size": 3, "padding": 1, "groups": 3}),
]


@pytest.mark.parametrize("w", ["binary", "ternary"])
@pytest.mark.parametrize(("cin", "cmid", "cout", "first", "second"), CHAINS)
def test_bn_and_hardtanh_between(cin, cmid, cout, first, second, w) -> None:
    """An unfolded BatchNorm (negative scales, a zero one) and a hardtanh between the convs:
    tabulated into the first one's intervals."""
    torch.manual_seed(cmid)
    model = _model(cin, cmid, cout, first, [_bn(cmid), nn.Hardtanh()], second, w)
    x = torch.randn(2, cin, 9, 11)
    x[0, :, 0, 0] = 0.0
    _check(model, x)


@pytest.mark.parametrize("pool", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
@pytest.mark.parametrize(("cin", "cmid", "cout", "first", "second"), CHAINS)
def test_max_pool_between_with_negative_scales(cin, cmid, cout, first, second, pool) -> None:
    """BN -> hardtanh -> max-pool -> BN (negative scales after the pool: AND-pooled channels),
    on odd sizes (pool windows cut by the border)."""
    torch.manual_seed(cout + pool[0])
    between = [_bn(cmid), nn.Hardtanh(), nn.MaxPool2d(*pool), _bn(cmid), nn.Identity()]
    model = _model(cin, cmid, cout, first, between, second, "binary")
    x = torch.randn(3, cin, 13, 10)
    fast = _check(model, x)
    consumer = [m for m in fast if isinstance(m, BitConv2d)][1]
    assert consumer.pre_pool == pool
    negative = between[3].weight.detach() < 0
    assert consumer.pool_and is not None and int(consumer.pool_and.ne(0).sum()) > 0
    # the AND-pooled channels matter: OR-pooling them too changes the outputs
    if negative.any():
        consumer.pool_and = torch.zeros_like(consumer.pool_and)
        with torch.no_grad():
            assert not torch.equal(fast(x), model(x))


def test_folded_batchnorm_chain_at_batch_one() -> None:
    """BN folded into the first conv (affine: scales of both signs), then the pool; batch 1,
    two threads: rows split across them, each writing its own packed words."""
    torch.manual_seed(3)
    model = _model(6, 70, 17, {"kernel_size": 3, "padding": 1},
                   [nn.Hardtanh(), nn.MaxPool2d(2)], {"kernel_size": 3, "padding": 1}, "binary")
    model[0].fold_affine(torch.randn(70), torch.randn(70))
    x = torch.randn(1, 6, 16, 16)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check(model, x)
    finally:
        torch.set_num_threads(before)


def test_chains_of_three_and_the_packed_input_check() -> None:
    """conv -> conv -> conv: the middle one takes bits and emits bits; a packed input of the
    wrong shape is refused naming the expected one."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(4, 70, 3, padding=1, bias=False), _bn(70), nn.Hardtanh(),
                        nn.Conv2d(70, 65, 1, bias=False), _bn(65),
                        nn.Conv2d(65, 7, 3, padding=1, bias=False))
    cfg = QuantConfig(w="binary", a="binary", binary_scale=False, first="same", last="same")
    model = quantize_(net, cfg).eval()
    fast = _check(model, torch.randn(2, 4, 7, 7))
    assert fast[3].emit_lo is not None and fast[5].emit_lo is None
    with pytest.raises(ValueError, match=r"\(N, 1, H, W, 2\) int64"):
        fast[3](torch.zeros(1, 1, 7, 7, 1, dtype=torch.int64))
