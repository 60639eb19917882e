"""create_model / list_models / register_model: names, argument checks, the spec record."""

import json
import math
import re

import pytest
from torch import nn

from netshrink.models import MODELS, create_model, list_models, register_model

OURS = ["mobilenet_student", "nin", "nin_gc", "resnet18_cifar"]


def test_list_models() -> None:
    assert list_models(torchvision=False) == OURS
    names = list_models()
    assert names[:4] == OURS
    assert {"tv:resnet18", "tv:mobilenet_v2", "tv:vit_b_16"} <= set(names)
    assert "tv:fasterrcnn_resnet50_fpn" not in names  # detection: not classification
    assert names[4:] == sorted(names[4:]) and all(n.startswith("tv:") for n in names[4:])


def test_spec_records_all_arguments_with_defaults() -> None:
    model = create_model("nin", width=0.25, act="hardtanh")
    assert model.netshrink_spec == {"name": "nin", "kwargs": {
        "num_classes": 10, "in_channels": 3, "width": 0.25, "block_order": "cbap",
        "act": "hardtanh"}}
    assert json.loads(json.dumps(model.netshrink_spec)) == model.netshrink_spec
    assert create_model("tv:resnet18", num_classes=3).netshrink_spec == \
        {"name": "tv:resnet18", "kwargs": {"num_classes": 3}}


def test_spec_is_not_shared_with_the_caller() -> None:
    kwargs = {"width": 0.25}
    model = create_model("nin", **kwargs)
    model.netshrink_spec["kwargs"]["width"] = 2.0
    assert create_model("nin", **kwargs).netshrink_spec["kwargs"]["width"] == 0.25


@pytest.mark.parametrize(("name", "kwargs", "needle"), [
    ("ninn", {}, "'ninn'"),
    ("tv:resnet19", {}, "'tv:resnet19'"),
    ("tv:fasterrcnn_resnet50_fpn", {}, "tv:resnet18"),   # the message lists what is allowed
    ("nin", {"widht": 0.5}, "widht"),
    ("tv:resnet18", {"width": 0.5}, "allowed: num_classes"),
    ("nin", {"width": 0}, "width=0"),
    ("nin", {"width": -1.0}, "width=-1.0"),
    ("nin", {"width": math.inf}, "width=inf"),
    ("nin", {"width": math.nan}, "width=nan"),
    ("nin", {"width": "1"}, "width='1'"),
    ("nin", {"num_classes": 0}, "num_classes=0"),
    ("nin_gc", {"num_classes": 2.5}, "num_classes=2.5"),
    ("nin", {"in_channels": True}, "in_channels=True"),
    ("nin", {"block_order": "cabp"}, "block_order='cabp'"),
    ("nin_gc", {"block_order": "bacp", "act": "gelu"}, "act='gelu'"),
    ("nin", {"act": nn.ReLU}, "JSON"),
    ("mobilenet_student", {"width": 0.0}, "width=0.0"),
    ("mobilenet_student", {"block_order": "cbap"}, "block_order"),
    ("resnet18_cifar", {"num_classes": -3}, "num_classes=-3"),
    ("tv:mobilenet_v2", {"num_classes": 0}, "num_classes=0"),
])
def test_bad_names_and_values(name: str, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        create_model(name, **kwargs)


def test_unknown_argument_lists_allowed_ones() -> None:
    with pytest.raises(ValueError) as err:
        create_model("nin", widht=0.5)
    for allowed in ("num_classes", "in_channels", "width", "block_order", "act"):
        assert allowed in str(err.value)


def test_allowed_choices_are_named() -> None:
    with pytest.raises(ValueError, match="'relu', 'hardtanh', 'identity'"):
        create_model("nin", act="tanh")
    with pytest.raises(ValueError, match="'cbap', 'bacp'"):
        create_model("nin", block_order="x")


def test_non_string_name() -> None:
    with pytest.raises(ValueError, match="None"):
        create_model(None)  # type: ignore[arg-type]


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))

    @register_model("tiny_linear")
    def tiny_linear(*, features: int, bias: bool = True) -> nn.Module:
        return nn.Linear(features, 2, bias=bias)

    assert "tiny_linear" in list_models(torchvision=False)
    model = create_model("tiny_linear", features=5)
    assert model.weight.shape == (2, 5)
    assert model.netshrink_spec == {"name": "tiny_linear",
                                    "kwargs": {"features": 5, "bias": True}}
    with pytest.raises(ValueError, match="needs argument.*features"):
        create_model("tiny_linear")
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tiny_linear")(tiny_linear)


@pytest.mark.parametrize("name", ["tv:mine", "", 3])
def test_register_model_rejects_reserved_names(name: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        register_model(name)  # type: ignore[arg-type]
