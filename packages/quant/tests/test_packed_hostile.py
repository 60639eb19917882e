"""Hostile packed files (issue 11): loading never runs code from the file, never allocates
what the file merely declares, and any malformed file is a PackedFileError. Each attack edits a
genuine file the way an attacker would; each payload tries to create a file and set a global,
and the tests check that it did not."""

from __future__ import annotations

import builtins
import contextlib
import copy
import json
import resource
import tracemalloc
import zlib
from pathlib import Path

import packed_hostile_helpers as H
import pytest
import torch
from torch import fx, nn

from netshrink.quant import (
    PackedFileError,
    QuantConfig,
    StructureError,
    load_packed,
    quantize_,
    save_packed,
)
from netshrink.quant.structure import (
    GRAPH_FUNCTIONS,
    MODULE_TYPES,
    TENSOR_METHODS,
    check_generated_code,
)

FLAG = "NETSHRINK_PACKED_PWNED"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return H.genuine_files(tmp_path_factory.mktemp("genuine"))


def _payload(canary: Path) -> str:
    return (f"__import__('pathlib').Path({str(canary)!r}).touch() or "
            f"setattr(__import__('builtins'), {FLAG!r}, 1)")


def _assert_refused(path: Path, canary: Path, match: str | None = None) -> PackedFileError:
    """``load_packed(path)`` raises PackedFileError, and no payload ran, neither while loading
    nor on a forward (run if a model came back anyway, to show what the old code did)."""
    model, error = None, None
    try:
        model = load_packed(path)
    except PackedFileError as err:
        error = err
    if model is not None:
        with contextlib.suppress(Exception):
            model(H.X)
    ran = canary.exists() or hasattr(builtins, FLAG)
    with contextlib.suppress(AttributeError):
        delattr(builtins, FLAG)
    assert not ran, "the file's payload ran"
    assert error is not None, "a hostile file loaded"
    if match is not None:
        assert match in str(error), str(error)
    return error


# code execution ------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["target", "name"])
def test_placeholder_holding_an_expression(files, tmp_path, where):
    canary = tmp_path / "canary"
    doc = H.read_doc(files["quant"])
    name = doc["graph"][0][1]
    hostile = f"{name}=({_payload(canary)})"
    if where == "target":  # fx writes the target into the forward's signature
        doc["graph"][0][2] = hostile
    else:  # the node's name, and every reference to it
        text = json.dumps(doc)
        assert text.count(json.dumps(name)) >= 2
        doc = json.loads(text.replace(json.dumps(name), json.dumps(hostile)))
    _assert_refused(H.write_doc(files["quant"], tmp_path / "p.st", doc), canary)


def test_keyword_name_pasted_into_generated_code(files, tmp_path):
    canary = tmp_path / "canary"
    doc = H.read_doc(files["residual"])
    (record,) = [r for r in doc["graph"] if r[2] == "torch.flatten"]
    record[4] = {"dict": [[f"start_dim=({_payload(canary)}) or 1, end_dim", -1]]}
    _assert_refused(H.write_doc(files["residual"], tmp_path / "k.st", doc), canary,
                    "keyword")


def test_method_name_pasted_into_generated_code(files, tmp_path):
    canary = tmp_path / "canary"
    doc = H.read_doc(files["residual"])
    (record,) = [r for r in doc["graph"] if r[0] == "call_method" and r[2] == "contiguous"]
    record[2] = f"contiguous() or ({_payload(canary)}) or x.contiguous"
    _assert_refused(H.write_doc(files["residual"], tmp_path / "m.st", doc), canary, "method")


def _chain(canary: Path, via: str, x: str) -> list[list]:
    """Nodes that reach ``exec`` with allowed-looking operator functions and no codegen trick:
    ``attrgetter`` of a dunder path to a module's globals, ``getitem`` on its builtins,
    ``operator.call`` of what comes out."""
    source = f"import pathlib, builtins; pathlib.Path({str(canary)!r}).touch(); " \
             f"setattr(builtins, {FLAG!r}, 1)"
    path, obj = "__class__.__repr__.__globals__", x
    get = []
    if via == "getattr":  # the class through builtins.getattr, the rest through attrgetter
        path, obj = "__repr__.__globals__", "c"
        get = [["call_function", "c", "builtins.getattr", {"tuple": [{"node": x}, "__class__"]},
                {"dict": []}]]
    return [*get,
            ["call_function", "g", "operator.attrgetter", {"tuple": [path]}, {"dict": []}],
            ["call_function", "d", "operator.call", {"tuple": [{"node": "g"}, {"node": obj}]},
             {"dict": []}],
            ["call_function", "b", "operator.getitem", {"tuple": [{"node": "d"}, "__builtins__"]},
             {"dict": []}],
            ["call_function", "e", "operator.getitem", {"tuple": [{"node": "b"}, "exec"]},
             {"dict": []}],
            ["call_function", "r", "operator.call", {"tuple": [{"node": "e"}, source]},
             {"dict": []}]]


