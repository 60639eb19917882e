"""Sensitivity analysis: a planted 2-channel bottleneck ranks most sensitive; JSON and plot."""

from __future__ import annotations

import json

import pytest
import torch
from auto_testing import accuracy, recalibrate

from netshrink.auto import GroupPruner, SensitivityConfig, SensitivityResult, analyze_sensitivity

X = torch.zeros(1, 3, 8, 8)
CONFIG = SensitivityConfig(prune_ratios=(0.5, 0.75), precisions=(4, "binary"))


def test_planted_bottleneck_ranks_most_sensitive(bottleneck_model) -> None:
    before = {k: v.clone() for k, v in bottleneck_model.state_dict().items()}
    result = analyze_sensitivity(bottleneck_model, X, accuracy, CONFIG, prepare=recalibrate)
    assert result.baseline == 1.0
    assert result.group_channels == {"0": 16, "3": 2, "6": 16}  # the classifier's are pinned
    ranking = result.ranking("prune")
    assert ranking[0][0] == "3"  # the 2-channel bottleneck: half its channels gone at 0.5
    assert result.prune["3"][0.5] <= 0.6  # 4 classes through one channel
    assert ranking[0][1] > ranking[1][1] + 0.1
    assert set(result.quant) == {"0", "3", "6", "11"}
    assert set(result.quant["3"]) == {4, "binary"}
    for k, v in bottleneck_model.state_dict().items():  # the model itself is untouched
        assert torch.equal(v, before[k]), k


def test_group_pruner_prunes_only_the_named_group(bottleneck_model) -> None:
    pruner = GroupPruner(bottleneck_model, X)
    pruned = pruner.prune({"6": 0.5})
    assert [m.out_channels for m in pruned if isinstance(m, torch.nn.Conv2d)] == [16, 2, 8]
    assert pruned[11].in_features == 8
    assert pruner.fast_macs({"6": 0.5}) == pruner.macs({"6": 0.5})
    assert pruner.fast_macs({"0": 0.25, "3": 0.5}) == pruner.macs({"0": 0.25, "3": 0.5})
    with pytest.raises(ValueError, match="'11' is not a prunable layer group; allowed: '0'"):
        pruner.plan({"11": 0.5})


def test_json_round_trip_and_plot(bottleneck_model, tmp_path) -> None:
    result = analyze_sensitivity(bottleneck_model, X, accuracy,
                                 SensitivityConfig(prune_ratios=(0.5,), precisions=(2,)))
    path = result.save_json(tmp_path / "sens" / "sensitivity.json")
    doc = json.loads(path.read_text())
    assert doc["ranking"]["prune"][0][0] == "3"
    again = SensitivityResult.load_json(path)
    assert again.prune == result.prune and again.quant == result.quant
    assert [p.name for p in path.parent.iterdir()] == ["sensitivity.json"]  # no temp file left
    png = result.plot(tmp_path / "sens" / "sensitivity.png", title="bottleneck")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interpolated_loss() -> None:
    result = SensitivityResult(baseline=0.9, prune={"g": {0.5: 0.8, 0.75: 0.4},
                                                    "two": {0.25: 0.9, 0.5: 0.5}}, quant={},
                               group_channels={"g": 8, "two": 2}, layer_weights={})
    assert result.prune_loss("g", 0.25) == pytest.approx(0.05)
    assert result.prune_loss("g", 0.625) == pytest.approx(0.3)
    assert result.prune_loss("g", 0.9) == pytest.approx(0.5)
    # in channels removed: 0.3 of 2 channels removes one, as the measured 0.5 did
    assert result.prune_loss("two", 0.2) == 0.0
    assert result.prune_loss("two", 0.3) == pytest.approx(0.4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prune_ratios": (0.5, 1.0)}, "1.0 must be a number in (0, 1)"),
    ({"prune_ratios": (0.5, 0.5)}, "repeats a value"),
    ({"precisions": (5,)}, "5 is not allowed; allowed: 16, 8, 4, 3, 2, 'ternary', 'binary'"),
    ({"criterion": "nope"}, "criterion"),
])
def test_config_names_bad_values(kwargs, message) -> None:
    with pytest.raises(ValueError) as info:
        SensitivityConfig(**kwargs)
    assert message in str(info.value)
