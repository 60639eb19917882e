"""Weight-shared layers in packed files: codebook + indices at k bits or Huffman coded.

quant never imports netshrink.share: a tiny layer here implements core's HasCodebookForm the
way share's layers do (a torch.nn layer whose weight is codebook[indices], zero where masked).
"""

import json
import math
import re
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from netshrink.core import CodebookForm, HasCodebookForm
from netshrink.quant import load_packed, save_packed
from netshrink.quant.huffman import GAP_ALPHABET, header_nbytes, mask_to_gaps
from netshrink.quant.packing import PackedFileError, packed_size, read_structure


class _SharedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bits: int, density: float,
                 seed: int) -> None:
        super().__init__(in_features, out_features)
        g = torch.Generator().manual_seed(seed)
        weight = self._parameters.pop("weight")
        self.bits = bits
        self.register_buffer("centroids", torch.linspace(-1, 1, 2 ** bits))
        # skewed indices (a bell shape, as k-means of trained weights gives)
        idx = (torch.randn(weight.shape, generator=g) * 2 ** bits / 8 + 2 ** (bits - 1))
        self.register_buffer("indices", idx.round().clamp(0, 2 ** bits - 1).to(torch.uint8))
        mask = torch.rand(weight.shape, generator=g) < density if density < 1 else None
        self.register_buffer("mask", mask)

    def codebook_form(self) -> CodebookForm:
        return CodebookForm(self.centroids, self.indices, self.mask, self.bits)

    def __getattr__(self, name: str):
        if name == "weight" and "weight" not in self.__dict__.get("_parameters", {}):
            return self.codebook_form().weight()
        return super().__getattr__(name)


def _model(bits: int = 5, density: float = 1.0, width: int = 48) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(_SharedLinear(64, width, bits, density, 1), nn.ReLU(),
                         _SharedLinear(width, 10, bits, density, 2)).eval()


X = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))


def _entropy_bits(values: np.ndarray) -> float:
    p = np.bincount(values) / values.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * values.size)


@pytest.mark.parametrize("coding", ["fixed", "huffman"])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.0])  # 0.0: a layer pruned away entirely
def test_round_trip_is_exact_and_loads_as_plain_layers(tmp_path, coding, density) -> None:
    model = _model(density=density)
    assert isinstance(model[0], HasCodebookForm)
    path = save_packed(model, tmp_path / "m.pt", coding=coding)
    loaded = load_packed(path)
    assert type(loaded.get_submodule("0")) is nn.Linear
    for i in ("0", "2"):
        assert torch.equal(loaded.get_submodule(i).weight, model[int(i)].weight)
        assert torch.equal(loaded.get_submodule(i).bias, model[int(i)].bias)
    assert torch.equal(loaded(X), model(X))
    doc = read_structure(path)
    assert doc["version"] == 2
    record = doc["tensors"]["0"]["weight"]
    assert record[0] == "codebook" and record[3]["coding"] == coding
    assert (record[3]["positions"] is None) == (density == 1.0)


def test_fixed_width_size_is_the_formula(tmp_path) -> None:
    model = _model(bits=5, density=0.3)
    size = packed_size(model, "fixed")
    expected_codes = 0
    for layer in (model[0], model[2]):
        n, kept = layer.indices.numel(), int(layer.mask.sum())
        expected_codes += math.ceil(kept * 5 / 8) + math.ceil(n / 8)  # indices + 1-bit map
    assert size.code_bytes == expected_codes
    assert size.float_bytes == 4 * (2 * 32 + 48 + 10)  # codebooks and biases
    plain = packed_size(nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)))
    assert size.total < 0.25 * plain.total


