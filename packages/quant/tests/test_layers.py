"""Quantized layers: same parameters, quantized input and weight, core contracts."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import INPUT_SIGN_ATTR, FoldsAffine, ModelStats, applies_sign_to_input
from netshrink.quant import (
    BinaryAct,
    BinaryWeight,
    DoReFaAct,
    DoReFaWeight,
    FrozenWeight,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    TernaryAct,
    TernaryWeight,
)

GEN = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("groups", [1, 4, 16], ids=["plain", "grouped", "depthwise"])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_computes_with_quantized_input_and_weight(groups, bias):
    conv = nn.Conv2d(16, 16, 3, padding=1, stride=2, groups=groups, bias=bias)
    wq, aq = TernaryWeight(), DoReFaAct(2)
    q = QuantConv2d.from_float(conv, wq, aq)
    assert q.weight is conv.weight and q.bias is conv.bias  # the trained Parameters, shared
    x = torch.randn(2, 16, 8, 8, generator=GEN)
    w_ref = wq(conv.weight.view(16, -1)).view_as(conv.weight)
    expected = F.conv2d(aq(x), w_ref, conv.bias, stride=2, padding=1, groups=groups)
    assert torch.equal(q(x), expected)
    # per-output-channel scale: one row per output channel
    scale = wq.encode(conv.weight.view(16, -1))[1]["scale"]
    assert scale.shape == (16,)


def test_linear_computes_with_quantized_input_and_weight():
    lin = nn.Linear(12, 5)
    q = QuantLinear.from_float(lin, BinaryWeight(), BinaryAct())
    x = torch.randn(3, 12, generator=GEN)
    w = lin.weight
    w_ref = torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(1, keepdim=True)
    x_ref = torch.where(x >= 0, 1.0, -1.0)
    assert torch.allclose(q(x), F.linear(x_ref, w_ref, lin.bias), atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_scales_are_per_output_channel(groups):
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=groups)
    q = QuantConvTranspose2d.from_float(conv, BinaryWeight(), None)
    w = conv.weight  # (in, out / groups, k, k)
    _, params = q.weight_quant.encode(q._out_major(w))
    in_g, out_g = 4 // groups, 6 // groups
    manual = torch.stack([w[g * in_g:(g + 1) * in_g, j].abs().mean()
                          for g in range(groups) for j in range(out_g)])
    assert torch.allclose(params["scale"], manual)
    assert torch.equal(q._from_out_major(q._out_major(w)), w)
    x = torch.randn(2, 4, 5, 5, generator=GEN)
    w_ref = torch.where(w >= 0, 1.0, -1.0)
    for g in range(groups):
        for j in range(out_g):
            w_ref[g * in_g:(g + 1) * in_g, j] *= manual[g * out_g + j]
    expected = F.conv_transpose2d(x, w_ref, conv.bias, 2, 1, 1, groups)
    assert torch.allclose(q(x), expected, atol=1e-6)
    assert q(x).shape == conv(x).shape == (2, 6, 10, 10)


def test_packed_bits_and_input_sign_marker():
    conv = nn.Conv2d(8, 8, 3, bias=False)
    cases = [(DoReFaWeight(4), DoReFaAct(4), 4, False), (TernaryWeight(), BinaryAct(), 1.6, True),
             (BinaryWeight(), TernaryAct(), 1, False), (None, BinaryAct(), None, True)]
    for wq, aq, bits, sign in cases:
        q = QuantConv2d.from_float(conv, wq, aq)
        assert q.packed_bits == ({} if bits is None else {"weight": bits})
        assert getattr(q, INPUT_SIGN_ATTR) is sign and applies_sign_to_input(q) is sign
    q = QuantConv2d.from_float(conv, BinaryWeight(), BinaryAct())
    stats = ModelStats.measure(nn.Sequential(q), torch.zeros(1, 8, 5, 5))
    assert stats.float_bytes == 8 * 8 * 9 * 4
    assert stats.packed_bytes == 8 * 8 * 9 // 8


@pytest.mark.parametrize("layer", ["conv", "convT", "linear"])
@pytest.mark.parametrize("bias", [False, True])
def test_fold_affine_is_exact_and_keeps_codes(layer, bias):
    if layer == "conv":
        q = QuantConv2d.from_float(nn.Conv2d(6, 4, 3, bias=bias), TernaryWeight(), DoReFaAct(4))
        x = torch.randn(2, 6, 5, 5, generator=GEN)
        view = (1, -1, 1, 1)
    elif layer == "convT":
        q = QuantConvTranspose2d.from_float(nn.ConvTranspose2d(6, 4, 3, bias=bias, groups=2),
                                            BinaryWeight(), BinaryAct())
        x = torch.randn(2, 6, 5, 5, generator=GEN)
        view = (1, -1, 1, 1)
    else:
        q = QuantLinear.from_float(nn.Linear(6, 4, bias=bias), DoReFaWeight(2), BinaryAct())
        x = torch.randn(3, 6, generator=GEN)
        view = (1, -1)
    assert isinstance(q, FoldsAffine)
    q.eval()
    codes_before = q.weight_quant.encode(q._out_major(q.weight))
    y = q(x)
    scale = torch.tensor([2.0, -0.5, 0.0, 1.25])  # negative and zero scales are legal
    shift = torch.tensor([0.5, 1.0, -3.0, 0.0])
    q.fold_affine(scale, shift)
    assert torch.allclose(q(x), y * scale.view(view) + shift.view(view), atol=1e-5)
    q.fold_affine(torch.full((4,), 2.0), torch.ones(4))  # folds compose
    twice = (y * scale.view(view) + shift.view(view)) * 2 + 1
    assert torch.allclose(q(x), twice, atol=1e-5)
    codes_after = q.weight_quant.encode(q._out_major(q.weight))
    assert torch.equal(codes_before[0], codes_after[0])
    assert "out_scale" in q.state_dict() and "bias" in q.state_dict()


def test_fold_affine_rejects_bad_shapes():
    q = QuantConv2d.from_float(nn.Conv2d(3, 4, 1), BinaryWeight(), None)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        q.fold_affine(torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match="shift must be a tensor"):
        q.fold_affine(torch.ones(4), 0.0)


def test_freeze_weight_keeps_outputs_and_drops_latent_weight():
    q = QuantConv2d.from_float(nn.Conv2d(4, 8, 3), TernaryWeight(gap=0.1, shape=(8, 36)),
                               DoReFaAct(3)).eval()
    q.weight_quant.init_state(q._out_major(q.weight))
    x = torch.randn(2, 4, 6, 6, generator=GEN)
    y = q(x)
    q.freeze_weight()
    assert q.is_frozen and q.weight is None and isinstance(q.weight_quant, FrozenWeight)
    assert torch.equal(q(x), y)
    assert q.weight_quant.codes.dtype == torch.uint8
    assert q.weight_quant.packed_bits == {"codes": 1.6} and q.packed_bits == {}
