"""A model's structure as JSON, without pickle: a torch.fx graph plus one record per module.

``trace`` runs ``torch.fx`` with ``torch.nn`` modules and netshrink.quant layers as leaves
(everything else, e.g. a ResNet block or a channel shuffle, is traced through into plain
tensor operations). ``graph_to_json`` / ``graph_from_json`` turn the graph into lists of
JSON values and back; functions are recorded by qualified name and resolved again only from
``torch``, ``torch.nn.functional``, ``operator`` and ``math`` (and the builtin ``getattr``).
``module_spec`` / ``module_from_spec`` record a leaf module's constructor arguments; a rebuilt
module is checked against the original, so anything that cannot be rebuilt exactly is an error
at save time, not a surprise at load time.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import math
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from netshrink.quant.layers import QUANT_LAYERS
from netshrink.quant.quantizers import act_quantizer_from_spec

_FUNCTION_MODULES = ("torch", "torch.nn.functional", "operator", "math", "torch.special",
                     "torch.linalg", "torch.fft")
_BUILTINS = {"getattr": builtins.getattr}
#: Functions of the allowed modules that touch files or the network: never called from a file.
_DENIED = frozenset({"save", "load", "from_file", "hub", "compile", "export", "jit", "library",
                     "ops", "classes", "utils", "package", "serialization", "set_default_device"})
_QUANT_TYPES = {cls.__name__: cls for cls in QUANT_LAYERS}


class StructureError(ValueError):
    """A model part that cannot be written as (or read back from) JSON."""


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, QUANT_LAYERS) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The model's fx graph with torch.nn modules and quantized layers as leaves."""
    try:
        return _LeafTracer().trace(model)
    except Exception as err:  # fx raises many types for untraceable code
        raise StructureError(f"{type(model).__name__} cannot be traced with torch.fx, so its "
                             f"structure cannot be stored as JSON: {err}") from err