@pytest.mark.parametrize("via", ["attrgetter", "getattr"])
def test_operator_chain_without_codegen_trick(files, tmp_path, via):
    canary = tmp_path / "canary"
    doc = H.read_doc(files["float"])
    doc["graph"][-1:-1] = _chain(canary, via, doc["graph"][0][1])
    match = "not allowed" if via == "attrgetter" else "getattr of a private attribute"
    _assert_refused(H.write_doc(files["float"], tmp_path / "c.st", doc), canary, match)


def test_getitem_with_a_string_index_is_refused(files, tmp_path):
    doc = H.read_doc(files["residual"])
    record = next(r for r in doc["graph"] if r[2] == "operator.getitem")
    record[3]["tuple"][1] = "__builtins__"
    _assert_refused(H.write_doc(files["residual"], tmp_path / "g.st", doc), tmp_path / "c",
                    "getitem")


def test_generated_code_is_audited_even_if_the_checks_had_a_hole():
    """``check_generated_code`` works on the source fx generates, independent of
    ``graph_from_json``'s checks: graphs built by hand with hostile names are refused."""
    payload = "__import__('os').system('true')"
    hostile = []
    g = fx.Graph()
    x = g.placeholder(f"x={payload}")
    g.output(x)
    hostile.append(g)
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_module('0").__class__ or getattr(self, "0', (x,)))
    hostile.append(g)
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(torch.flatten, (x,), {f"start_dim={payload}, end_dim": -1}))
    hostile.append(g)
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(builtins.eval, ("1",)))
    hostile.append(g)
    for graph in hostile:
        with pytest.raises(StructureError):
            check_generated_code(graph)
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_method("view", (g.call_function(torch.flatten, (x,), {"start_dim": 1}), -1)))
    check_generated_code(g)  # a plain graph passes


# allocation ----------------------------------------------------------------------------------
def test_declared_huge_linear_is_refused_before_allocating(files, tmp_path):
    """A few-KB file declaring a 16000 x 32000 Linear (2 GB of float32): refused without
    allocating it (the old loader built the module, then found the data missing)."""
    doc = H.read_doc(files["float"])
    doc["modules"]["8"]["args"] = {"in_features": 16000, "out_features": 32000, "bias": True}
    doc["tensors"]["8"] = {"weight": ["float32", 0, [32000, 16000]],
                           "bias": ["float32", 0, [32000]]}
    path = H.write_doc(files["float"], tmp_path / "big.st", doc)
    assert path.stat().st_size < 10_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(PackedFileError, match="does not lie"):
        load_packed(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"


def test_compressed_structure_bomb_is_bounded(files, tmp_path):
    """A ~100 KB structure that inflates to 100 MiB is refused after inflating at most
    MAX_STRUCTURE_BYTES (16 MiB) + 1 byte."""
    deflater, chunk = zlib.compressobj(9), b" " * 2**20
    compressed = b"".join(deflater.compress(chunk) for _ in range(100)) + deflater.flush()
    bomb = H.write_compressed(files["float"], tmp_path / "bomb.st", compressed)
    tracemalloc.start()
    try:
        with pytest.raises(PackedFileError, match="inflates to more than"):
            load_packed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20, f"peak Python allocation {peak / 2**20:.0f} MiB"


# malformed metadata ------------------------------------------------------------------------
def _edit(doc: dict, edit: str) -> dict | str:
    doc = copy.deepcopy(doc)
    if edit == "negative offset":
        doc["tensors"]["1"]["weight"][1] = -1
    elif edit == "bool offset":
        doc["tensors"]["1"]["weight"][1] = True
    elif edit == "negative size":
        doc["tensors"]["1"]["weight"][2] = [-8]
    elif edit == "offset past the end":
        doc["tensors"]["1"]["weight"][1] = 10**9
    elif edit == "wrong shape":
        doc["tensors"]["1"]["weight"][2] = [4]
    elif edit == "codes bits":
        doc["tensors"]["3"]["weight_quant.codes"][3] = 0.5
    elif edit == "modules is a list":
        doc["modules"] = list(doc["modules"].values())
    elif edit == "graph is a dict":
        doc["graph"] = {"nodes": doc["graph"]}
    elif edit == "record is a string":
        doc["graph"][1] = "call_module"
    elif edit == "layout is a list":
        doc["tensors"]["1"] = []
    elif edit == "args is a list":
        doc["modules"]["1"]["args"] = [8]
    elif edit == "node reference is a list":
        doc["graph"][1][3] = {"tuple": [{"node": ["x"]}]}
    elif edit == "unknown module class":
        doc["modules"]["2"]["type"] = "nn.LSTM"
    elif edit == "quantizer option allocates":
        doc["modules"]["3"]["weight_quant"] = {"kind": "ternary", "gap": 0.1,
                                               "shape": [100000, 100000]}
    elif edit == "nested 40 deep":
        value: object = 1
        for _ in range(40):
            value = {"tuple": [value]}
        doc["graph"][1][3] = value
    elif edit == "nested 100000 deep":
        text = json.dumps(doc)
        return text.replace('"graph": [', '"graph": [' + "[" * 100000 + "]" * 100000 + ",", 1)
    else:
        raise AssertionError(edit)
    return doc


EDITS = ["negative offset", "bool offset", "negative size", "offset past the end", "wrong shape",
         "codes bits", "modules is a list", "graph is a dict", "record is a string",
         "layout is a list", "args is a list", "node reference is a list",
         "unknown module class", "quantizer option allocates", "nested 40 deep",
         "nested 100000 deep"]


@pytest.mark.parametrize("edit", EDITS)
def test_malformed_metadata_is_a_packed_file_error(files, tmp_path, edit):
    source = files["quant"]
    edited = _edit(H.read_doc(source), edit)
    path = (H.write_structure(source, tmp_path / "e.st", edited) if isinstance(edited, str)
            else H.write_doc(source, tmp_path / "e.st", edited))
    with pytest.raises(PackedFileError):
        load_packed(path)


def test_negative_offset_names_the_tensor(files, tmp_path):
    path = H.write_doc(files["quant"], tmp_path / "n.st",
                       _edit(H.read_doc(files["quant"]), "negative offset"))
    with pytest.raises(PackedFileError, match=r"1\.weight: offset must be an integer"):
        load_packed(path)


# saving ----------------------------------------------------------------------------------------
def test_nan_model_refuses_to_pack(tmp_path, make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w=4, a=4)).eval()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'3\.weight'.*NaN"):
        save_packed(model, tmp_path / "nan.st")
    model = make_small_cnn().eval()
    model[1].running_var[2] = float("inf")
    with pytest.raises(ValueError, match=r"'1\.running_var'"):
        save_packed(model, tmp_path / "inf.st")
    assert list(tmp_path.iterdir()) == []


