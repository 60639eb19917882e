"""Property-based fuzzing of ``load_packed`` (issue 11): genuine packed files (a float model, a
2-bit quantized one, a ternary residual one with a channel shuffle) with random edits to their
structure JSON (hostile strings, other function names, negative / huge numbers, other types,
deleted keys, deep nesting) or to their raw bytes. Whatever the edit, loading returns a
GraphModule or raises PackedFileError, and neither the load nor one forward of what it returned
opens a file, imports a module that was not imported before, or runs the file's payload."""

from __future__ import annotations

import atexit
import builtins
import contextlib
import copy
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import packed_hostile_helpers as H
import pytest
from torch import fx

from netshrink.quant import PackedFileError, load_packed
from netshrink.quant.structure import GRAPH_FUNCTIONS, TENSOR_METHODS

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FLAG = "NETSHRINK_FUZZ_PWNED"
FOLDER = Path(tempfile.mkdtemp(prefix="netshrink-packed-fuzz-"))  # hypothesis: no tmp_path
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
CANARY = FOLDER / "canary"
PAYLOAD = (f"__import__('pathlib').Path({str(CANARY)!r}).touch() or "
           f"setattr(__import__('builtins'), {FLAG!r}, 1)")
HOSTILE_STRINGS = [
    PAYLOAD, f"x=({PAYLOAD})", f"x, y=({PAYLOAD})", f"relu() or ({PAYLOAD}) or x.relu",
    "__import__('os').system('x')", "a; import os", "a\nimport os", "__class__",
    "__class__.__init__.__globals__", "x.__class__.__mro__", "stem.__dict__", "0.__class__",
    '0").__class__ or getattr(self, "0', "__builtins__", "exec", "eval", "self", "torch",
    "getattr", "inf", "lambda: 0", "import", "class", "", " ", "'", '"', "\\", "\u00e9",
    "x" * 300, "a.b.c", "1.2", "-1", "*args", "**kwargs", "_tensor_constant0",
]
FUNCTION_NAMES = [*GRAPH_FUNCTIONS, *sorted(TENSOR_METHODS), "operator.attrgetter",
                  "operator.methodcaller", "operator.call", "builtins.eval", "builtins.exec",
                  "builtins.__import__", "builtins.open", "torch.load", "torch.save",
                  "torch.hub.load", "torch._C._get_tracing_state", "importlib.import_module",
                  "os.system", "math.sqrt", "nn.LSTM", "nn.Module", "quant.QuantLinear",
                  "tolist", "numpy", "storage", "register_hook", "__reduce__", "apply_",
                  "new_zeros", "placeholder", "call_module", "get_attr", "output"]
NUMBERS = [-1, -(2**63), 2**63, 2**70, 10**30, 0, 1, 2, 3, 1.5, -0.5, 1.6, 1e308, True, False]
OTHER_TYPES = [None, [], {}, [[]], [1, 2], {"tuple": []}, {"tuple": [1]}, {"node": "x"},
               {"node": ["x"]}, {"dict": [[1, 2]]}, {"dict": [[[1], 2]]}, {"size": [-1]},
               {"slice": [1]}, {"float": "nan"}, {"dtype": "float32"}, {"dtype": "__class__"},
               {"device": "cuda:0"}, {"ellipsis": True}, {"a": 1, "b": 2}, "str", 0, True]


@functools.cache
def _genuine() -> dict[str, tuple[Path, dict[str, Any], bytes]]:
    files = H.genuine_files(FOLDER)
    for path in files.values():  # load and run once: lazy imports happen here, not later
        load_packed(path)(H.X)
    return {name: (path, H.read_doc(path), path.read_bytes()) for name, path in files.items()}


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in ``doc``: each place a mutation can hit."""
    out, stack = [], [doc]
    while stack:
        item = stack.pop()
        keys = item.keys() if isinstance(item, dict) else range(len(item))
        for key in list(keys):
            out.append((item, key))
            if isinstance(item[key], (dict, list)):
                stack.append(item[key])
    return out


def _nest(value: Any, depth: int, tagged: bool) -> Any:
    for _ in range(depth):
        value = {"tuple": [value]} if tagged else [value]
    return value


@st.composite
def mutated_docs(draw: Any) -> tuple[Path, Any]:
    name = draw(st.sampled_from(["float", "quant", "residual"]))
    source, doc, _ = _genuine()[name]
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc)
        if not slots:
            break
        parent, key = slots[draw(st.integers(0, len(slots) - 1))]
        kind = draw(st.sampled_from(["string", "function", "number", "type", "delete", "nest",
                                     "swap"]))
        if kind == "string":
            parent[key] = draw(st.sampled_from(HOSTILE_STRINGS))
        elif kind == "function":
            parent[key] = draw(st.sampled_from(FUNCTION_NAMES))
        elif kind == "number":
            parent[key] = draw(st.sampled_from(NUMBERS))
        elif kind == "type":
            parent[key] = copy.deepcopy(draw(st.sampled_from(OTHER_TYPES)))
        elif kind == "delete":
            del parent[key]
        elif kind == "nest":
            parent[key] = _nest(parent[key], draw(st.integers(1, 80)), draw(st.booleans()))
        else:
            other, other_key = slots[draw(st.integers(0, len(slots) - 1))]
            parent[key] = copy.deepcopy(other[other_key])
    return source, doc


@st.composite
def mutated_bytes(draw: Any) -> tuple[Path, bytes]:
    name = draw(st.sampled_from(["float", "quant", "residual"]))
    source, _, raw = _genuine()[name]
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "header"]))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "header" and len(data) > 8:  # inside the JSON header, after its length
            pos = 8 + pos % min(len(data) - 8, int.from_bytes(data[:8], "little") or 1)
            data[pos] = draw(st.sampled_from(list(b'{}[]",:0123456789-e ')))
    return source, bytes(data)


def _load_guarded(path: Path) -> None:
    guard = H.Guard()
    with guard.watch():
        try:
            model = load_packed(path)
        except PackedFileError:
            model = None
        event("refused (PackedFileError)" if model is None else "loaded")
        if model is not None:
            assert isinstance(model, fx.GraphModule)
            # The generated forward itself: fx's call wrapper reports a failing forward
            # through torch._dynamo, importing ~900 of torch's own modules the first time.
            with contextlib.suppress(Exception):  # a forward may fail; it must not escape
                model.forward(H.X)
    ran = CANARY.exists() or hasattr(builtins, FLAG)
    CANARY.unlink(missing_ok=True)  # so one example's payload cannot fail the next
    with contextlib.suppress(AttributeError):
        delattr(builtins, FLAG)
    assert not ran, "the file's payload ran"
    assert guard.opened == [], guard.opened
    assert guard.imported == [] and not guard.new_modules, (guard.imported, guard.new_modules)


FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(mutated_docs())
def test_mutated_structure_loads_or_is_a_packed_file_error(case):
    source, doc = case
    _load_guarded(H.write_structure(source, FOLDER / "mutated.st", json.dumps(doc)))


@settings(FUZZ, max_examples=100)
@given(mutated_bytes())
def test_mutated_bytes_load_or_are_a_packed_file_error(case):
    _, data = case
    path = FOLDER / "bytes.st"
    path.write_bytes(data)
    _load_guarded(path)
