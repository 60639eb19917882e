"""Packed model files: every quantized weight at its real width, the structure as JSON.

``save_packed(model, path)`` writes one safetensors file:

* tensor ``codes``: every quantized weight's codes, bit-packed (8/4/3/2 bits, binary 1 bit,
  ternary base-3 at 5 codes per byte) and concatenated, one uint8 tensor;
* tensors ``float32``, ``float16``, ``int64``, ...: every other stored tensor (scales, biases,
  BatchNorm parameters and statistics, float layers' weights, 16-bit weights), flattened and
  concatenated per dtype, so the header stays a few dozen bytes;
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

from netshrink.core import save_safetensors_atomic
from netshrink.quant.bitpack import pack_codes, packed_nbytes, unpack_codes
from netshrink.quant.layers import QUANT_LAYERS, FrozenWeight
from netshrink.quant.quantizers import weight_quantizer_from_spec
from netshrink.quant.structure import (
    StructureError,
    graph_from_json,
    graph_to_json,
    module_from_spec,
    module_spec,
    trace,
)

FORMAT = "netshrink-packed"
FORMAT_VERSION = 1
_CODES = "weight_quant.codes"


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


@dataclass
class _Collected:
    graph: list[list[Any]]
    modules: dict[str, dict[str, Any]]
    tensors: dict[str, dict[str, torch.Tensor | _Codes]]  # module -> local name -> tensor
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


def _collect(model: nn.Module) -> _Collected:
    was_training = model.training
    model.eval()
    try:
        graph = trace(model)
        modules: dict[str, dict[str, Any]] = {}
        tensors: dict[str, dict[str, torch.Tensor | _Codes]] = {}
        attrs: dict[str, torch.Tensor] = {}
        for node in graph.nodes:
            if node.op == "call_module" and node.target not in modules:
                m = model.get_submodule(node.target)
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


def _all_tensors(c: _Collected) -> list[torch.Tensor | _Codes]:
    return [t for local in c.tensors.values() for t in local.values()] + list(c.attrs.values())


@torch.no_grad()
def packed_size(model: nn.Module) -> PackedSize:
    """The size ``save_packed`` should take by the formula: bits x weights / 8 for every
    quantized weight plus the bytes of every other tensor the file stores."""
    code_bits, float_bytes = 0.0, 0
    for t in _all_tensors(_collect(model)):
        if isinstance(t, _Codes):
            code_bits += t.bits * t.codes.numel()
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


@torch.no_grad()
def save_packed(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (quantized by ``quantize``, or loaded by ``load_packed``) to ``path``
    with every quantized weight at its real width; atomic (temporary file, then rename)."""
    path = Path(path)
    collected = _collect(model)
    blobs = _Blobs()
    layout: dict[str, dict[str, list[Any]]] = {}
    for module_name, local in collected.tensors.items():
        entries = layout.setdefault(module_name, {})
        for name, t in local.items():
            if isinstance(t, _Codes):
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
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "graph": collected.graph,
           "modules": collected.modules, "tensors": layout, "attrs": attrs}
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    tensors = blobs.tensors()
    compressed = zlib.compress(text.encode(), level=9)
    tensors["structure"] = torch.frombuffer(bytearray(compressed), dtype=torch.uint8)
    save_safetensors_atomic(path, tensors, metadata={"format": FORMAT})
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise PackedFileError(f"no packed model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as err:
        raise PackedFileError(f"{path} is not a readable packed model (truncated, corrupt, or "
                              f"another format; pickles are never loaded): {err}") from err
    if header.get("format") != FORMAT or "structure" not in tensors:
        raise PackedFileError(f"{path} is a safetensors file but not a netshrink packed model "
                              f"(use netshrink.core.load_checkpoint for checkpoints)")
    try:
        raw = bytes(tensors.pop("structure").tolist())  # (no numpy needed)
        doc = json.loads(zlib.decompress(raw).decode())
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PackedFileError(f"{path}: the structure is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PackedFileError(f"{path}: the structure is not a {FORMAT} document")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise PackedFileError(f"{path}: packed format version {version!r} is not one this "
                              f"netshrink-quant reads (up to {FORMAT_VERSION}); upgrade it")
    return doc, tensors


def read_structure(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document of a packed file: graph, module records, tensor layout."""
    return _read(Path(path))[0]


def _slice(blobs: dict[str, torch.Tensor], entry: list[Any]) -> torch.Tensor:
    dtype, offset, shape = entry[0], int(entry[1]), [int(s) for s in entry[2]]
    if dtype == "codes":
        bits = float(entry[3])
        n = math.prod(shape)
        nbytes = packed_nbytes(n, bits)
        packed = blobs["codes"][offset: offset + nbytes]
        return unpack_codes(packed, bits, n).view(shape)
    n = math.prod(shape)
    blob = blobs[dtype]
    if offset + n > blob.numel():
        raise PackedFileError(f"tensor at {dtype}[{offset}:{offset + n}] lies outside the file")
    return blob[offset: offset + n].clone().view(shape)


def _install(root: nn.Module, target: str, value: nn.Module | torch.Tensor) -> None:
    *parents, leaf = target.split(".")
    owner = root
    for part in parents:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if isinstance(value, nn.Module):
        owner.add_module(leaf, value)
    else:
        owner.register_buffer(leaf, value)


@torch.no_grad()
def load_packed(path: str | os.PathLike[str]) -> fx.GraphModule:
    """Rebuild the model saved by ``save_packed`` (eval mode, quantized layers frozen)."""
    path = Path(path)
    doc, blobs = _read(path)
    try:
        root = nn.Module()
        for target, spec in doc["modules"].items():
            local = {name: _slice(blobs, entry)
                     for name, entry in doc["tensors"].get(target, {}).items()}
            module = module_from_spec(spec)
            if isinstance(module, QUANT_LAYERS) and spec.get("weight_quant") is not None:
                quantizer = weight_quantizer_from_spec(spec["weight_quant"])
                params = {k.removeprefix("weight_quant."): v for k, v in local.items()
                          if k.startswith("weight_quant.") and k != _CODES}
                codes = local[_CODES]
                if codes.dtype == torch.uint8:
                    codes = codes.view(quantizer_shape(module))
                module._install_frozen(FrozenWeight(quantizer, codes, params))
            module.load_state_dict(local, strict=True, assign=True)
            _install(root, target, module)
        for target, entry in doc.get("attrs", {}).items():
            _install(root, target, _slice(blobs, entry))
        graph = graph_from_json(doc["graph"])
    except (KeyError, TypeError, ValueError) as err:
        raise PackedFileError(f"{path}: inconsistent packed model: {err}") from err
    return fx.GraphModule(root, graph).eval()


def quantizer_shape(layer: nn.Module) -> tuple[int, int]:
    """The out-major weight shape ``(out_channels, fan_in)`` of a quantized layer."""
    shape = layer._weight_shape()
    out = layer.num_out_channels
    return out, math.prod(shape) // out
