"""Issue 13, item 3: the two centrings of binary latent weights, against hand-computed values,
and ``encode`` agreeing with the forward on NaN."""

import pytest
import torch
from torch import nn

from netshrink.quant import QuantConfig, constrain_latent_weights_, quantize_
from netshrink.quant.quantizers import BinaryWeight

# one output channel, two input channels, a 1x2 kernel: w[o, i, 0, k]
_W = torch.tensor([[[[0.5, 0.1]], [[0.1, -0.3]]]])


def _conv_model(centring: str) -> nn.Module:
    conv = nn.Conv2d(2, 1, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(_W)
    return quantize_(nn.Sequential(conv), QuantConfig(w="binary", a=32, first="same",
                                                     last="same", binary_centring=centring))


def test_filter_centring_subtracts_the_whole_filter_mean():
    model = _conv_model("filter")  # quantize centres once; the mean is 0.1
    expected = torch.tensor([[[[0.4, 0.0]], [[0.0, -0.4]]]])
    torch.testing.assert_close(model[0].weight.data, expected, rtol=0, atol=1e-7)


def test_kernel_position_centring_subtracts_the_mean_over_input_channels():
    model = _conv_model("kernel_position")  # position 0: mean 0.3, position 1: mean -0.1
    expected = torch.tensor([[[[0.2, 0.2]], [[-0.2, -0.2]]]])
    torch.testing.assert_close(model[0].weight.data, expected, rtol=0, atol=1e-7)
    assert model[0].weight_quant.spec()["centring"] == "kernel_position"


def test_none_only_clips_and_centring_is_idempotent():
    model = _conv_model("none")
    with torch.no_grad():
        model[0].weight.mul_(4.0)
    constrain_latent_weights_(model)
    torch.testing.assert_close(model[0].weight.data, (_W * 4).clamp(-1, 1))
    centred = _conv_model("kernel_position")
    before = centred[0].weight.detach().clone()
    constrain_latent_weights_(centred)
    torch.testing.assert_close(centred[0].weight.data, before)


def test_kernel_position_on_a_transposed_conv_uses_its_input_channels():
    conv = nn.ConvTranspose2d(2, 1, (1, 2), bias=False)  # weight (in, out, 1, 2)
    with torch.no_grad():
        conv.weight.copy_(_W.transpose(0, 1))
    model = quantize_(nn.Sequential(conv), QuantConfig(
        w="binary", a=32, first="same", last="same", binary_centring="kernel_position"))
    expected = torch.tensor([[[[0.2, 0.2]], [[-0.2, -0.2]]]]).transpose(0, 1)
    torch.testing.assert_close(model[0].weight.data, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("scale", [False, True])
def test_encode_agrees_with_forward_on_nan(scale):
    q = BinaryWeight(scale=scale)
    w = torch.tensor([[float("nan"), -0.5, 0.0, -0.0, 0.25]])
    codes, params = q.encode(w)
    assert codes.tolist() == [[1, 0, 1, 1, 1]]
    forward, decoded = q(w), q.decode(codes, params)
    assert torch.equal(torch.sign(forward), torch.sign(decoded))
    if not scale:
        assert forward.tolist() == decoded.tolist() == [[1.0, -1.0, 1.0, 1.0, 1.0]]
