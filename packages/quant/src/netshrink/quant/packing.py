"""Packed model files: every quantized weight at its real width, the structure as JSON.

``save_packed(model, path)`` writes one safetensors file:

* tensor ``codes``: every quantized weight's codes, bit-packed (8/4/3/2 bits, binary 1 bit,
  ternary base-3 at 5 codes per byte) and concatenated, one uint8 tensor;
* tensors ``float32``, ``float16``, ``int64``, ...: every other stored tensor (scales, biases,
  BatchNorm parameters and statistics, float layers' weights, 16-bit weights), flattened and
  concatenated per dtype, so the header stays a few dozen bytes;
* weight-shared layers (core's ``HasCodebookForm``, e.g. ``netshrink.share``) as their plain
  ``torch.nn`` layer whose weight is a codebook (float32) plus indices at ``bits`` bits, or,
  with ``coding="huffman"``, Huffman-coded indices and sparse positions (``codebook_pack``);
  they load back as the plain layer with the decoded float weight;
* tensor ``structure``: a JSON document with the fx graph, one record per module (type and
  constructor arguments, quantizer specs) and where each tensor lies, as zlib-compressed UTF-8
  (uncompressed it would be 1-10% of a low-bit file; ``read_structure(path)`` shows it).

Nothing is pickled. The file is written to a temporary name and renamed. ``load_packed(path)``
rebuilds a ``torch.fx.GraphModule`` (eval mode) whose quantized layers hold their codes
(``FrozenWeight``) and whose outputs are bit-identical to the fake-quantized model's in eval
mode. ``packed_size(model)`` gives the size the formula predicts: bits x weights / 8 for the
codes plus the bytes of every other stored tensor.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import fx, nn

from netshrink.core import CodebookForm, HasCodebookForm, save_safetensors_atomic
from netshrink.quant import codebook_pack
from netshrink.quant.bitpack import CODE_BITS, pack_codes, packed_nbytes, unpack_codes
from netshrink.quant.layers import QUANT_LAYERS, FrozenWeight
from netshrink.quant.quant_add import link_input_grids
from netshrink.quant.structure import (
    StructureError,
    _constructor_args,
    _torch_base,
    check_generated_code,
    dotted_path,
    graph_from_json,
    graph_to_json,
    identifier,
    module_from_spec,
    module_spec,
    trace,
    weight_quantizer_from_record,
)

FORMAT = "netshrink-packed"
#: Version 2 adds codebook entries; files without them are still written as version 1.
FORMAT_VERSION = 2
_CODES = "weight_quant.codes"
#: Bounds on what a file may declare (checked before anything is allocated).
MAX_STRUCTURE_BYTES = 16 * 2**20  # the JSON, compressed and inflated (real ones: ~100 KiB)
MAX_JSON_DEPTH = 48  # ours nests ~12 levels
MAX_JSON_ITEMS = 4_000_000
MAX_TENSOR_ELEMENTS = 2**34  # per tensor, and per offset (blobs are far smaller in practice)
MAX_DIMS = 8
_BLOB_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
    torch.int16, torch.int32, torch.int64, torch.bool)}


class PackedFileError(RuntimeError):
    """A file that is not a readable netshrink packed model."""


@dataclass(frozen=True)
class PackedSize:
    """What a packed model takes: ``code_bytes`` = sum of bits x weights / 8 over quantized
    weights, ``float_bytes`` = every other stored tensor at its dtype width."""

    code_bytes: float
    float_bytes: int

    @property
    def total(self) -> float:
        return self.code_bytes + self.float_bytes


@dataclass(frozen=True)
class _Codes:
    codes: torch.Tensor  # uint8, one per weight, out-major
    bits: float


@dataclass(frozen=True)
class _Shared:
    form: CodebookForm  # a weight-shared layer's weight


_Stored = torch.Tensor | _Codes | _Shared


@dataclass
class _Collected:
    graph: list[list[Any]]
    modules: dict[str, dict[str, Any]]
    tensors: dict[str, dict[str, _Stored]]  # module -> local name -> tensor
    attrs: dict[str, torch.Tensor]  # get_attr targets


def _layer_tensors(layer: nn.Module) -> dict[str, torch.Tensor | _Codes]:
    """A quantized layer's stored tensors: codes instead of the latent weight."""
    weight, out = layer.deploy_state()
    if layer.weight_quant is None:
        return dict(out)
    if weight is None:  # frozen: the codes are already there
        codes, bits = out.pop(_CODES), layer.weight_quant.quantizer.bits
    else:
        codes, params = layer.weight_quant.encode(layer._out_major(weight))
        bits = layer.weight_quant.bits
        out.update({f"weight_quant.{k}": v for k, v in params.items()})
    out[_CODES] = _Codes(codes, bits) if codes.dtype == torch.uint8 else codes
    return out


