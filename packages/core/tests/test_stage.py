from dataclasses import dataclass

import pytest
from torch import nn

from netshrink.core import STAGES, Stage, apply_recipe_, register_stage, stage_from_description


@dataclass(frozen=True)
class _ScaleConfig:
    factor: float = 2.0


@register_stage("core.test_scale")
class _Scale(Stage):
    config_class = _ScaleConfig

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.data.mul_(self.config.factor)
        return model


def test_describe_and_rebuild_round_trip():
    stage = _Scale(_ScaleConfig(3.0))
    record = stage.describe()
    assert record == {"kind": "core.test_scale", "config": {"factor": 3.0}}
    again = stage_from_description(record)
    assert isinstance(again, _Scale) and again.config == _ScaleConfig(3.0)
    assert "core.test_scale" in STAGES


def test_apply_recipe_in_order():
    lin = nn.Linear(1, 1, bias=False)
    nn.init.ones_(lin.weight)
    apply_recipe_(lin, [_Scale(_ScaleConfig(2.0)), _Scale(_ScaleConfig(5.0))])
    assert lin.weight.item() == 10.0


def test_wrong_config_type_rejected():
    with pytest.raises(TypeError, match="needs a _ScaleConfig"):
        _Scale({"factor": 1})


def test_missing_package_error_names_the_package():
    with pytest.raises(ModuleNotFoundError, match="pip install netshrink-nosuchpkg"):
        stage_from_description({"kind": "nosuchpkg.thing", "config": {}})
    with pytest.raises(ValueError, match="no valid 'kind'"):
        stage_from_description({"config": {}})


def test_unknown_config_fields_are_named():
    with pytest.raises(ValueError,
                       match=r"unknown config fields \['bogus'\]; allowed: \['factor'\]"):
        stage_from_description({"kind": "core.test_scale", "config": {"bogus": 1}})


def test_apply_recipe_keeps_the_build_record_on_a_new_module():
    @register_stage("core.test_wrap")
    class _Wrap(Stage):
        config_class = _ScaleConfig

        def apply(self, model):
            return nn.Sequential(model)

    lin = nn.Linear(1, 1)
    lin.netshrink_spec = {"name": "toy", "kwargs": {}}
    out = apply_recipe_(lin, [_Wrap(_ScaleConfig())])
    assert isinstance(out, nn.Sequential)
    assert out.netshrink_spec == {"name": "toy", "kwargs": {}}
