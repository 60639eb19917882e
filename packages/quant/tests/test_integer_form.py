"""integer_form(): every quantized layer's weights as integer codes, scale and zero point
(netshrink.core.IntegerForm), exact to the fake-quantized weight, plus its input quantization
and float epilogue."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import HasIntegerForm, IntegerForm
from netshrink.quant import (
    AffineAct,
    BinaryAct,
    DoReFaAct,
    LSQAct,
    PACTAct,
    QuantConfig,
    QuantConv2d,
    QuantConvBn2d,
    QuantConvTranspose2d,
    QuantLinear,
    TernaryAct,
    TernaryWeight,
    calibrate_,
    convert_fp16_,
    quantize_,
    quantized_layers,
)

X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))

FORMS = {
    "int8_qat": QuantConfig(w=8, a=8, scheme="int8_affine", first="8bit", last="8bit"),
    "w2a2": QuantConfig(w=2, a=2, first="same", last="same"),
    "w3a4_pact": QuantConfig(w=3, a=4, a_quantizer="pact"),
    "w4a4_lsq": QuantConfig(w=4, a=4, a_quantizer="lsq"),
    "w8a8_dorefa": QuantConfig(w=8, a=8),
    "ternary": QuantConfig(w="ternary", a="ternary", ternary_gap=0.2),
    "ternary_noscale": QuantConfig(w="ternary", a=4, ternary_scale=False),
    "binary": QuantConfig(w="binary", a="binary"),
    "binary_noscale": QuantConfig(w="binary", a=32, binary_scale=False),
}


def _trained(make_small_cnn, name):
    """A quantized small CNN after two training forwards (observers, LSQ steps, ternary
    state set), in eval mode."""
    model = quantize_(make_small_cnn(), FORMS[name])
    model.train()
    with torch.no_grad():
        model(X)
        model(X * 1.5)
    return model.eval()


def _calibrated(make_small_cnn, per_channel, symmetric):
    return calibrate_(make_small_cnn(), [X, X * 0.5], per_channel=per_channel,
                     symmetric=symmetric)


def _forms(model):
    layers = quantized_layers(model)
    assert layers
    for name, layer in layers:
        assert isinstance(layer, HasIntegerForm)
        form = layer.integer_form()
        assert isinstance(form, IntegerForm), name
        yield name, layer, form


def _check_weights_exact(model):
    """codes x scale == the fake-quantized weight: exactly, except DoReFa weights, whose levels
    are ``(2c - n) / n`` (bit-identical to the reference implementation) while the integer form
    multiplies by the float32 step ``1 / n``: at most one ulp apart (|w| <= 1)."""
    with torch.no_grad():
        for name, layer, form in _forms(model):
            w = layer.quantized_weight()
            quantizer = getattr(layer.weight_quant, "quantizer", layer.weight_quant)  # frozen
            if quantizer.kind == "dorefa":
                diff = (form.dequantize() - w).abs().max().item()
                assert diff <= torch.finfo(torch.float32).eps, (name, diff)
            else:
                assert torch.equal(form.dequantize(), w), name
            assert form.codes.dtype in (torch.int8, torch.int16)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_dequantized_codes_equal_the_fake_quantized_weight(make_small_cnn, name):
    model = _trained(make_small_cnn, name)
    _check_weights_exact(model)
    # what the codes mean: int8 codes for every form but DoReFa 8-bit (odd -255..255)
    for layer_name, layer, form in _forms(model):
        wq = layer.weight_quant
        if name == "w8a8_dorefa" or (name != "int8_qat" and wq.bits == 8):
            assert form.codes.dtype == torch.int16 and form.code_range[1] > 127, layer_name
            assert not form.fits(torch.int8)
        else:
            assert form.codes.dtype == torch.int8 and form.fits(torch.int8), layer_name
        if name.startswith(("binary", "ternary")):
            assert set(form.codes.unique().tolist()) <= {-1, 0, 1}
            assert int(form.weight_zero_point.abs().max()) == 0
        if name == "int8_qat":  # symmetric per channel: -127..127 around 0
            assert form.per_channel and form.bits == 8
            assert form.code_range[0] >= -127 and form.code_range[1] <= 127


@pytest.mark.parametrize(("per_channel", "symmetric"), [(True, False), (False, True),
                                                          (False, False)])
def test_calibrated_weights_exact(make_small_cnn, per_channel, symmetric):
    model = _calibrated(make_small_cnn, per_channel, symmetric)
    _check_weights_exact(model)
    for _, _, form in _forms(model):
        assert form.per_channel == per_channel and form.codes.dtype == torch.int8
        if not symmetric:  # asymmetric uint8 codes shift into int8 with their zero point
            assert int(form.weight_zero_point.min()) >= -128


@pytest.mark.parametrize("name", ["ternary", "w3a4_pact", "binary"])
def test_frozen_weights_keep_their_form(make_small_cnn, name):
    """A frozen weight (what load_packed rebuilds) describes the same codes."""
    model = _trained(make_small_cnn, name)
    before = [f.codes.clone() for _, _, f in _forms(model)]
    for _, layer in quantized_layers(model):
        layer.freeze_weight()
        assert layer.is_frozen
    _check_weights_exact(model)
    assert all(torch.equal(a, f.codes) for a, (_, _, f) in zip(before, _forms(model),
                                                                strict=True))


def _reference(layer, form, x):
    """The layer recomputed from its integer form alone."""
    if form.input is not None:
        x = form.input.fake_quantize(x)
    w = form.dequantize()
    if isinstance(layer, nn.ConvTranspose2d):
        y = F.conv_transpose2d(x, w, None, layer.stride, layer.padding, layer.output_padding,
                               layer.groups, layer.dilation)
    elif isinstance(layer, nn.Conv2d):
        y = F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        y = F.linear(x, w)
    view = (-1, 1, 1) if y.dim() == 4 else (-1,)
    if form.output_scale is not None:
        y = y * form.output_scale.view(view)
    return y if form.bias is None else y + form.bias.view(view)


@pytest.mark.parametrize("name", ["int8_qat", "w4a4_lsq", "ternary", "binary"])
def test_layer_outputs_recomputed_from_the_form(make_small_cnn, name):
    """Every layer's eval output from (input form, codes, scale, output scale, bias): the
    folded conv-BN's bias and a bnfuse-style fold_affine included."""
    model = _trained(make_small_cnn, name)
    inputs = {}
    hooks = [layer.register_forward_pre_hook(
        lambda m, args, n=n: inputs.__setitem__(n, args[0])) for n, layer in
        quantized_layers(model)]
    with torch.no_grad():
        model(X)
        for h in hooks:
            h.remove()
        for layer_name, layer, form in _forms(model):
            if not isinstance(layer, QuantConvBn2d):  # what bnfuse does to a plain layer
                n = layer.out_channels if hasattr(layer, "out_channels") else \
                    layer.out_features
                g = torch.Generator().manual_seed(2)
                layer.fold_affine(torch.randn(n, generator=g), torch.randn(n, generator=g))
                form = layer.integer_form()
                assert form.output_scale is not None and form.bias is not None
            x = inputs[layer_name]
            expected = layer(x)
            got = _reference(layer, form, x)
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), layer_name
    assert any(isinstance(m, QuantConvBn2d) for m in model.modules()) == (name == "int8_qat")


