"""``quantize_(model, config, precisions={layer: (w, a)})``: per-layer precisions (mixed
precision), validated, and stored at each layer's own width in the packed file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netshrink.quant import (
    BinaryWeight,
    DoReFaWeight,
    QuantConfig,
    TernaryWeight,
    load_packed,
    quantize_,
    quantized_layers,
    save_packed,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


ALL_SAME = QuantConfig(w=8, a=32, first="same", last="same")


def test_each_layer_gets_its_own_precision() -> None:
    model = quantize_(_model(), ALL_SAME, precisions={"3": (2, 32), "6": ("ternary", 32),
                                                     "11": (32, 32)})
    layers = dict(quantized_layers(model))
    assert layers["0"].weight_quant.bits == 8  # not listed: the config's precision
    assert isinstance(layers["3"].weight_quant, DoReFaWeight)
    assert layers["3"].weight_quant.bits == 2
    assert isinstance(layers["6"].weight_quant, TernaryWeight)
    assert "11" not in layers  # (32, 32): left float
    assert type(model[11]) is nn.Linear


def test_override_beats_the_first_and_last_policies() -> None:
    config = QuantConfig(w=4, a=32)  # first and last float by default
    model = quantize_(_model(), config, precisions={"0": ("binary", 32), "11": (8, 32)})
    layers = dict(quantized_layers(model))
    assert isinstance(layers["0"].weight_quant, BinaryWeight)
    assert layers["11"].weight_quant.bits == 8
    assert layers["3"].weight_quant.bits == 4


def test_packed_file_holds_each_layer_at_its_width(tmp_path) -> None:
    x = torch.randn(2, 3, 8, 8)
    uniform = quantize_(_model(), ALL_SAME)
    mixed = quantize_(_model(), ALL_SAME, precisions={"3": (2, 32), "6": ("binary", 32)})
    a = save_packed(uniform, tmp_path / "uniform.safetensors").stat().st_size
    b = save_packed(mixed, tmp_path / "mixed.safetensors").stat().st_size
    # conv 3 (16*32*9 weights) saves 6 bits each, conv 6 (32*32*9) 7 bits each, less the
    # binary layer's 32 float32 scales
    saved = (16 * 32 * 9 * 6 + 32 * 32 * 9 * 7) // 8 - 32 * 4
    assert a - b == pytest.approx(saved, abs=64)  # the compressed structure JSON differs a bit
    loaded = load_packed(tmp_path / "mixed.safetensors")
    torch.testing.assert_close(loaded(x), mixed(x), rtol=0, atol=0)


@pytest.mark.parametrize(("precisions", "message"), [
    ({"conv9": (4, 32)}, "'conv9', which is not a quantizable layer"),
    ({"3": (5, 32)}, "w=5 is not a precision"),
    ({"3": (4, "int")}, "a='int' is not a precision"),
    ({"3": 4}, "must be a (w, a) pair"),
    ({"3": (True, 32)}, "w=True is not a precision"),
])
def test_bad_overrides_are_named(precisions, message) -> None:
    model = _model()
    with pytest.raises(ValueError, match=None) as info:
        quantize_(model, ALL_SAME, precisions=precisions)
    assert message in str(info.value)
    assert not quantized_layers(model)  # checked before anything was replaced
