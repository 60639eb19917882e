"""Issue 13, item 2: k-bit activation clips calibrated at quantize time (``a_calibrate``), the
clip recorded in the config (``a_clips``) so a rebuilt model gets it back, and the fixed clip
still there when not calibrating."""

import pytest
import torch
from torch import nn

from netshrink.core import stage_from_description
from netshrink.quant import QuantConfig, calibrate_act_clips_, quantize_
from netshrink.quant.quantize import QuantizeStage


def _uniform_batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(512, 16, generator=g) * 10.0, torch.zeros(512)) for _ in range(n)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


@pytest.mark.parametrize("percentile", [90.0, 99.0])
def test_clip_covers_the_percentile_of_a_known_distribution(percentile):
    """Inputs uniform on [0, 10]: the p-th percentile is p / 10."""
    model = quantize_(_model(), QuantConfig(w=32, a=8, first="same", last="float"))
    clips = calibrate_act_clips_(model, [x for x, _ in _uniform_batches()], percentile)
    assert set(clips) == {"0"}
    assert clips["0"] == pytest.approx(percentile / 10.0, abs=0.05)
    assert model[0].input_quant.clip == clips["0"]
    x = _uniform_batches(1)[0][0]
    covered = (x <= clips["0"]).float().mean().item()
    assert covered == pytest.approx(percentile / 100.0, abs=0.01)


@pytest.mark.parametrize("a_quantizer", ["dorefa", "pact", "lsq"])
def test_stage_calibrates_records_and_rebuilds(a_quantizer):
    config = QuantConfig(w=4, a=4, first="same", a_quantizer=a_quantizer, a_calibrate=99.0)
    stage = QuantizeStage(config)
    stage.use_data(_uniform_batches())
    model = stage.apply(_model())
    record = stage.describe()
    clip = dict(record["config"]["a_clips"])["0"]
    assert clip == pytest.approx(9.9, abs=0.05)
    rebuilt = stage_from_description(record).rebuild(_model())  # no data: the recorded clip
    assert rebuilt[0].input_quant.clip == model[0].input_quant.clip == clip
    if a_quantizer == "pact":
        assert model[0].input_quant.alpha.item() == pytest.approx(clip)
    if a_quantizer == "lsq":
        assert model[0].input_quant.step_size.item() == pytest.approx(clip / 15)


def test_fixed_clip_without_calibration():
    stage = QuantizeStage(QuantConfig(w=4, a=4, first="same", a_clip=2.0))
    stage.use_data(_uniform_batches())
    model = stage.apply(_model())
    assert model[0].input_quant.clip == 2.0
    assert stage.describe()["config"]["a_clips"] == []


def test_calibration_sees_unclipped_batch_normalised_activations_and_keeps_buffers():
    """Clips are measured with the activation quantizers off (the second layer's input is not
    saturated at the first layer's tiny clip), after BatchNorms normalised by the batch's own
    statistics (as in training), and no buffer (BN running statistics) moves."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    quantize_(model, QuantConfig(w=32, a=2, first="same", a_clip=0.01))
    model.eval()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x = _uniform_batches(1)[0][0]
    with torch.no_grad():
        first = nn.functional.linear(x, model[0].weight, model[0].bias)  # float input
        bn = model[1]
        h = torch.relu(nn.functional.batch_norm(first, None, None, bn.weight, bn.bias,
                                                training=True, eps=bn.eps))
        expected = torch.quantile(h.reshape(-1), 0.99).item()
    clips = calibrate_act_clips_(model, [x], 99.0)
    assert clips["3"] == pytest.approx(expected, rel=1e-4)
    assert clips["0"] == pytest.approx(9.9, abs=0.1)
    assert not model.training and not model[1].training
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in buffers.items() if "clip" not in k)


def test_calibration_with_quantized_weights_gives_clips_of_normalised_activations():
    """DoReFa weights have another scale than the float ones: with the float model's running
    statistics the activations (and clips) would grow layer by layer; batch statistics keep
    every clip at the scale of a normalised activation."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 32)]
    for _ in range(5):
        layers += [nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32)]
    model = quantize_(nn.Sequential(*layers), QuantConfig(w=4, a=4))
    clips = calibrate_act_clips_(model, [torch.randn(256, 16)], 99.9)
    assert len(clips) == 4 and all(0.5 < c < 5.0 for c in clips.values()), clips


def test_config_validates_the_new_fields():
    with pytest.raises(ValueError, match="a_calibrate"):
        QuantConfig(w=8, a=8, a_calibrate=30.0)
    with pytest.raises(ValueError, match="a_clips"):
        QuantConfig(w=8, a=8, a_clips={"conv": -1.0})
    with pytest.raises(ValueError, match="binary_centring"):
        QuantConfig(w="binary", a=32, binary_centring="rows")
    assert QuantConfig(w=8, a=8, a_clips={"b": 2, "a": 1.5}).a_clips == (("a", 1.5), ("b", 2.0))
