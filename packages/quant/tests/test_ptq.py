"""Post-training quantization: calibration with each observer, weight-only uint8 and fp16."""

import pytest
import torch

from netshrink.quant import (
    AffineAct,
    AffineWeight,
    HalfWeight,
    QuantConfig,
    calibrate_,
    convert_fp16_,
    load_packed,
    packed_size,
    quantize_,
    quantize_weights_uint8_,
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
    calibrate_(model, BATCHES, observer=observer, per_channel=per_channel, symmetric=symmetric)
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
        calibrate_(make_small_cnn(), BATCHES, observer="kl")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_(make_small_cnn(), [])
    with pytest.raises(ValueError, match="symmetric='yes'"):
        calibrate_(make_small_cnn(), BATCHES, symmetric="yes")
    calibrated = calibrate_(make_small_cnn(), BATCHES[:1], first="float", last="float")
    assert len(quantized_layers(calibrated)) == 5
    assert not calibrate_(make_small_cnn(), [(b, None) for b in BATCHES]).training  # (x, y)


def test_weight_only_uint8_and_fp16(tmp_path, make_wide_cnn):
    model = _trained_like(make_wide_cnn())
    n_weights = sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight")
                    and m.weight is not None and m.weight.dim() > 1)
    with torch.no_grad():
        reference = model(X)
    uint8 = quantize_weights_uint8_(_trained_like(make_wide_cnn()))
    assert all(isinstance(m.weight_quant, AffineWeight) and not m.weight_quant.symmetric
               and m.input_quant is None for _, m in quantized_layers(uint8))
    with torch.no_grad():
        assert _rel_err(uint8(X), reference) < 0.02
    size = packed_size(uint8)
    assert size.code_bytes == n_weights
    fp16 = convert_fp16_(_trained_like(make_wide_cnn()))
    assert all(isinstance(m.weight_quant, HalfWeight) for _, m in quantized_layers(fp16))
    with torch.no_grad():
        assert _rel_err(fp16(X), reference) < 1e-3
    assert packed_size(fp16).float_bytes >= 2 * n_weights
    for m in (uint8, fp16):
        assert torch.equal(load_packed(save_packed(m, tmp_path / "w.st"))(X), m(X))


# calibrate on a model that is already quantized -------------------------------------------------
def _int8_qat(make_small_cnn, steps: int = 3):
    """A small int8 affine QAT model after a few training steps (observers have moved)."""
    model = quantize_(make_small_cnn(), QuantConfig(w=8, a=8, scheme="int8_affine",
                                                   first="same"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for b in BATCHES[:steps]:
        opt.zero_grad()
        model.train()(b).square().mean().backward()
        opt.step()
    return model


def _not_ranges(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "input_quant" not in k}


def _first_act(model):
    return quantized_layers(model)[0][1].input_quant


def test_calibrate_qat_model_remeasures_ranges_only(make_small_cnn):
    model = _int8_qat(make_small_cnn)
    before = _not_ranges(model)
    new_data = [b * 3 + 1 for b in BATCHES]  # e.g. the data changed
    assert calibrate_(model, new_data) is model and not model.training
    after = _not_ranges(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # weights, BN untouched
    first = _first_act(model)
    assert isinstance(first, AffineAct) and not first.observe_in_training and first.frozen
    # the same kind of observer as in QAT (moving average, momentum 0.01), started afresh
    # on the new data: the first batch sets the range, later ones move it by 1%
    assert first.observer.spec() == {"observer": "moving_average", "momentum": 0.01}
    lo, hi = torch.aminmax(new_data[0])
    for b in new_data[1:]:
        lo, hi = lo.lerp(b.min(), 0.01), hi.lerp(b.max(), 0.01)
    assert first.observer.min_val.item() == pytest.approx(lo.item(), rel=1e-6)
    assert first.observer.max_val.item() == pytest.approx(hi.item(), rel=1e-6)
    assert int(first.observer.batches) == 4
    calibrate_(model, new_data, momentum=0.5)  # options alone: the same kind, new options
    assert first.observer.spec() == {"observer": "moving_average", "momentum": 0.5}
    calibrate_(model, new_data, observer="minmax")  # another kind on request
    assert first.observer.spec() == {"observer": "minmax"}
    data = torch.cat(new_data)
    assert (first.observer.min_val.item(), first.observer.max_val.item()) == \
        (data.min().item(), data.max().item())
    model.train()(X * 100)  # frozen afterwards: QAT forwards leave the new range alone
    assert first.observer.max_val.item() == data.max().item()


def test_calibrate_loaded_packed_and_calibrated_models(tmp_path, make_small_cnn):
    model = _trained_like(make_small_cnn())
    calibrate_(model, BATCHES[:1], observer="minmax")
    calibrate_(model, BATCHES, observer="minmax")  # calibrating again measures all batches
    data = torch.cat(BATCHES)
    assert _first_act(model).observer.max_val.item() == data.max().item()
    loaded = load_packed(save_packed(model.eval(), tmp_path / "c.safetensors"))
    assert torch.equal(loaded(X), model(X))
    codes = [m.weight_quant.codes.clone() for _, m in quantized_layers(loaded)]
    calibrate_(loaded, [b * 2 for b in BATCHES])
    assert _first_act(loaded).observer.max_val.item() == 2 * data.max().item()
    assert all(torch.equal(m.weight_quant.codes, c)
               for (_, m), c in zip(quantized_layers(loaded), codes, strict=True))


def test_calibrate_quantized_model_errors(make_small_cnn):
    dorefa = quantize_(make_small_cnn(), QuantConfig(w=4, a=4))
    with pytest.raises(ValueError, match="layer '3' .* DoReFaAct \\('dorefa'\\), which has no "
                                         "measured range; calibrate supports a float model"):
        calibrate_(dorefa, BATCHES)
    pact = quantize_(make_small_cnn(), QuantConfig(w=8, a=8, a_quantizer="pact"))
    with pytest.raises(ValueError, match="PACTAct"):
        calibrate_(pact, BATCHES)
    with pytest.raises(ValueError, match="no layer quantizes its input with an affine"):
        calibrate_(quantize_weights_uint8_(make_small_cnn()), BATCHES)
    model = _int8_qat(make_small_cnn)
    with pytest.raises(ValueError, match="already quantized.*per_channel=False, bits=4.*leave "
                                         "per_channel, bits at the default"):
        calibrate_(model, BATCHES, per_channel=False, bits=4)
    with pytest.raises(ValueError, match="unknown observer 'kl'"):
        calibrate_(model, BATCHES, observer="kl")
    first = _first_act(model)
    observer, lo = first.observer, first.observer.min_val.clone()
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_(model, [])
    # a failed call leaves the model as it was: same observer, same range, still observing
    assert first.observer is observer and torch.equal(first.observer.min_val, lo)
    assert first.observe_in_training and not first.calibrating