@pytest.mark.parametrize("quantizer", [
    AffineAct(8), AffineAct(4, symmetric=True), LSQAct(3), TernaryAct(), BinaryAct(),
], ids=["affine8", "affine4_sym", "lsq3", "ternary", "binary"])
def test_activation_forms_are_the_forward_exactly(quantizer):
    x = torch.cat([torch.randn(4000, generator=torch.Generator().manual_seed(3)) * 3,
                   torch.tensor([0.0, -0.0, 0.5, -0.5, 1.5])])
    quantizer.train()
    quantizer(x)  # observers see the data; LSQ sets its step
    quantizer.eval()
    form = quantizer.activation_form()
    with torch.no_grad():
        assert torch.equal(form.fake_quantize(x), quantizer(x))
    if isinstance(quantizer, BinaryAct):
        assert form.kind == "sign" and form.fake_quantize(torch.tensor([0.0])).item() == 1.0


@pytest.mark.parametrize("quantizer", [DoReFaAct(2), DoReFaAct(4, clip=2.0), PACTAct(3)],
                         ids=["dorefa2", "dorefa4", "pact3"])
def test_kbit_activation_forms_match_to_ties(quantizer):
    """DoReFa / PACT compute ``k / (n / clip)`` where the form computes ``k * (clip / n)``:
    the same code ``k`` (but, rarely, at a rounding tie), values an ulp apart."""
    x = torch.rand(4000, generator=torch.Generator().manual_seed(4)) * 3 - 0.5
    form = quantizer.activation_form()
    with torch.no_grad():
        got, expected = form.fake_quantize(x), quantizer(x)
    same_code = torch.round(got / form.scale) == torch.round(expected / form.scale)
    assert same_code.float().mean() > 0.999
    assert torch.allclose(got[same_code], expected[same_code], rtol=1e-6, atol=0.0)
    assert torch.allclose(got, expected, atol=form.scale * 1.001)
    assert form.clip == (0.0, pytest.approx(quantizer.clip))