# values --------------------------------------------------------------------------------------
def encode_value(v: Any) -> Any:
    """A JSON value for a graph argument or constructor argument (tagged where JSON lacks one)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if isinstance(v, torch.Size):
        return {"size": list(v)}
    if isinstance(v, tuple):
        return {"tuple": [encode_value(x) for x in v]}
    if isinstance(v, list):
        return [encode_value(x) for x in v]
    if isinstance(v, dict):
        return {"dict": [[encode_value(k), encode_value(x)] for k, x in v.items()]}
    if isinstance(v, slice):
        return {"slice": [encode_value(v.start), encode_value(v.stop), encode_value(v.step)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    raise StructureError(f"cannot store a {type(v).__name__} value ({v!r}) as JSON")


def decode_value(v: Any, nodes: dict[str, fx.Node] | None = None) -> Any:
    """Inverse of ``encode_value``; ``nodes`` maps node names for graph arguments."""
    if isinstance(v, list):
        return [decode_value(x, nodes) for x in v]
    if not isinstance(v, dict):
        return v
    ((tag, x),) = v.items()
    if tag == "node":
        if nodes is None or x not in nodes:
            raise StructureError(f"graph argument refers to unknown node {x!r}")
        return nodes[x]
    if tag == "float":
        return float(x)
    if tag == "size":
        return torch.Size(x)
    if tag == "tuple":
        return tuple(decode_value(y, nodes) for y in x)
    if tag == "dict":
        return {decode_value(k, nodes): decode_value(y, nodes) for k, y in x}
    if tag == "slice":
        return slice(*(decode_value(y, nodes) for y in x))
    if tag == "ellipsis":
        return Ellipsis
    if tag in ("dtype", "memory_format"):
        value = getattr(torch, x, None)
        if not isinstance(value, (torch.dtype, torch.memory_format)):
            raise StructureError(f"unknown torch {tag} {x!r}")
        return value
    if tag == "device":
        return torch.device(x)
    raise StructureError(f"unknown value tag {tag!r}")


# functions ---------------------------------------------------------------------------------
def function_name(fn: Any) -> str:
    """``"<module>.<name>"`` for a graph function, found in the allowed modules only."""
    for name, value in _BUILTINS.items():
        if fn is value:
            return f"builtins.{name}"
    attr = getattr(fn, "__name__", None)
    for module_name in _FUNCTION_MODULES:
        module = importlib.import_module(module_name)
        if attr and getattr(module, attr, None) is fn:
            return f"{module_name}.{attr}"
    for module_name in _FUNCTION_MODULES:  # aliases: the function under another name
        for key, value in vars(importlib.import_module(module_name)).items():
            if value is fn and not key.startswith("__"):
                return f"{module_name}.{key}"
    raise StructureError(f"function {fn!r} is not from {', '.join(_FUNCTION_MODULES)}: it "
                         "cannot be stored by name")


def resolve_function(name: str) -> Any:
    """Inverse of ``function_name`` (only the allowed modules are ever looked in)."""
    module_name, _, attr = name.rpartition(".")
    if module_name == "builtins" and attr in _BUILTINS:
        return _BUILTINS[attr]
    if module_name not in _FUNCTION_MODULES or attr.startswith("__") or attr in _DENIED:
        raise StructureError(f"function {name!r} is not allowed: only public functions of "
                             f"{', '.join(_FUNCTION_MODULES)} (no file or network I/O)")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise StructureError(f"{name!r} is not a function")
    return fn


# graphs ------------------------------------------------------------------------------------
def graph_to_json(graph: fx.Graph) -> list[list[Any]]:
    """``[op, name, target, args, kwargs]`` per node, in order."""
    out = []
    for node in graph.nodes:
        target = function_name(node.target) if node.op == "call_function" else node.target
        out.append([node.op, node.name, target, encode_value(tuple(node.args)),
                    encode_value(dict(node.kwargs))])
    return out


def graph_from_json(records: list[list[Any]]) -> fx.Graph:
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for op, name, target, args, kwargs in records:
        args = decode_value(args, nodes)
        kwargs = decode_value(kwargs, nodes)
        if op == "call_function":
            target = resolve_function(target)
            if target is builtins.getattr and not _public_attr(args):
                raise StructureError(f"node {name!r}: getattr of a private attribute {args!r}")
        elif op == "call_method" and (not isinstance(target, str) or target.startswith("_")):
            raise StructureError(f"node {name!r}: private or invalid method {target!r}")
        elif op not in ("placeholder", "get_attr", "call_module", "call_method", "output"):
            raise StructureError(f"unknown graph op {op!r}")
        if op == "output":
            node = graph.output(args[0])
        else:
            node = graph.create_node(op, target, args, kwargs, name=name)
        nodes[name] = node
    graph.lint()
    return graph


def _public_attr(args: tuple) -> bool:
    return len(args) >= 2 and isinstance(args[1], str) and not args[1].startswith("_")


# modules -----------------------------------------------------------------------------------
def _torch_base(cls: type) -> type:
    for base in cls.__mro__:
        if base.__module__.startswith("torch.nn") and getattr(nn, base.__name__, None) is base:
            return base
    raise StructureError(f"{cls.__name__} is not a torch.nn module")


def _constructor_args(m: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a torch.nn module, read from same-named attributes."""
    base = _torch_base(type(m))
    args: dict[str, Any] = {}
    params = list(inspect.signature(base.__init__).parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype"):
            continue
        value = getattr(m, p.name, inspect.Parameter.empty)
        if p.name == "bias" and (value is None or isinstance(value, torch.Tensor)):
            value = value is not None
        if value is inspect.Parameter.empty:
            if p.default is inspect.Parameter.empty:
                raise StructureError(f"{type(m).__name__}: constructor argument {p.name!r} "
                                     "is not readable from the module")
            continue
        if isinstance(value, torch.Tensor | nn.Module):
            raise StructureError(f"{type(m).__name__}: constructor argument {p.name!r} is a "
                                 f"{type(value).__name__}, not a JSON value")
        args[p.name] = encode_value(value)
    return args


def module_spec(m: nn.Module) -> dict[str, Any]:
    """A JSON record from which ``module_from_spec`` rebuilds ``m`` (without its tensors)."""
    if isinstance(m, QUANT_LAYERS):
        spec = {"type": "quant." + m.deploy_type.__name__,
                "args": {k: encode_value(v) for k, v in m.deploy_args().items()},
                **m.quant_spec()}
    else:
        spec = {"type": "nn." + _torch_base(type(m)).__name__, "args": _constructor_args(m)}
        if type(m) is not _torch_base(type(m)):
            raise StructureError(f"{type(m).__name__} subclasses {spec['type']}; only torch.nn "
                                 "classes themselves and netshrink.quant layers can be stored")
        _check_rebuilt(m, module_from_spec(spec))
    return spec


def _simple_attrs(m: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"
            and isinstance(v, (bool, int, float, str, tuple, list, type(None)))}


def _check_rebuilt(m: nn.Module, rebuilt: nn.Module) -> None:
    same_state = {k: (v.shape, v.dtype) for k, v in m.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in rebuilt.state_dict().items()}
    if not same_state or _simple_attrs(m) != _simple_attrs(rebuilt):
        raise StructureError(f"{type(m).__name__}({m.extra_repr()}) cannot be rebuilt exactly "
                             "from its constructor arguments")


def module_from_spec(spec: dict[str, Any], *, device: str | None = None) -> nn.Module:
    """Rebuild a module (fresh tensors) from ``module_spec``'s record."""
    kind, _, name = str(spec.get("type")).partition(".")
    args = {k: decode_value(v) for k, v in spec.get("args", {}).items()}
    if kind == "nn":
        cls = getattr(nn, name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise StructureError(f"unknown torch.nn module type {name!r}")
        return cls(**args)
    if kind == "quant" and name in _QUANT_TYPES:
        aq = spec.get("input_quant")
        layer = _QUANT_TYPES[name](**args, device="meta", input_quant=(
            act_quantizer_from_spec(aq) if aq is not None else None))
        if spec.get("folded"):
            layer.out_scale = torch.empty(layer.num_out_channels, device="meta")
        return layer
    raise StructureError(f"unknown module type {spec.get('type')!r}; known: nn.<torch.nn class> "
                         f"or quant.{{{', '.join(sorted(_QUANT_TYPES))}}}")

