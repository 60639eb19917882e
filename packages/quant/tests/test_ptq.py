"""Post-training quantization: calibration with each observer, weight-only uint8 and fp16."""

import pytest
import torch

from netshrink.quant import (
    AffineAct,
    AffineWeight,
    HalfWeight,
    calibrate,
    convert_fp16,
    load_packed,
    packed_size,
    quantize_weights_uint8,
    quantized_layers,
    save_packed,
)

G = torch.Generator().manual_seed(0)
BATCHES = [torch.randn(8, 3, 8, 8, generator=G) for _ in range(4)]
X = torch.randn(8, 3, 8, 8, generator=G)


def _trained_like(model):
    """Non-default BN statistics, as a trained model has."""
    model.train()
    for b in BATCHES:
        model(b)
    return model.eval()


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_calibrate(tmp_path, make_small_cnn, observer, per_channel, symmetric):
    model = _trained_like(make_small_cnn())
    with torch.no_grad():
        reference = model(X)
    calibrate(model, BATCHES, observer=observer, per_channel=per_channel, symmetric=symmetric)
    layers = quantized_layers(model)
    assert len(layers) == 7  # every layer, first and last included
    first = layers[0][1]
    assert isinstance(first.weight_quant, AffineWeight)
    assert (first.weight_quant.per_channel, first.weight_quant.symmetric) == \
        (per_channel, symmetric)
    act = first.input_quant
    assert isinstance(act, AffineAct) and not act.calibrating and not act.observe_in_training
    data = torch.cat(BATCHES)
    if observer == "minmax":  # the first layer sees the data itself
        assert act.observer.min_val.item() == data.min().item()
        assert act.observer.max_val.item() == data.max().item()
    else:
        assert data.min() <= act.observer.min_val < 0 < act.observer.max_val <= data.max()
    with torch.no_grad():
        assert _rel_err(model(X), reference) < 0.08
    before = act.observer.max_val.clone()
    model.train()
    model(X * 10)  # frozen: training forwards do not move the range
    assert torch.equal(act.observer.max_val, before)
    model.eval()
    loaded = load_packed(save_packed(model, tmp_path / "ptq.safetensors"))
    assert torch.equal(loaded(X), model(X))


def test_calibrate_errors(make_small_cnn):
    with pytest.raises(ValueError, match="unknown observer 'kl'.*minmax, moving_average"):
        calibrate(make_small_cnn(), BATCHES, observer="kl")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(make_small_cnn(), [])
    with pytest.raises(ValueError, match="symmetric='yes'"):
        calibrate(make_small_cnn(), BATCHES, symmetric="yes")
    calibrated = calibrate(make_small_cnn(), BATCHES[:1], first="float", last="float")
    assert len(quantized_layers(calibrated)) == 5
    assert not calibrate(make_small_cnn(), [(b, None) for b in BATCHES]).training  # (x, y)


def test_weight_only_uint8_and_fp16(tmp_path, make_wide_cnn):
    model = _trained_like(make_wide_cnn())
    n_weights = sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight")
                    and m.weight is not None and m.weight.dim() > 1)
    with torch.no_grad():
        reference = model(X)
    uint8 = quantize_weights_uint8(_trained_like(make_wide_cnn()))
    assert all(isinstance(m.weight_quant, AffineWeight) and not m.weight_quant.symmetric
               and m.input_quant is None for _, m in quantized_layers(uint8))
    with torch.no_grad():
        assert _rel_err(uint8(X), reference) < 0.02
    size = packed_size(uint8)
    assert size.code_bytes == n_weights
    fp16 = convert_fp16(_trained_like(make_wide_cnn()))
    assert all(isinstance(m.weight_quant, HalfWeight) for _, m in quantized_layers(fp16))
    with torch.no_grad():
        assert _rel_err(fp16(X), reference) < 1e-3
    assert packed_size(fp16).float_bytes >= 2 * n_weights
    for m in (uint8, fp16):
        assert torch.equal(load_packed(save_packed(m, tmp_path / "w.st"))(X), m(X))