def _shared_layer(m: nn.Module) -> tuple[dict[str, Any], dict[str, _Stored]]:
    """A weight-shared layer as its plain torch.nn layer's record, the weight a codebook."""
    base = _torch_base(type(m))
    spec = {"type": "nn." + base.__name__, "args": _constructor_args(m)}
    plain = module_from_spec(spec)
    form = m.codebook_form()
    local: dict[str, _Stored] = {}
    for name, t in plain.state_dict().items():
        if name == "weight":
            if tuple(form.indices.shape) != tuple(t.shape):
                raise StructureError(f"{type(m).__name__}: its indices {tuple(form.indices.shape)}"
                                     f" are not the shape of a {base.__name__}'s weight "
                                     f"{tuple(t.shape)}")
            local[name] = _Shared(form)
        else:
            local[name] = getattr(m, name).detach()
    return spec, local


def _collect(model: nn.Module) -> _Collected:
    was_training = model.training
    model.eval()
    try:
        graph = trace(model)
        modules: dict[str, dict[str, Any]] = {}
        tensors: dict[str, dict[str, _Stored]] = {}
        attrs: dict[str, torch.Tensor] = {}
        for node in graph.nodes:
            if node.op == "call_module" and node.target not in modules:
                m = model.get_submodule(node.target)
                if isinstance(m, HasCodebookForm) and not isinstance(m, QUANT_LAYERS):
                    modules[node.target], tensors[node.target] = _shared_layer(m)
                    continue
                modules[node.target] = module_spec(m)
                tensors[node.target] = (_layer_tensors(m) if isinstance(m, QUANT_LAYERS)
                                        else dict(m.state_dict()))
            elif node.op == "get_attr" and node.target not in attrs:
                value = _get_attr(model, node.target)
                if not isinstance(value, torch.Tensor):
                    raise StructureError(f"attribute {node.target!r} is a "
                                         f"{type(value).__name__}, not a tensor")
                attrs[node.target] = value.detach()
        return _Collected(graph_to_json(graph), modules, tensors, attrs)
    finally:
        model.train(was_training)


