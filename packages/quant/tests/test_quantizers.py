"""Every quantizer against hand-computed small tensors: levels, range, symmetry, scales."""

import pytest
import torch

from netshrink.quant import (
    BinaryAct,
    BinaryWeight,
    DoReFaAct,
    DoReFaWeight,
    HalfAct,
    HalfWeight,
    TernaryAct,
    TernaryWeight,
)

THIRD = 1.0 / 3.0


def test_dorefa_weight_2bit_hand_computed():
    # tanh: 0.0997, 0.4621, -0.4621, 0.9640, -0.9640, -0.0997; normalised x = t / 1.928 + 0.5;
    # x * 3 = 1.655, 2.219, 0.781, 3, 0, 1.345 -> codes 2, 2, 1, 3, 0, 1 -> 2c/3 - 1
    w = torch.tensor([[0.1, 0.5, -0.5, 2.0, -2.0, -0.1]])
    q = DoReFaWeight(2)
    codes, params = q.encode(w)
    assert codes.tolist() == [[2, 2, 1, 3, 0, 1]] and params == {}
    expected = torch.tensor([[THIRD, THIRD, -THIRD, 1.0, -1.0, -THIRD]])
    assert torch.allclose(q(w), expected, atol=1e-7)
    assert torch.equal(q(w), q.decode(codes, params))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dorefa_weight_levels_range_symmetry(bits):
    w = torch.linspace(-3, 3, 20001).view(1, -1)
    q = DoReFaWeight(bits)(w)
    levels = torch.unique(q)
    assert levels.numel() == 2 ** bits
    assert levels.min().item() == -1.0 and levels.max().item() == 1.0
    steps = levels.diff()
    assert torch.allclose(steps, torch.full_like(steps, 2.0 / (2 ** bits - 1)), atol=1e-6)
    r = torch.randn(64, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(DoReFaWeight(bits)(-r), -DoReFaWeight(bits)(r))
    assert DoReFaWeight(bits).encode(r)[0].dtype == torch.uint8


def test_dorefa_act_2bit_hand_computed():
    x = torch.tensor([-0.5, 0.0, 0.1, 0.2, 0.45, 0.55, 0.9, 1.5])
    # clip [0, 1] -> *3 -> 0, 0, 0.3, 0.6, 1.35, 1.65, 2.7, 3 -> round -> /3
    expected = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3]) / 3.0
    assert torch.equal(DoReFaAct(2)(x), expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("clip", [1.0, 6.0])
def test_dorefa_act_levels_and_range(bits, clip):
    x = torch.linspace(-2, clip + 2, 40001)
    levels = torch.unique(DoReFaAct(bits, clip=clip)(x))
    n = 2 ** bits - 1
    assert levels.numel() == n + 1
    assert levels.min().item() == 0.0 and levels.max().item() == clip
    assert torch.allclose(levels, torch.arange(n + 1) * (clip / n), atol=1e-5)


def test_ternary_weight_per_channel_threshold_and_scale():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.05],     # mean|w| 0.3875, D 0.27125
                      [2.0, -0.2, 0.0, 0.3]])     # mean|w| 0.625,  D 0.4375
    q = TernaryWeight()
    codes, params = q.encode(w)
    assert codes.tolist() == [[1, 0, 2, 1], [2, 1, 1, 1]]  # t + 1
    assert torch.allclose(params["scale"], torch.tensor([0.7, 2.0]))
    expected = torch.tensor([[0.0, -0.7, 0.7, 0.0], [2.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(q(w), expected)
    assert torch.equal(q(w), q.decode(codes, params))
    assert torch.equal(q(-w), -q(w))
    no_scale = TernaryWeight(scale=False)
    assert torch.equal(no_scale(w), torch.tensor([[0.0, -1, 1, 0], [1, 0, 0, 0]]))
    assert no_scale.encode(w)[1] == {}


def test_ternary_weight_levels_on_random_data():
    w = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    q = TernaryWeight()(w)
    for row, wrow in zip(q, w, strict=True):
        assert torch.unique(row).numel() == 3
        delta = 0.7 * wrow.abs().mean()
        assert torch.equal(row != 0, wrow.abs() > delta)
        assert torch.allclose(row.abs().max(), wrow.abs()[wrow.abs() > delta].mean())


def test_binary_weight_sign_and_scale():
    w = torch.tensor([[0.3, -0.1, 0.0, -0.6], [1.0, 2.0, -3.0, 0.5]])
    q = BinaryWeight()
    codes, params = q.encode(w)
    assert codes.tolist() == [[1, 0, 1, 0], [1, 1, 0, 1]]  # 0 maps to +1
    assert torch.allclose(params["scale"], torch.tensor([0.25, 1.625]))
    signs = torch.tensor([[1.0, -1, 1, -1], [1, 1, -1, 1]])
    assert torch.allclose(q(w), signs * torch.tensor([[0.25], [1.625]]))
    assert torch.equal(q(w), q.decode(codes, params))
    bnn = BinaryWeight(scale=False)
    assert torch.equal(bnn(w), signs) and bnn.encode(w)[1] == {}
    assert torch.unique(bnn(torch.randn(4, 100))).tolist() == [-1.0, 1.0]


def test_binary_and_ternary_activations():
    x = torch.tensor([-2.0, -0.6, -0.4, 0.0, 0.4, 0.6, 2.0])
    assert BinaryAct()(x).tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert TernaryAct()(x).tolist() == [-1, -1, 0, 0, 0, 1, 1]
    assert torch.equal(TernaryAct()(-x), -TernaryAct()(x))
    assert BinaryAct.input_sign and not TernaryAct.input_sign


def test_fp16_rounding_and_saturation():
    x = torch.tensor([1.0 / 3.0, 1e6, -1e6, 1e-8, 2049.0])
    expected = torch.tensor([0.333251953125, 65504.0, -65504.0, 0.0, 2048.0])  # 1e-8 underflows
    assert torch.equal(HalfAct()(x), expected)
    w = x.view(1, -1)
    codes, params = HalfWeight().encode(w)
    assert codes.dtype == torch.float16
    assert torch.equal(HalfWeight()(w), HalfWeight().decode(codes, params))
    assert torch.equal(HalfWeight()(w), expected.view(1, -1))


@pytest.mark.parametrize("quantizer", [
    DoReFaWeight(2), DoReFaWeight(4), DoReFaWeight(8), TernaryWeight(), TernaryWeight(scale=False),
    BinaryWeight(), BinaryWeight(scale=False), HalfWeight(),
])
def test_forward_equals_decode_of_encode_bitwise(quantizer):
    w = torch.randn(16, 75, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.equal(quantizer(w).detach(), quantizer.decode(*quantizer.encode(w)))


def test_bad_bits_rejected():
    with pytest.raises(ValueError, match="bits=1 .*2, 3, 4"):
        DoReFaWeight(1)
    with pytest.raises(ValueError, match="bits=9"):
        DoReFaAct(9)
