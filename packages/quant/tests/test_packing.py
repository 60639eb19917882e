"""Packed files: bit-identical outputs after a round trip, sizes at the real bit width."""

import os

import pytest
import torch
from torch import nn

from netshrink.core import ModelStats, save_checkpoint, state_bytes
from netshrink.quant import (
    PRECISIONS,
    FrozenWeight,
    PackedFileError,
    QuantConfig,
    StructureError,
    load_packed,
    packed_size,
    quantize_,
    quantized_layers,
    read_structure,
    save_packed,
)
from netshrink.quant.structure import graph_from_json

X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _trained_a_little(model: nn.Module) -> nn.Module:
    """One forward in training mode, so BN statistics and ternary state are not defaults."""
    model.train()
    model(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    return model.eval()


@pytest.mark.parametrize("a", PRECISIONS)
@pytest.mark.parametrize("w", PRECISIONS)
def test_round_trip_is_bit_identical(tmp_path, make_small_cnn, w, a):
    cfg = QuantConfig(w=w, a=a, first="same", last="8bit", ternary_gap=0.1)
    model = _trained_a_little(quantize_(make_small_cnn(), cfg))
    path = save_packed(model, tmp_path / "m.safetensors")
    loaded = load_packed(path)
    assert not loaded.training
    assert torch.equal(loaded(X), model(X))
    frozen = [m for _, m in quantized_layers(loaded) if m.weight_quant is not None]
    assert all(isinstance(m.weight_quant, FrozenWeight) and m.weight is None for m in frozen)
    # saving the loaded model again gives the same file contents
    again = save_packed(loaded, tmp_path / "again.safetensors")
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(("first", "last"), [("float", "float"), ("8bit", "same")])
def test_int8_affine_round_trip(tmp_path, make_small_cnn, first, last):
    cfg = QuantConfig(w=8, a=8, scheme="int8_affine", first=first, last=last)
    model = _trained_a_little(quantize_(make_small_cnn(), cfg))
    loaded = load_packed(save_packed(model, tmp_path / "i.safetensors"))
    assert torch.equal(loaded(X), model(X))


def test_folded_layers_round_trip(tmp_path, make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w="ternary", a="binary"))
    for _, layer in quantized_layers(model):
        n = layer.num_out_channels
        layer.fold_affine(torch.linspace(-1, 2, n), torch.linspace(0, 1, n))
    model = _trained_a_little(model)
    loaded = load_packed(save_packed(model, tmp_path / "f.safetensors"))
    assert torch.equal(loaded(X), model(X))


def test_fold_after_load_and_save_again(tmp_path, make_small_cnn):
    model = _trained_a_little(quantize_(make_small_cnn(), QuantConfig(w=2, a="binary")))
    loaded = load_packed(save_packed(model, tmp_path / "a.safetensors"))
    layer = dict(quantized_layers(loaded))["3"]
    codes = layer.weight_quant.codes.clone()
    y = loaded(X)
    scale, shift = torch.linspace(-2, 2, 32), torch.linspace(1, 0, 32)
    layer.fold_affine(scale, shift)
    assert torch.equal(layer.weight_quant.codes, codes)
    again = load_packed(save_packed(loaded, tmp_path / "b.safetensors"))
    assert torch.equal(again(X), loaded(X))
    assert not torch.equal(loaded(X), y)


@pytest.mark.parametrize("w", [8, 4, 3, 2, "ternary", "binary", 16])
def test_file_size_within_two_percent_of_formula(tmp_path, make_wide_cnn, w):
    model = quantize_(make_wide_cnn(), QuantConfig(w=w, a=4))
    path = save_packed(model, tmp_path / "w.safetensors")
    expected = packed_size(model)
    size = os.path.getsize(path)
    bits = {"ternary": 1.6, "binary": 1}.get(w, w)
    n_quantized = sum(m.weight.numel() for _, m in quantized_layers(model))
    if w != 16:
        assert expected.code_bytes == pytest.approx(bits * n_quantized / 8)
    assert abs(size - expected.total) / expected.total < 0.02, (size, expected)
    # core's ModelStats of the loaded model counts the same bytes (codes at their width)
    loaded = load_packed(path)
    assert state_bytes(loaded, packed=True) == pytest.approx(expected.total, abs=64)
    assert ModelStats.measure(loaded, X).packed_bytes == state_bytes(loaded, packed=True)


