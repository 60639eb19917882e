"""BitConv2d against the fake-quantized QuantConv2d it replaces: bit-identical outputs for odd
channel counts, stride, padding, dilation, groups, binary and ternary weights, with and without
a folded BatchNorm, on every kernel path this CPU has."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netshrink.kernels import (
    KERNEL_PATHS,
    BitConv2d,
    available_paths,
    bit_planes,
    convertible_reason,
)
from netshrink.quant import QuantConfig, quantize_

pytestmark = pytest.mark.usefixtures("kernels")


def quant_conv(cin: int, cout: int, k: int, *, w: str = "binary", scale: bool = False,
               seed: int = 0, **conv_args) -> nn.Module:
    """An eval-mode QuantConv2d with binary (sign) input and ``w`` weights."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, cin, 1), nn.Conv2d(cin, cout, k, bias=False, **conv_args),
                        nn.Conv2d(cout, 2, 1))
    cfg = QuantConfig(w=w, a="binary", binary_scale=scale, ternary_scale=scale)
    return quantize_(net, cfg).eval()[1]



CASES = [  # cin, cout, kernel, conv args: odd counts, words of 64 exactly, > 64, groups
    (3, 5, 3, {"padding": 1}),
    (70, 33, 3, {"padding": 1}),
    (70, 33, 3, {"stride": 2, "padding": 1}),
    (64, 17, 3, {"stride": 2, "padding": 2}),
    (130, 12, 1, {}),
    (96, 48, 5, {"padding": 2, "groups": 3}),
    (66, 22, 3, {"padding": 1, "groups": 2, "dilation": 2}),
    (40, 9, (3, 1), {"padding": (1, 0), "stride": (1, 2)}),
]


@pytest.mark.parametrize("w", ["binary", "ternary"])
@pytest.mark.parametrize(("cin", "cout", "k", "args"), CASES)
def test_equals_fake_quantized_layer(cin, cout, k, args, w) -> None:
    layer = quant_conv(cin, cout, k, w=w, **args)
    x = torch.randn(2, cin, 9, 11)
    x[0, :, 0, 0] = 0.0  # sign(0) is +1
    with torch.no_grad():
        ref = layer(x)
    bit = BitConv2d.from_quant_conv(layer)
    for path in available_paths():
        bit.kernel_path = path
        out = bit(x)
        assert out.shape == ref.shape
        assert torch.equal(out, ref), (path, (out - ref).abs().max())


@pytest.mark.parametrize("w", ["binary", "ternary"])
@pytest.mark.parametrize("width", [1, 3, 4, 5, 9, 17])
@pytest.mark.parametrize(("cin", "args"), [
    (70, {"padding": 1}), (130, {"padding": (2, 1), "stride": (1, 2)}),
    (66, {"padding": 1, "groups": 3}), (5, {"padding": 1, "dilation": (2, 1)})])
def test_batch_one_at_every_row_length(cin, args, width, w) -> None:
    """Batch 1 and output rows shorter than, equal to and longer than a kernel call's pixels
    (4 for AVX-512, 2 otherwise): full steps read the packed image in place, the rest (and
    dilated rows) gathered patches; every padding pattern adds back its own taps."""
    layer = quant_conv(cin, 21, 3, w=w, seed=width, **args)
    x = torch.randn(1, cin, 6, width)
    with torch.no_grad():
        ref = layer(x)
    bit = BitConv2d.from_quant_conv(layer)
    for path in available_paths():
        bit.kernel_path = path
        assert torch.equal(bit(x), ref), (path, (bit(x) - ref).abs().max())


@pytest.mark.parametrize("shape", [(2, 6, 3, 7), (1, 192, 16, 16), (3, 130, 5, 9), (1, 70, 1, 1),
                                   (2, 64, 17, 3)])
@pytest.mark.parametrize(("groups", "pad"), [(1, (0, 0)), (1, (1, 2)), (2, (1, 1))])
def test_packed_input_on_every_path(shape, groups, pad) -> None:
    """sign bits (0, -0.0 and NaN -> 1) along each group's channels, 64 to a word, zero words
    around the image: the same from every path (vector loops with tails of any length)."""
    _check_packing(torch.randn(shape), groups, pad)


def _check_packing(x: torch.Tensor, groups: int, pad: tuple[int, int]) -> None:
    from netshrink.kernels._build import kernel_ops

    x.view(-1)[:3] = torch.tensor([0.0, -0.0, float("nan")])
    n, c, h, w = x.shape
    cg, words = c // groups, -(-(c // groups) // 64)
    bits = (~(x < 0)).to(torch.int64).view(n, groups, cg, h, w)
    bits = nn.functional.pad(bits, (0, 0, 0, 0, 0, words * 64 - cg))
    bits = bits.view(n, groups, words, 64, h, w) << torch.arange(64).view(1, 1, 1, 64, 1, 1)
    ref = nn.functional.pad(bits.sum(3).permute(0, 1, 3, 4, 2), (0, 0, pad[1], pad[1], pad[0],
                                                                  pad[0]))
    ops = kernel_ops()
    for path in available_paths():
        got = ops.pack_input(x, groups, pad[0], pad[1], KERNEL_PATHS[path])
        assert torch.equal(got, ref), path


@pytest.mark.parametrize(("shape", "pad"), [((1, 130, 33, 35), (1, 2)), ((1, 192, 32, 32), (0, 0)),
                                            ((1, 64, 45, 47), (0, 0))])
def test_large_batch_one_image_split_over_threads(shape, pad) -> None:
    """At batch 1 a large image (2^17 floats and more) is packed in runs of pixels by several
    threads: runs that end inside a row, a last short run, one word per pixel or three."""
    torch.set_num_threads(2)
    _check_packing(torch.randn(shape), 1, pad)