def test_layers_without_an_integer_form(make_small_cnn):
    fp16 = convert_fp16_(make_small_cnn())
    assert all(layer.integer_form() is None for _, layer in quantized_layers(fp16))
    act_only = quantize_(make_small_cnn(), QuantConfig(w=32, a=4))
    assert all(layer.integer_form() is None for _, layer in quantized_layers(act_only))
    w_fp16_a4 = quantize_(make_small_cnn(), QuantConfig(w=4, a=16))
    assert all(layer.integer_form() is None for _, layer in quantized_layers(w_fp16_a4))


def test_forms_that_cannot_be_described_say_why(make_small_cnn):
    untouched = quantize_(make_small_cnn(), QuantConfig(w=8, a=8, scheme="int8_affine"))
    layer = dict(quantized_layers(untouched))["3"]
    with pytest.raises(ValueError, match="observed no range"):
        layer.integer_form()
    grouped = QuantConvTranspose2d.from_float(nn.ConvTranspose2d(4, 6, 2, groups=2),
                                              TernaryWeight(), None)
    with pytest.raises(ValueError, match="groups=2 has per-channel"):
        grouped.integer_form()
    unscaled = QuantConvTranspose2d.from_float(nn.ConvTranspose2d(4, 6, 2, groups=2),
                                               TernaryWeight(scale=False), None)
    assert unscaled.integer_form().weight_scale.dim() == 0


def test_layer_types_and_axes(make_small_cnn):
    model = _trained(make_small_cnn, "int8_qat")
    axes = {type(layer): form.axis for _, layer, form in _forms(model)}
    assert axes == {QuantConvBn2d: 0, QuantConvTranspose2d: 1, QuantLinear: 0}
    plain = _calibrated(make_small_cnn, True, True)
    assert {type(layer) for _, layer, _ in _forms(plain)} == {
        QuantConv2d, QuantConvTranspose2d, QuantLinear}


def test_integer_form_validation():
    codes = torch.zeros(4, 3, dtype=torch.int8)
    ok = {"weight_scale": torch.ones(4), "weight_zero_point": torch.zeros(4, dtype=torch.int8),
          "axis": 0, "bits": 8}
    assert IntegerForm(codes, **ok).per_channel
    with pytest.raises(ValueError, match="integer tensor"):
        IntegerForm(codes.float(), **ok)
    with pytest.raises(ValueError, match=r"weight_scale must have shape \(\) or \(4,\)"):
        IntegerForm(codes, **{**ok, "weight_scale": torch.ones(3)})
    with pytest.raises(ValueError, match="axis=2"):
        IntegerForm(codes, **{**ok, "axis": 2})