def test_structure_is_json_without_pickle(tmp_path, make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w=2, a="binary"))
    path = save_packed(model, tmp_path / "s.safetensors")
    doc = read_structure(path)
    assert doc["format"] == "netshrink-packed" and doc["version"] == 1
    spec = doc["modules"]["3"]
    assert spec["type"] == "quant.QuantConv2d"
    assert spec["weight_quant"] == {"kind": "dorefa", "bits": 2, "estimator": "ste"}
    assert spec["input_quant"] == {"kind": "binary", "estimator": "saturate_ste"}
    assert doc["modules"]["1"]["type"] == "nn.BatchNorm2d"
    assert [op for op, *_ in doc["graph"]][:2] == ["placeholder", "call_module"]
    assert b"pickle" not in path.read_bytes()[:64] and not list(tmp_path.glob(".*.tmp"))


def test_bad_files(tmp_path, make_small_cnn):
    with pytest.raises(PackedFileError, match="no packed model file"):
        load_packed(tmp_path / "missing.safetensors")
    ckpt = save_checkpoint(tmp_path / "ckpt.safetensors", nn.Linear(2, 2))
    with pytest.raises(PackedFileError, match="not a netshrink packed model"):
        load_packed(ckpt)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(PackedFileError, match="not a readable packed model"):
        load_packed(junk)
    good = save_packed(quantize_(make_small_cnn(), QuantConfig(w=2, a=2)), tmp_path / "g.st")
    truncated = tmp_path / "t.st"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(PackedFileError):
        load_packed(truncated)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) if x.sum() > 0 else x


def test_untraceable_model_is_a_clear_error_and_leaves_no_file(tmp_path):
    model = quantize_(_Untraceable(), QuantConfig(w=2, a=2, first="same", last="same"))
    with pytest.raises(StructureError, match="cannot be traced"):
        save_packed(model, tmp_path / "u.safetensors")
    assert list(tmp_path.iterdir()) == []


class _Scaled(nn.Module):
    """A custom module (traced through) with a bare tensor and a torch.nn subclass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gain = nn.Parameter(torch.linspace(0.5, 2, 4).view(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.conv(x) * self.gain, 1).relu()


def test_custom_modules_are_traced_through(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(_Scaled(), nn.Linear(144, 5), nn.Linear(5, 2))
    quantize_(model, QuantConfig(w="binary", a=8)).eval()
    loaded = load_packed(save_packed(model, tmp_path / "c.safetensors"))
    assert torch.equal(loaded(X), model(X))


class _MyConv(nn.Conv2d):
    pass


def test_torch_subclass_leaf_is_rejected(tmp_path):
    class Leafy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = _MyConv(3, 3, 1)
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(self.conv(x).mean((2, 3)))

    _MyConv.__module__ = "torch.nn.custom"  # pretend it is a torch.nn leaf
    model = quantize_(Leafy(), QuantConfig(w=2, a=2, first="same", last="same"))
    with pytest.raises(StructureError, match="only torch.nn classes"):
        save_packed(model, tmp_path / "l.safetensors")


@pytest.mark.parametrize(("record", "match"), [
    (["call_function", "y", "torch.load", {"tuple": [{"node": "x"}]}, {"dict": []}],
     "not allowed"),
    (["call_function", "y", "os.system", {"tuple": ["ls"]}, {"dict": []}], "not allowed"),
    (["call_function", "y", "builtins.getattr", {"tuple": [{"node": "x"}, "__class__"]},
      {"dict": []}], "private attribute"),
    (["call_method", "y", "__reduce__", {"tuple": [{"node": "x"}]}, {"dict": []}],
     "private or invalid method"),
])
def test_graph_json_refuses_unsafe_calls(record, match):
    placeholder = ["placeholder", "x", "x", {"tuple": []}, {"dict": []}]
    with pytest.raises(StructureError, match=match):
        graph_from_json([placeholder, record])