@pytest.mark.parametrize("density", [1.0, 0.1])
def test_huffman_shrinks_the_file_by_the_measured_entropy(tmp_path, density) -> None:
    model = _model(bits=5, density=density, width=1024)
    fixed = (tmp_path / "f.pt")
    coded = (tmp_path / "h.pt")
    save_packed(model, fixed, coding="fixed")
    save_packed(model, coded, coding="huffman")
    # the coded payload of each layer against n * H of its indices (and of its gap symbols)
    entropy_bytes, header_bytes, fixed_bytes = 0.0, 0, 0
    for layer in (model[0], model[2]):
        idx = layer.indices.reshape(-1).numpy().astype(np.int64)
        n = idx.size
        if layer.mask is not None:
            mask = layer.mask.reshape(-1).numpy()
            gaps = mask_to_gaps(mask)
            entropy_bytes += _entropy_bits(gaps) / 8
            header_bytes += header_nbytes(GAP_ALPHABET) + 1
            idx = idx[mask]
            fixed_bytes += math.ceil(n / 8)
        entropy_bytes += _entropy_bits(idx) / 8
        header_bytes += header_nbytes(32) + 1
        fixed_bytes += math.ceil(idx.size * 5 / 8)
    coded_payload = packed_size(model, "huffman").code_bytes
    assert entropy_bytes <= coded_payload <= 1.05 * entropy_bytes + header_bytes
    # the files differ by what the payloads differ by (plus a few bytes of structure)
    saved = fixed.stat().st_size - coded.stat().st_size
    assert abs(saved - (fixed_bytes - coded_payload)) < 64
    assert saved > 0.15 * fixed_bytes


def _edit_record(src, dst, edit) -> None:
    tensors = load_file(str(src))
    doc = json.loads(zlib.decompress(bytes(tensors["structure"].tolist())))
    edit(doc["tensors"]["0"]["weight"], tensors)
    tensors["structure"] = torch.frombuffer(bytearray(zlib.compress(json.dumps(doc).encode())),
                                            dtype=torch.uint8)
    save_file(tensors, str(dst), metadata={"format": "netshrink-packed"})


def _set(field, value):
    def edit(record, tensors):
        record[3][field] = value
    return edit


def _truncate_codes(record, tensors):
    tensors["codes"] = tensors["codes"][:-40].clone()


def _corrupt_payload(record, tensors):
    offset, length = record[3]["indices"]
    codes = tensors["codes"].clone()
    codes[offset: offset + length] = 0xFF
    tensors["codes"] = codes


@pytest.mark.parametrize("coding", ["fixed", "huffman"])
@pytest.mark.parametrize(("edit", "match"), [
    (_set("nnz", 10 ** 9), "nnz"),
    (_set("nnz", 100), "need positions|bytes|symbols|keep"),
    (_set("bits", 9), "bits"),
    (_set("coding", "lzma"), "coding"),
    (_set("indices", [0, 10 ** 12]), "indices length|does not lie"),
    (_set("positions", [0, 5, 10 ** 9]), "positions|map"),
    (lambda r, t: r.__setitem__(2, [2 ** 30, 2 ** 30]), "size|per byte|shape"),
    (lambda r, t: r.__setitem__(3, {"bits": 5}), "codebook record"),
    (_truncate_codes, "does not lie"),
    (_corrupt_payload, ""),
])
def test_hostile_codebook_records_are_packed_file_errors(tmp_path, coding, edit, match) -> None:
    model = _model(bits=5, density=0.3)
    good = save_packed(model, tmp_path / "good.pt", coding=coding)
    bad = tmp_path / "bad.pt"
    _edit_record(good, bad, edit)
    try:
        loaded = load_packed(bad)
    except PackedFileError as err:
        assert match == "" or re.search(match, str(err)), str(err)
        return
    # only a corrupted fixed-width payload can still decode (to other, valid indices)
    assert edit is _corrupt_payload and coding == "fixed"
    assert loaded(X).shape == (4, 10)


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1,
                      max_size=6),
       coding=st.sampled_from(["fixed", "huffman"]))
def test_fuzz_coded_payloads_load_or_raise_packed_file_error(tmp_path, flips, coding) -> None:
    good = save_packed(_model(bits=3, density=0.3), tmp_path / f"good_{coding}.pt",
                       coding=coding)

    def edit(record, tensors):
        codes = tensors["codes"].clone()
        for at, value in flips:
            codes[at % codes.numel()] = value
        tensors["codes"] = codes

    bad = tmp_path / "fuzz.pt"
    _edit_record(good, bad, edit)
    try:
        loaded = load_packed(bad)
    except PackedFileError:
        return
    assert loaded(X).shape == (4, 10) and bool(torch.isfinite(loaded(X)).all())