def _get_attr(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _all_tensors(c: _Collected) -> list[_Stored]:
    return [t for local in c.tensors.values() for t in local.values()] + list(c.attrs.values())


@torch.no_grad()
def packed_size(model: nn.Module, coding: str | None = None) -> PackedSize:
    """The size ``save_packed`` should take by the formula: bits x weights / 8 for every
    quantized weight plus the bytes of every other tensor the file stores. A weight-shared
    layer counts its codebook as floats and its encoded indices (and positions) as codes,
    measured by encoding them with ``coding`` (None: as each layer asks, see ``save_packed``)."""
    code_bits, float_bytes = 0.0, 0
    for t in _all_tensors(_collect(model)):
        if isinstance(t, _Codes):
            code_bits += t.bits * t.codes.numel()
        elif isinstance(t, _Shared):
            codes, floats = codebook_pack.encoded_nbytes(t.form, coding or t.form.coding)
            code_bits += 8 * codes
            float_bytes += floats
        else:
            float_bytes += t.numel() * t.element_size()
    return PackedSize(code_bytes=code_bits / 8, float_bytes=float_bytes)


class _Blobs:
    """Concatenates flat tensors per dtype and remembers where each one went."""

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.sizes: dict[str, int] = {}

    def add(self, name: str, t: torch.Tensor) -> int:
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        offset = self.sizes.get(name, 0)
        self.parts.setdefault(name, []).append(flat)
        self.sizes[name] = offset + flat.numel()
        return offset

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.cat(parts) for name, parts in self.parts.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_OBSERVER_RANGE = (".observer.min_val", ".observer.max_val")


def _check_finite_tensors(tensors: dict[str, Any], prefix: str) -> None:
    for name, t in tensors.items():
        if isinstance(t, _Shared):
            t = t.form.codebook
        if isinstance(t, _Codes) or not isinstance(t, torch.Tensor) or not (
                t.is_floating_point() or t.is_complex()):
            continue
        full = prefix + name
        bad = torch.isnan(t) if full.endswith(_OBSERVER_RANGE) else ~torch.isfinite(t)
        if bool(bad.any()):
            raise ValueError(f"cannot pack a model with non-finite values: tensor {full!r} "
                             f"({tuple(t.shape)}) holds {int(bad.sum())} NaN/inf value(s); "
                             "fix or retrain the model (a diverged run?) before packing")


def _check_finite(model: nn.Module) -> None:
    """ValueError naming the first parameter or buffer holding NaN (or inf, except an
    observer's not-yet-observed range)."""
    _check_finite_tensors(dict(model.named_parameters()), prefix="")
    _check_finite_tensors(dict(model.named_buffers()), prefix="")


@torch.no_grad()
def save_packed(model: nn.Module, path: str | os.PathLike[str], *,
                coding: str | None = None) -> Path:
    """Write ``model`` (quantized by ``quantize_``, or loaded by ``load_packed``) to ``path``
    with every quantized weight at its real width; atomic (temporary file, then rename).

    Weight-shared layers store their codebook and indices at ``bits`` bits (plus a 1-bit map
    of the kept weights when pruned) with ``coding="fixed"``, or Huffman-coded indices and gap
    positions with ``coding="huffman"`` (``codebook_pack``); ``coding=None`` stores each as
    its ``CodebookForm.coding`` asks (what a ``share.code`` stage sets).

    A model with a NaN or infinite parameter or stored tensor is refused (ValueError naming
    the tensor): its file would load and run, silently wrong. Only an activation observer's
    range may be +-inf (nothing observed yet)."""
    path = Path(path)
    if coding is not None and coding not in codebook_pack.CODINGS:
        raise ValueError(f"coding={coding!r} is not allowed; choose one of "
                         f"{list(codebook_pack.CODINGS)}")
    _check_finite(model)
    collected = _collect(model)
    for module_name, local in collected.tensors.items():
        _check_finite_tensors(local, prefix=f"{module_name}." if module_name else "")
    _check_finite_tensors(collected.attrs, prefix="")
    blobs = _Blobs()
    shared = False
    layout: dict[str, dict[str, list[Any]]] = {}
    for module_name, local in collected.tensors.items():
        entries = layout.setdefault(module_name, {})
        for name, t in local.items():
            if isinstance(t, _Shared):
                entries[name] = _add_shared(blobs, t.form, coding or t.form.coding)
                shared = True
            elif isinstance(t, _Codes):
                packed = pack_codes(t.codes, t.bits)
                entries[name] = ["codes", blobs.add("codes", packed), list(t.codes.shape),
                                 t.bits]
            else:
                dtype = _dtype_name(t.dtype)
                entries[name] = [dtype, blobs.add(dtype, t), list(t.shape)]
    attrs = {}
    for target, t in collected.attrs.items():
        dtype = _dtype_name(t.dtype)
        attrs[target] = [dtype, blobs.add(dtype, t), list(t.shape)]
    doc = {"format": FORMAT, "version": FORMAT_VERSION if shared else 1,
           "graph": collected.graph,
           "modules": collected.modules, "tensors": layout, "attrs": attrs}
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    tensors = blobs.tensors()
    _plan(json.loads(text), tensors)  # what a load checks: a save never writes what it refuses
    compressed = zlib.compress(text.encode(), level=9)
    tensors["structure"] = torch.frombuffer(bytearray(compressed), dtype=torch.uint8)
    save_safetensors_atomic(path, tensors, metadata={"format": FORMAT})
    return path


def _byte_tensor(data: bytes) -> torch.Tensor:
    return (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
            else torch.zeros(0, dtype=torch.uint8))


def _add_shared(blobs: _Blobs, form: CodebookForm, coding: str) -> list[Any]:
    """Store a shared weight's codebook and payloads; its ``"codebook"`` layout record."""
    codebook, idx, pos, fields = codebook_pack.encode(form, coding)
    offset = blobs.add("float32", codebook)
    idx_at = blobs.add("codes", _byte_tensor(idx))
    positions = None
    if pos is not None:
        positions = [blobs.add("codes", _byte_tensor(pos)), len(pos), fields["count"]]
    return ["codebook", offset, list(form.indices.shape),
            {"bits": fields["bits"], "coding": coding, "nnz": fields["nnz"],
             "indices": [idx_at, len(idx)], "positions": positions}]


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise PackedFileError(f"no packed model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PackedFileError(f"{path} is not a readable packed model (truncated, corrupt, or "
                              f"another format; pickles are never loaded): {err}") from err
    if header.get("format") != FORMAT or "structure" not in tensors:
        raise PackedFileError(f"{path} is a safetensors file but not a netshrink packed model "
                              f"(use netshrink.core.load_checkpoint for checkpoints)")
    structure = tensors.pop("structure")
    for name, t in tensors.items():
        expected = torch.uint8 if name == "codes" else _BLOB_DTYPES.get(name)
        if t.dtype != expected or t.dim() != 1:
            raise PackedFileError(f"{path}: tensor {name!r} ({t.dtype}, {t.dim()}-d) is not one "
                                  f"of this format's flat blobs (codes, "
                                  f"{', '.join(_BLOB_DTYPES)}: 1-d, of that dtype)")
    doc = _parse_structure(path, structure)
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise PackedFileError(f"{path}: packed format version {version!r} is not one this "
                              f"netshrink-quant reads (up to {FORMAT_VERSION}); upgrade it")
    return doc, tensors


def _parse_structure(path: Path, structure: torch.Tensor) -> dict[str, Any]:
    """The JSON document, decompressed with a bound and checked for size and nesting."""
    if structure.dtype != torch.uint8 or structure.dim() != 1 or (
            structure.numel() > MAX_STRUCTURE_BYTES):
        raise PackedFileError(f"{path}: the structure must be a 1-d uint8 tensor of at most "
                              f"{MAX_STRUCTURE_BYTES} bytes")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(bytes(structure.tolist()), MAX_STRUCTURE_BYTES + 1)
        if len(text) > MAX_STRUCTURE_BYTES or inflater.unconsumed_tail:
            raise PackedFileError(f"{path}: the structure inflates to more than "
                                  f"{MAX_STRUCTURE_BYTES} bytes")
        if not inflater.eof:
            raise PackedFileError(f"{path}: the structure is truncated")
        doc = json.loads(text.decode())
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PackedFileError(f"{path}: the structure is not valid JSON: "
                              f"{type(err).__name__}: {err}") from err
    _check_json_bounds(path, doc)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PackedFileError(f"{path}: the structure is not a {FORMAT} document")
    return doc


def _check_json_bounds(path: Path, doc: Any) -> None:
    """PackedFileError if ``doc`` nests deeper than MAX_JSON_DEPTH or holds more than
    MAX_JSON_ITEMS values (iterative: cannot run out of stack itself)."""
    stack, count = [(doc, 0)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_JSON_ITEMS or depth > MAX_JSON_DEPTH:
            raise PackedFileError(f"{path}: the structure holds more than {MAX_JSON_ITEMS} "
                                  f"values or nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def read_structure(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document of a packed file: graph, module records, tensor layout."""
    return _read(Path(path))[0]


@dataclass(frozen=True)
class _Entry:
    """One checked layout record: ``blob[offset : offset + nbytes]`` holds a tensor of
    ``shape`` (packed codes at ``bits`` when ``blob == "codes"``)."""

    blob: str
    offset: int
    shape: tuple[int, ...]
    bits: float | None
    length: int  # elements of the blob it takes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _int(v: Any, what: str, limit: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
        raise StructureError(f"{what} must be an integer in [0, {limit}], got {v!r}")
    return v


def _entry(raw: Any, blobs: dict[str, torch.Tensor], used: dict[str, int],
           what: str) -> _Entry | codebook_pack.CodebookEntry:
    """Check a layout record against the blobs actually in the file (nothing is allocated)."""
    if isinstance(raw, list) and raw and raw[0] == "codebook":
        return codebook_pack.check_entry(raw, blobs, used, what, MAX_TENSOR_ELEMENTS, MAX_DIMS)
    if not isinstance(raw, list) or len(raw) not in (3, 4) or not isinstance(raw[0], str):
        raise StructureError(f"{what}: layout {raw!r} is not [dtype, offset, shape(, bits)]")
    blob, offset = raw[0], _int(raw[1], f"{what}: offset", MAX_TENSOR_ELEMENTS)
    if blob not in blobs:
        raise StructureError(f"{what}: the file holds no {blob!r} tensor data")
    if not isinstance(raw[2], list) or len(raw[2]) > MAX_DIMS:
        raise StructureError(f"{what}: shape {raw[2]!r} is not a list of at most {MAX_DIMS} "
                             "sizes")
    shape = tuple(_int(s, f"{what}: size", MAX_TENSOR_ELEMENTS) for s in raw[2])
    numel = math.prod(shape)
    if numel > MAX_TENSOR_ELEMENTS:
        raise StructureError(f"{what}: shape {list(shape)} has more than "
                             f"{MAX_TENSOR_ELEMENTS} elements")
    bits = None
    if blob == "codes":
        bits = raw[3] if len(raw) == 4 else None
        if isinstance(bits, bool) or bits not in CODE_BITS:
            raise StructureError(f"{what}: bits {bits!r} is not one of "
                                 f"{', '.join(map(str, sorted(CODE_BITS)))}")
        length = packed_nbytes(numel, bits)
    elif len(raw) == 4:
        raise StructureError(f"{what}: only packed codes have a bit width")
    else:
        length = numel
    available = blobs[blob].numel()
    used[blob] = used.get(blob, 0) + length
    if offset + length > available or used[blob] > available:
        raise StructureError(f"{what}: {blob}[{offset}:{offset + length}] does not lie in the "
                             f"{available} values the file holds (or the file's tensors "
                             "together claim more than that)")
    return _Entry(blob, offset, shape, bits, length)


def _slice(blobs: dict[str, torch.Tensor],
           entry: _Entry | codebook_pack.CodebookEntry) -> torch.Tensor:
    if isinstance(entry, codebook_pack.CodebookEntry):
        return codebook_pack.decode(blobs, entry)
    part = blobs[entry.blob][entry.offset: entry.offset + entry.length]
    if entry.bits is not None:
        return unpack_codes(part, entry.bits, entry.numel).view(entry.shape)
    return part.clone().view(entry.shape)


def _object(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise StructureError(f"{what} must be a JSON object, got {type(v).__name__}")
    return v


def _install(root: nn.Module, target: str, value: nn.Module | torch.Tensor) -> None:
    *parents, leaf = target.split(".")
    owner = root
    for part in parents:
        if part not in owner._modules:
            if hasattr(owner, part):
                raise StructureError(f"{target!r}: {part!r} is not a module")
            owner.add_module(part, nn.Module())
        owner = owner._modules[part]
    if leaf in owner._modules or hasattr(owner, leaf):
        raise StructureError(f"{target!r} is stored twice or names an existing attribute")
    if isinstance(value, nn.Module):
        owner.add_module(leaf, value)
    else:
        owner.register_buffer(leaf, value)


@dataclass
class _Planned:
    """A module rebuilt on the meta device and the checked layout of its tensors."""

    module: nn.Module
    entries: dict[str, _Entry | codebook_pack.CodebookEntry]
    quantizer: nn.Module | None


def _plan_module(target: str, spec: Any, layout: Any, blobs: dict[str, torch.Tensor],
                 used: dict[str, int]) -> _Planned:
    """Build ``target`` on meta and check every stored tensor's name, shape and place against
    what the module expects and the blobs hold, before anything is allocated."""
    module = module_from_spec(spec)
    entries = {dotted_path(name, f"{target}: tensor name"): _entry(raw, blobs, used,
                                                                   f"{target}.{name}")
               for name, raw in _object(layout, f"tensors of {target!r}").items()}
    quantizer = None
    expected = {k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in module.state_dict().items()}
    if isinstance(module, QUANT_LAYERS):
        quantizer = weight_quantizer_from_record(spec)
        if quantizer is not None:
            del expected["weight"]
            codes = entries.get(_CODES)
            if codes is None or codes.numel != math.prod(quantizer_shape(module)):
                raise StructureError(f"{target}: weight codes must hold "
                                     f"{math.prod(quantizer_shape(module))} values")
            expected[_CODES] = (codes.shape, codes.blob if codes.blob == "float16" else "codes")
            for name, e in entries.items():  # the quantizer's own parameters (scales, ...)
                if name.startswith("weight_quant.") and name != _CODES:
                    identifier(name.removeprefix("weight_quant."), f"{target}: tensor name")
                    expected[name] = (e.shape, e.blob)
    got = {name: (e.shape, e.blob) for name, e in entries.items()}
    if got != expected:
        raise StructureError(f"{target}: stored tensors {got} do not match the "
                             f"{type(module).__name__}'s {expected}")
    return _Planned(module, entries, quantizer)


@torch.no_grad()
def load_packed(path: str | os.PathLike[str]) -> fx.GraphModule:
    """Rebuild the model saved by ``save_packed`` (eval mode, quantized layers frozen).

    Safe on files from anyone: only allow-listed functions, methods and module classes are
    rebuilt, every name is a checked identifier, the generated forward is audited before fx
    runs it, and every size is checked against the tensors present before memory is
    allocated. Anything wrong is a ``PackedFileError``."""
    path = Path(path)
    doc, blobs = _read(path)
    try:
        return _rebuild(doc, blobs)
    except PackedFileError:
        raise
    except Exception as err:  # any failure on untrusted input is a malformed file
        raise PackedFileError(f"{path}: inconsistent or unsafe packed model: "
                              f"{type(err).__name__}: {err}") from err


def _plan(doc: dict[str, Any], blobs: dict[str, torch.Tensor]
          ) -> tuple[fx.Graph, dict[str, _Planned], dict[str, _Entry]]:
    """Check the whole document against itself and the blobs and build every module on the
    meta device: everything but reading the tensors (StructureError for anything wrong)."""
    modules = _object(doc.get("modules"), "modules")
    layouts = _object(doc.get("tensors", {}), "tensors")
    attr_layouts = _object(doc.get("attrs", {}), "attrs")
    for target in (*modules, *layouts, *attr_layouts):
        dotted_path(target, "module or attribute path")
    if not set(layouts) <= set(modules):
        raise StructureError(f"tensors for unknown modules {sorted(set(layouts) - set(modules))}")
    graph = graph_from_json(doc.get("graph"))
    for node in graph.nodes:
        known = modules if node.op == "call_module" else attr_layouts
        if node.op in ("call_module", "get_attr") and node.target not in known:
            raise StructureError(f"node {node.name!r}: {node.op} target {node.target!r} is not "
                                 "stored in the file")
    check_generated_code(graph)
    # plan: build on meta and check every layout against the blobs; nothing allocated yet
    used: dict[str, int] = {}
    planned = {t: _plan_module(t, spec, layouts.get(t, {}), blobs, used)
               for t, spec in modules.items()}
    attrs = {t: _entry(raw, blobs, used, t) for t, raw in attr_layouts.items()}
    return graph, planned, attrs


def _rebuild(doc: dict[str, Any], blobs: dict[str, torch.Tensor]) -> fx.GraphModule:
    graph, planned, attrs = _plan(doc, blobs)
    # only now: slice the file's tensors into the modules
    root = nn.Module()
    for target, plan in planned.items():
        local = {name: _slice(blobs, e) for name, e in plan.entries.items()}
        module = plan.module
        if plan.quantizer is not None:
            params = {k.removeprefix("weight_quant."): v for k, v in local.items()
                      if k.startswith("weight_quant.") and k != _CODES}
            codes = local[_CODES]
            if codes.dtype == torch.uint8:
                codes = codes.view(quantizer_shape(module))
            module._install_frozen(FrozenWeight(plan.quantizer, codes, params))
        module.load_state_dict(local, strict=True, assign=True)
        _install(root, target, module)
    for target, entry in attrs.items():
        _install(root, target, _slice(blobs, entry))
    meta = [name for name, t in (*root.named_parameters(), *root.named_buffers())
            if t.is_meta]
    if meta:
        raise StructureError(f"tensors {meta[:5]} are not stored in the file")
    model = fx.GraphModule(root, graph).eval()
    link_input_grids(model)  # int8 biases of layers reading a QuantAdd (quant_add.py)
    return model


def quantizer_shape(layer: nn.Module) -> tuple[int, int]:
    """The out-major weight shape ``(out_channels, fan_in)`` of a quantized layer."""
    shape = layer._weight_shape()
    out = layer.num_out_channels
    return out, math.prod(shape) // out
