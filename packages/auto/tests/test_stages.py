"""The ``auto.prune`` / ``auto.mixed`` stages: search in ``apply``, budget met, choices
recorded, and ``rebuild`` from the record gives the same structure (checkpoints load)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from auto_testing import data, make_model

from netshrink.auto import AutoMixedConfig, AutoMixedStage, AutoPruneConfig, AutoPruneStage
from netshrink.core import count_macs, stage_from_description
from netshrink.quant import QuantConfig, quantize_, quantized_layers, save_packed

X = torch.zeros(1, 3, 8, 8)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data(256, seed=1)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]


def _rebuilt(stage) -> torch.nn.Module:
    record = json.loads(json.dumps(stage.describe()))  # as a checkpoint stores it
    return stage_from_description(record).rebuild(make_model())


def test_auto_prune_meets_the_macs_target_and_rebuilds(bottleneck_model) -> None:
    base = count_macs(bottleneck_model, X)
    stage = AutoPruneStage(AutoPruneConfig(macs_target=0.5))
    stage.use_data(_batches())
    model = stage.apply(bottleneck_model)
    assert model is bottleneck_model  # in place
    assert count_macs(model, X) <= 0.5 * base
    record = stage.describe()["config"]
    assert record["search_seconds"] > 0 and "3" not in record["amounts"]
    fresh = _rebuilt(stage)
    fresh.load_state_dict(model.state_dict())  # same shapes
    assert count_macs(fresh, X) == count_macs(model, X)


def test_auto_mixed_meets_the_w4_size_and_rebuilds(bottleneck_model) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w4 = quantize_(make_model().eval(), QuantConfig(w=4, a=32, first="same", last="same"))
        w4.load_state_dict(bottleneck_model.state_dict(), strict=False)
        stage = AutoMixedStage(AutoMixedConfig(size_like=4))
        stage.use_data(_batches())
        model = stage.apply(bottleneck_model)
        size = save_packed(model.eval(), Path(tmp) / "m.safetensors").stat().st_size
        budget = stage.describe()["config"]["budget"]
        assert size <= budget
        assert budget == save_packed(w4, Path(tmp) / "w4.safetensors").stat().st_size
    widths = {n: layer.weight_quant.spec() for n, layer in quantized_layers(model)}
    fresh = _rebuilt(stage)
    assert {n: layer.weight_quant.spec() for n, layer in quantized_layers(fresh)} == widths
    fresh.load_state_dict(model.state_dict())


def test_auto_mixed_smallest_within_an_accuracy_loss(bottleneck_model) -> None:
    stage = AutoMixedStage(AutoMixedConfig(max_loss=0.02))
    stage.use_data(_batches())
    model = stage.apply(bottleneck_model)
    record = stage.describe()["config"]
    with tempfile.TemporaryDirectory() as tmp:
        size = save_packed(model.eval(), Path(tmp) / "m.safetensors").stat().st_size
        w8 = quantize_(make_model().eval(), QuantConfig(w=8, a=32, first="same", last="same"))
        w8.load_state_dict(bottleneck_model.state_dict(), strict=False)
        assert size == record["budget"] < save_packed(w8, Path(tmp) / "w8.safetensors"
                                                       ).stat().st_size
    assert record["max_loss"] == 0.02 and record["precisions"]


def test_configs_name_bad_values() -> None:
    with pytest.raises(ValueError, match="give exactly one of them"):
        AutoMixedConfig()
    with pytest.raises(ValueError, match="give exactly one of them"):
        AutoMixedConfig(size_like=4, max_loss=0.01)
    with pytest.raises(ValueError, match="size_like=5 is not a precision"):
        AutoMixedConfig(size_like=5)
    with pytest.raises(ValueError, match="give exactly one of them"):
        AutoPruneConfig()
    stage = AutoPruneStage(AutoPruneConfig(macs_target=0.5))
    with pytest.raises(ValueError, match="needs more than eval_batches=2 training batches"):
        stage.apply(make_model())