def test_unobserved_int8_ranges_still_pack(tmp_path, make_small_cnn):
    """An observer that saw no data holds +-inf on purpose: that is not refused (NaN is)."""
    model = quantize_(make_small_cnn(), QuantConfig(w=8, a=8, scheme="int8_affine")).eval()
    loaded = load_packed(save_packed(model, tmp_path / "ok.st"))
    assert torch.equal(loaded(H.X), model(H.X))
    name, observer = next((n, m) for n, m in model.named_modules() if n.endswith("observer"))
    observer.min_val.fill_(float("nan"))
    with pytest.raises(ValueError, match=f"{name}.min_val"):
        save_packed(model, tmp_path / "nan.st")


class _Cumsum(nn.Module):
    def __init__(self, method: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.method = method

    def forward(self, x):
        return self.lin(x).cumsum(1) if self.method else torch.cumsum(self.lin(x), 1)


@pytest.mark.parametrize("method", [False, True])
def test_saving_outside_the_allow_list_fails_at_save_time(tmp_path, method):
    with pytest.raises(StructureError, match="cumsum"):
        save_packed(_Cumsum(method), tmp_path / "x.st")
    with pytest.raises(StructureError, match="nn.LSTM"):
        save_packed(nn.Sequential(nn.LSTM(4, 4)), tmp_path / "y.st")
    assert list(tmp_path.iterdir()) == []


def test_allow_lists_hold_no_escape_hatch():
    names = set(GRAPH_FUNCTIONS)
    for bad in ("operator.attrgetter", "operator.methodcaller", "operator.call",
                "builtins.eval", "builtins.exec", "torch.load", "torch.save"):
        assert bad not in names
    assert all(not m.startswith("_") and not m.endswith("_") for m in TENSOR_METHODS)
    assert {"view", "size", "flatten", "reshape", "mean", "chunk", "contiguous", "transpose",
            "permute"} <= TENSOR_METHODS
    assert {"Conv2d", "Linear", "BatchNorm2d", "ReLU"} <= MODULE_TYPES


# the allow-lists cover real models -------------------------------------------------------------
@pytest.mark.parametrize("name", ["nin", "nin_gc", "mobilenet_student", "resnet18_cifar",
                                  pytest.param("tv:mobilenet_v3_small", marks=pytest.mark.slow),
                                  "tv:shufflenet_v2_x0_5"])
def test_zoo_models_pack_and_load_bit_identical(tmp_path, name):
    """What the allow-lists were derived from still round-trips (channel shuffles, residual
    adds, squeeze-excitation products, chunk/getitem/size/view)."""
    models = pytest.importorskip("netshrink.models")
    torch.manual_seed(0)
    kwargs = {"width": 0.25} if name in ("nin", "nin_gc", "resnet18_cifar") else {}
    model = quantize_(models.create_model(name, **kwargs), QuantConfig(w=2, a=4)).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loaded = load_packed(save_packed(model, tmp_path / "z.st"))
    assert torch.equal(loaded(x), model(x))