@pytest.mark.parametrize("w", ["binary", "ternary"])
def test_folded_batchnorm_threshold_is_exact(w) -> None:
    """A BN folded as out_scale (+-1 for a threshold fold, any value for an affine fold) and bias:
    the kernel's epilogue rounds as the layer's torch.addcmul does."""
    layer = quant_conv(70, 33, 3, w=w, padding=1, seed=1)
    scale = torch.randn(33)
    scale[:10] = torch.sign(scale[:10])
    layer.fold_affine(scale, torch.randn(33))
    x = torch.randn(3, 70, 8, 8)
    with torch.no_grad():
        ref = layer(x)
    bit = BitConv2d.from_quant_conv(layer)
    for path in available_paths():
        bit.kernel_path = path
        assert torch.equal(bit(x), ref), path


def test_power_of_two_scales_are_exact_and_general_scales_close() -> None:
    """Scaled codes: exact where the float conv is (power-of-two scales); with XNOR's mean|w|
    the float conv rounds its running sum, so only the last bits may differ."""
    layer = quant_conv(70, 33, 3, scale=True, padding=1, seed=2)
    layer.freeze_weight()
    x = torch.randn(2, 70, 8, 8)
    with torch.no_grad():
        close_ref = layer(x)
    close = BitConv2d.from_quant_conv(layer)(x)
    torch.testing.assert_close(close, close_ref, rtol=1e-6, atol=1e-6)
    layer.weight_quant.scale.copy_(2.0 ** torch.randint(-6, 3, (33,)).float())
    with torch.no_grad():
        ref = layer(x)
    assert torch.equal(BitConv2d.from_quant_conv(layer)(x), ref)


def test_threads_split_rows_without_changing_results() -> None:
    layer = quant_conv(70, 40, 3, padding=1, seed=3)
    x = torch.randn(4, 70, 12, 12)
    bit = BitConv2d.from_quant_conv(layer)
    one = bit(x)
    torch.set_num_threads(2)
    assert torch.equal(bit(x), one)


def test_only_binary_input_binary_or_ternary_weight_convs_qualify() -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 2, 1))

    kbit = quantize_(net(), QuantConfig(w=4, a=4)).eval()[1]
    assert "not binary" in convertible_reason(kbit)
    assert "not a QuantConv2d" in convertible_reason(nn.Conv2d(3, 3, 1))
    wfloat = quantize_(net(), QuantConfig(w=32, a="binary")).eval()[1]
    assert "float" in convertible_reason(wfloat)
    with pytest.raises(ValueError, match="cannot run"):
        BitConv2d.from_quant_conv(kbit)


def test_bit_planes_layout_and_checks() -> None:
    """Bit i of word j holds channel 64 j + i of the tap, +1 -> 1; bit 63 included."""
    t = -torch.ones(9, 130, 1, 1, dtype=torch.int64)
    t[0, 63, 0, 0] = t[0, 64, 0, 0] = t[1, 0, 0, 0] = 1
    planes = bit_planes(t, groups=1, ternary=False)
    assert planes.p.shape == (1, 2, 3, 8)  # 2 blocks of 8 channels, 3 words per tap
    assert int(planes.p[0, 0, 0, 0]) == -(2**63) and int(planes.p[0, 0, 1, 0]) == 1
    assert int(planes.p[0, 0, 0, 1]) == 1 and int(planes.p[0, 1, 0, 1]) == 0  # padding lane
    assert planes.total.tolist() == [130] * 9 and int(planes.tap_sum[0, 0]) == -126
    with pytest.raises(ValueError, match="binary weights must be in"):
        bit_planes(torch.zeros(2, 3, 1, 1), groups=1, ternary=False)


def test_rejects_inputs_it_cannot_compute() -> None:
    bit = BitConv2d.from_quant_conv(quant_conv(5, 4, 3, padding=1))
    with pytest.raises(ValueError, match="float32"):
        bit(torch.randn(1, 5, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="5 input channels"):
        bit(torch.randn(1, 6, 4, 4))


@pytest.mark.parametrize("w", ["binary", "ternary"])
@pytest.mark.parametrize(("fin", "fout", "lead"), [(70, 33, (1,)), (130, 9, (5,)), (64, 8, (2, 3))])
def test_bit_linear_equals_fake_quantized_linear(fin, fout, lead, w) -> None:
    """A binary-input binary / ternary QuantLinear as a 1x1 conv on a 1x1 image: bit-identical
    (folded BN included; odd feature counts, batch 1, extra leading dimensions), and accelerate
    swaps it."""
    from netshrink.kernels import BitLinear, accelerate, bit_layers

    torch.manual_seed(fin + fout)
    net = nn.Sequential(nn.Linear(3, fin), nn.Linear(fin, fout, bias=False), nn.Linear(fout, 2))
    cfg = QuantConfig(w=w, a="binary", binary_scale=False, ternary_scale=False)
    layer = quantize_(net, cfg).eval()[1]
    layer.fold_affine(torch.randn(fout), torch.randn(fout))
    x = torch.randn(*lead, fin)
    x.view(-1)[0] = 0.0  # sign(0) is +1
    with torch.no_grad():
        ref = layer(x)
    bit = BitLinear.from_quant_linear(layer)
    for path in available_paths():
        bit.kernel_path = path
        assert torch.equal(bit(x), ref), path
    assert bit_layers(accelerate(nn.Sequential(layer))) == ["0"]
    with pytest.raises(ValueError, match=f"\\(..., {fin}\\) inputs"):
        bit(torch.randn(2, fin + 1))
    with pytest.raises(ValueError, match="BitLinear"):
        BitConv2d.from_quant_conv(layer)
