"""save_model / load_model: exact round trips, recipes rebuilt, clear errors."""

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from netshrink.core import STAGES, Stage, load_checkpoint, save_checkpoint
from netshrink.models import create_model, load_model, save_model


def _trained_like(name: str, **kwargs: object) -> nn.Module:
    """A model whose BN statistics are not the defaults, so a round trip must carry them."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3 + 1)
    return model.eval()


@pytest.mark.parametrize(("name", "kwargs"), [
    ("nin", {"width": 0.25, "block_order": "bacp", "act": "hardtanh"}),
    ("nin_gc", {"width": 0.125, "num_classes": 7}),
    ("mobilenet_student", {"width": 0.25}),
    ("resnet18_cifar", {"width": 0.125, "in_channels": 3}),
    ("tv:mobilenet_v2", {"num_classes": 5}),
])
def test_round_trip_is_exact(tmp_path: Path, name: str, kwargs: dict) -> None:
    model = _trained_like(name, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    path = save_model(tmp_path / "m.safetensors", model, extra_meta={"epoch": 3})
    loaded = load_model(path)
    assert not loaded.training
    assert type(loaded) is type(model)
    assert loaded.netshrink_spec == model.netshrink_spec
    assert torch.equal(loaded(x), model(x))
    meta = load_checkpoint(path).meta
    assert meta["epoch"] == 3 and meta["recipe"] == [] and meta["model"]["name"] == name


@dataclass(frozen=True)
class _ScaleConfig:
    init: float = 1.0


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, init: float) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", torch.tensor(init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


class _ScaleStage(Stage):
    """A test stage that changes the structure: wraps the model, adds a buffer."""

    kind = "modelstest.scale"
    config_class = _ScaleConfig

    def apply(self, model: nn.Module) -> nn.Module:
        return _Scaled(model, self.config.init)


def test_recipe_is_rebuilt_before_weights_load(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STAGES._items, _ScaleStage.kind, _ScaleStage)
    base = _trained_like("nin", width=0.25)
    stage = _ScaleStage(_ScaleConfig(init=2.0))
    model = stage.apply(base)
    model.scale.fill_(3.0)  # learned after the stage: must come from the weights, not the config
    model.netshrink_spec = base.netshrink_spec
    path = save_model(tmp_path / "m.safetensors", model, recipe=[stage])
    assert load_checkpoint(path).meta["recipe"] == [
        {"kind": "modelstest.scale", "config": {"init": 2.0}}]
    loaded = load_model(path)
    assert isinstance(loaded, _Scaled) and loaded.scale.item() == 3.0
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_missing_recipe_fails_strict_load(tmp_path: Path) -> None:
    base = create_model("nin", width=0.1)
    wrapped = _Scaled(base, 1.0)
    path = save_checkpoint(tmp_path / "m.safetensors", wrapped,
                           meta={"model": base.netshrink_spec})
    with pytest.raises(RuntimeError, match="state_dict"):
        load_model(path)


def test_quant_stage_without_netshrink_quant(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # as if netshrink-quant were not installed, even where another test imported it
    monkeypatch.delitem(STAGES._items, "quant.quantize", raising=False)
    monkeypatch.setitem(sys.modules, "netshrink.quant", None)
    model = create_model("nin", width=0.1)
    path = save_model(tmp_path / "q.safetensors", model,
                      recipe=[{"kind": "quant.quantize", "config": {"bits": 2}}])
    with pytest.raises(ModuleNotFoundError, match="netshrink-quant"):
        load_model(path)


@pytest.mark.parametrize("meta", [{}, {"model": "nin"}, {"model": {"kwargs": {}}},
                                  {"model": {"name": "nin", "kwargs": [1]}}])
def test_checkpoint_without_model_record(tmp_path: Path, meta: dict) -> None:
    path = save_checkpoint(tmp_path / "bare.safetensors", create_model("nin", width=0.1),
                           meta=meta)
    with pytest.raises(ValueError, match="no model record"):
        load_model(path)


def test_save_needs_a_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="netshrink_spec"):
        save_model(tmp_path / "x.safetensors", nn.Linear(2, 2))
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("key", ["model", "recipe", "format", "version"])
def test_extra_meta_cannot_override_reserved_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=f"{key}.*reserved"):
        save_model(tmp_path / "x.safetensors", create_model("nin", width=0.1),
                   extra_meta={key: 1})
