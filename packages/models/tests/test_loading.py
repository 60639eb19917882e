"""save_model / load_model: exact round trips, recipes rebuilt, clear errors."""

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from netshrink.core import STAGES, CheckpointError, Stage, load_checkpoint, save_checkpoint
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
    with pytest.raises(CheckpointError, match="needs tensor 'features.conv1.weight' of shape "
                                              r"\(19, 3, 5, 5\), which the file lacks"):
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


# -- hostile records: CheckpointError, and nothing large is ever allocated -------------------

def _small_nin_file(tmp_path: Path, meta: dict, name: str = "m.safetensors") -> Path:
    """A file with the tensors of a small NIN (width 0.25) and the given metadata, as a hostile
    or broken writer could make it."""
    return save_checkpoint(tmp_path / name, create_model("nin", width=0.25), meta=meta)


def _nin_spec(**changes: object) -> dict:
    return {"name": "nin", "kwargs": {**create_model("nin", width=0.25).netshrink_spec["kwargs"],
                                      **changes}}


def test_huge_width_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    # width 4000 asks for ~1.5e13 parameters (60 TB); before, load_model tried to allocate them
    path = _small_nin_file(tmp_path, {"model": _nin_spec(width=4000.0)})
    with pytest.raises(CheckpointError, match=r"the model rebuilt from the record has "
                                              r"\d{14} elements; the file holds \d+, which "
                                              r"allows at most 16777216") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_shape_mismatch_names_the_first_tensor_and_both_shapes(tmp_path: Path) -> None:
    path = _small_nin_file(tmp_path, {"model": _nin_spec(width=0.5)})
    with pytest.raises(CheckpointError, match=r"tensor 'features.conv1.weight' has shape "
                                              r"\(48, 3, 5, 5\) in the file but \(96, 3, 5, 5\)"):
        load_model(path)


def test_extra_tensor_in_the_file_is_named(tmp_path: Path) -> None:
    state = {**create_model("nin", width=0.25).state_dict(), "smuggled": torch.zeros(3)}
    path = save_checkpoint(tmp_path / "m.safetensors", state, meta={"model": _nin_spec()})
    with pytest.raises(CheckpointError, match="holds tensor 'smuggled'"):
        load_model(path)


@dataclass(frozen=True)
class _NoConfig:
    pass


class _ShrinkStage(Stage):
    """A test stage that replaces the model by a tiny one (as channel pruning can shrink it a
    hundredfold); it records on which device each model it was given lives."""

    kind = "modelstest.shrink"
    config_class = _NoConfig
    seen: list[str] = []

    def apply(self, model: nn.Module) -> nn.Module:
        type(self).seen.append(next(model.parameters()).device.type)
        return nn.Linear(2, 2)


def test_a_large_model_before_a_shrinking_stage_is_refused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # the final structure matches the file (a 2x2 linear), but the record would first build a
    # NIN of width 8 (62M elements): the ceiling refuses it while it exists only on meta
    monkeypatch.setitem(STAGES._items, _ShrinkStage.kind, _ShrinkStage)
    monkeypatch.setattr(_ShrinkStage, "seen", [])
    path = save_checkpoint(tmp_path / "m.safetensors", nn.Linear(2, 2),
                           meta={"model": _nin_spec(width=8.0),
                                 "recipe": [{"kind": _ShrinkStage.kind, "config": {}}]})
    with pytest.raises(CheckpointError, match=r"the model rebuilt from the record has \d{8} "
                                              r"elements; the file holds 6,"):
        load_model(path)
    assert _ShrinkStage.seen == []  # not even the meta build reached the stage
    small = save_checkpoint(tmp_path / "ok.safetensors", nn.Linear(2, 2),
                            meta={"model": _nin_spec(),
                                  "recipe": [{"kind": _ShrinkStage.kind, "config": {}}]})
    assert isinstance(load_model(small), nn.Linear)  # within the ceiling: loads
    assert _ShrinkStage.seen == ["meta", "cpu"]


class _ValueScaleStage(_ScaleStage):
    """Like _ScaleStage, but its rebuild reads a weight value (as BN folding reads BN scales),
    which the meta device cannot give."""

    kind = "modelstest.value_scale"

    def rebuild(self, model: nn.Module) -> nn.Module:
        init = self.config.init if float(next(model.parameters()).detach().sum()) else 0.0
        return _Scaled(model, init)


def test_a_stage_that_needs_values_is_rebuilt_for_real(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STAGES._items, _ValueScaleStage.kind, _ValueScaleStage)
    base = _trained_like("nin", width=0.25)
    stage = _ValueScaleStage(_ScaleConfig(init=2.0))
    model = stage.apply(base)
    model.netshrink_spec = base.netshrink_spec
    path = save_model(tmp_path / "m.safetensors", model, recipe=[stage])
    loaded = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(loaded, _Scaled) and torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(("meta", "message"), [
    ({"model": _nin_spec(width={"a": 1})}, "argument 'width' = {'a': 1} is not a JSON scalar"),
    ({"model": {"name": "no-such-model"}}, "cannot build model 'no-such-model'"),
    ({"model": _nin_spec(width=-1.0)}, "cannot build model 'nin' from the saved arguments"),
    ({"model": _nin_spec(width="wide")}, "cannot build model 'nin' from the saved arguments"),
    ({"model": _nin_spec(), "recipe": {"kind": "quant.quantize"}},
     r"meta\['recipe'\] must be a list of stage records"),
    ({"model": _nin_spec(), "recipe": [["quant.quantize"]]}, "recipe stage 0 must be an object"),
    ({"model": _nin_spec(), "recipe": [{"kind": 7}]}, "recipe stage 0 must be an object"),
    ({"model": _nin_spec(), "recipe": [{"kind": "modelstest.scale", "config": [2.0]}]},
     "recipe stage 0 must be an object with a string 'kind' and an object 'config'"),
    ({"model": _nin_spec(), "recipe": [{"kind": "nokind"}]},
     "cannot rebuild recipe stage 0 \\('nokind'\\): ValueError"),
    ({"model": _nin_spec(), "recipe": [{"kind": "modelstest.scale", "config": {"bad": 1}}]},
     "unknown config fields"),
])
def test_malformed_records_are_checkpoint_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 meta: dict, message: str) -> None:
    monkeypatch.setitem(STAGES._items, _ScaleStage.kind, _ScaleStage)
    path = _small_nin_file(tmp_path, meta)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)
