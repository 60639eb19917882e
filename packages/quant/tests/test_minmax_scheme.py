"""The ``uint8_minmax`` scheme: per-tensor min-max uint8 weight storage."""

import torch
from safetensors import safe_open
from torch import nn

from netshrink.quant import QuantConfig, list_schemes, load_packed, quantize_, save_packed
from netshrink.quant.quantizers import AffineWeight
from netshrink.quant.quantizers.minmax import MinMaxUint8Scheme


def test_weights_map_min_max_onto_0_255_per_tensor():
    w = torch.tensor([[-1.0, 0.4, 0.26], [2.0, 0.31, -0.93]])  # no ties: w / scale = 85 w
    scale = 3.0 / 255  # (max - min) / 255 over the whole tensor
    zero_point = 85.0  # round(-min / scale) = round(85.0)
    codes = torch.round(w / scale + zero_point).clamp(0, 255)
    expected = (codes - zero_point) * scale
    config = QuantConfig(w=8, a=32, scheme="uint8_minmax")
    quantizer = MinMaxUint8Scheme().weight(8, config, tuple(w.shape))
    assert isinstance(quantizer, AffineWeight)
    assert not quantizer.per_channel and not quantizer.symmetric  # one range per tensor
    torch.testing.assert_close(quantizer(w), expected, rtol=0, atol=1e-6)
    stored, params = quantizer.encode(w)
    assert stored.dtype == torch.uint8 and int(stored.min()) == 0 and int(stored.max()) == 255
    assert torch.equal(stored.to(torch.float32), codes)
    torch.testing.assert_close(quantizer.decode(stored, params), quantizer(w), rtol=0, atol=0)


def test_scheme_is_registered_and_needs_w8():
    assert "uint8_minmax" in list_schemes()
    for bad in (4, 16, "binary"):
        try:
            QuantConfig(w=bad, a=32, scheme="uint8_minmax")
        except ValueError as err:
            assert "needs w=8" in str(err) and f"w={bad!r}" in str(err)
        else:  # pragma: no cover - the failure path
            raise AssertionError(f"w={bad!r} was accepted")


def test_every_layer_packs_one_byte_per_weight_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    weights = sum(m.weight.numel() for m in model if isinstance(m, (nn.Conv2d, nn.Linear)))
    q = quantize_(model, QuantConfig(w=8, a=32, scheme="uint8_minmax", first="same",
                                    last="same")).eval()
    packed = save_packed(q, tmp_path / "uint8.safetensors")
    with safe_open(str(packed), "pt") as f:  # every weight is one uint8 code
        codes = f.get_tensor("codes")
        floats = f.get_tensor("float32")
    assert codes.dtype == torch.uint8 and codes.numel() == weights
    # float32: biases (16 + 10), BN (4 x 16), a scale and a zero point per weight tensor
    assert floats.numel() == 16 + 10 + 4 * 16 + 2 * 2
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(load_packed(packed)(x), q(x))
