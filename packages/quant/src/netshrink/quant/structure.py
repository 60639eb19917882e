"""A model's structure as JSON, without pickle: a torch.fx graph plus one record per module.

``trace`` runs ``torch.fx`` with ``torch.nn`` modules and netshrink.quant layers as leaves
(everything else, e.g. a ResNet block or a channel shuffle, is traced through into plain
tensor operations). ``graph_to_json`` / ``graph_from_json`` turn the graph into lists of
JSON values and back; ``module_spec`` / ``module_from_spec`` record a leaf module's constructor
arguments; a rebuilt module is checked against the original, so anything that cannot be rebuilt
exactly is an error at save time, not a surprise at load time.

Packed files come from strangers, and ``torch.fx.GraphModule`` turns a graph into Python source
and executes it, so reading never trusts the file (issue 11):

* every callable comes from an explicit allow-list (``netshrink.quant.allowlist``, re-exported
  here): ``GRAPH_FUNCTIONS`` (functions traced CNNs
  use: nothing that reaches attributes, calls arbitrary objects, imports, or touches files),
  ``TENSOR_METHODS`` and ``TENSOR_ATTRS`` (``call_method`` targets and ``getattr`` names),
  ``MODULE_TYPES`` (``torch.nn`` leaf classes); saving a model that uses anything else is a
  ``StructureError`` naming it, so a save never writes a file that cannot be loaded;
* every name (node names, placeholders, module and attribute paths, keyword names) must be a
  plain ASCII identifier (module path parts may also be indices, as in ``Sequential``, or hold
  ``-``), not a keyword and not a dunder; every field's type is checked;
* ``check_generated_code`` (``netshrink.quant.codeaudit``) parses (never runs) the source fx
  generates and accepts only the shapes of code fx writes for such graphs, so a hole in the
  checks above still cannot reach ``exec``;
* modules are built on the meta device (no memory for their parameters until the file's own
  tensors are assigned).
"""

from __future__ import annotations

import builtins
import inspect
import math
import operator
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from netshrink.core import HasCodebookForm
from netshrink.quant.allowlist import (  # noqa: F401 - re-exported: the lists are public here
    _DTYPES,
    _FUNCTION_NAMES,
    _GRAPH_OPS,
    _MEMORY_FORMATS,
    _RESERVED_NAMES,
    GRAPH_FUNCTIONS,
    MODULE_TYPES,
    TENSOR_ATTRS,
    TENSOR_METHODS,
    StructureError,
    dotted_path,
    identifier,
)
from netshrink.quant.codeaudit import check_generated_code
from netshrink.quant.layers import QUANT_LAYERS
from netshrink.quant.observers import OBSERVERS
from netshrink.quant.quant_add import QuantAdd
from netshrink.quant.quantizers import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

_QUANT_TYPES = {cls.__name__: cls for cls in QUANT_LAYERS}

#: Bounds on what a stored graph may hold (real CNNs have hundreds of nodes).
MAX_NODES = 100_000
MAX_VALUE_DEPTH = 16  # nesting of one argument value (tuples in tuples ...)
MAX_INT = 2**62  # larger integers are not sizes, dims or counts of any real model
MAX_CONSTRUCTOR_INT = 2**31  # channel counts, kernel sizes, ... of a module


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, (*QUANT_LAYERS, HasCodebookForm, QuantAdd))
                or super().is_leaf_module(m, module_qualified_name))


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


def decode_value(v: Any, nodes: dict[str, fx.Node] | None = None, depth: int = 0) -> Any:
    """Inverse of ``encode_value``; ``nodes`` maps node names for graph arguments. Every tag and
    field is type-checked; anything else is a ``StructureError``."""
    if depth > MAX_VALUE_DEPTH:
        raise StructureError(f"a value nests deeper than {MAX_VALUE_DEPTH} levels")
    if v is None or isinstance(v, (bool, str, float)):
        return v
    if isinstance(v, int):
        if abs(v) > MAX_INT:
            raise StructureError(f"integer {v} is out of range (|v| <= 2**62)")
        return v
    if isinstance(v, list):
        return [decode_value(x, nodes, depth + 1) for x in v]
    if not isinstance(v, dict) or len(v) != 1:
        raise StructureError(f"a value must be a JSON scalar, list or one-key tagged object, "
                             f"got {type(v).__name__} {_short(v)}")
    ((tag, x),) = v.items()
    if tag == "node":
        if nodes is None or not isinstance(x, str) or x not in nodes:
            raise StructureError(f"graph argument refers to unknown node {_short(x)}")
        return nodes[x]
    if tag == "float" and x in ("nan", "inf", "-inf"):
        return float(x)
    if tag == "ellipsis" and x is True:
        return Ellipsis
    if tag in ("dtype", "memory_format"):
        table = _DTYPES if tag == "dtype" else _MEMORY_FORMATS
        if not isinstance(x, str) or x not in table:
            raise StructureError(f"unknown torch {tag} {_short(x)}; known: {', '.join(table)}")
        return table[x]
    if tag == "device":
        if not isinstance(x, str) or not re.fullmatch(r"(cpu|cuda|mps|meta)(:[0-9]{1,4})?", x):
            raise StructureError(f"unknown device {_short(x)}")
        return torch.device(x)
    if not isinstance(x, list):
        raise StructureError(f"value tag {_short(tag)} needs a list, got {_short(x)}")
    items = [decode_value(y, nodes, depth + 1) for y in x] if tag != "dict" else None
    if tag == "size" and all(isinstance(y, int) and not isinstance(y, bool) and y >= 0
                             for y in x):
        return torch.Size(items)
    if tag == "tuple":
        return tuple(items)
    if tag == "slice" and len(x) == 3 and all(_index_part(y) for y in items):
        return slice(*items)
    if tag == "dict":
        out = {}
        for pair in x:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int))):
                raise StructureError(f"a dict entry must be [str or int key, value], got "
                                     f"{_short(pair)}")
            out[pair[0]] = decode_value(pair[1], nodes, depth + 1)
        return out
    raise StructureError(f"unknown or malformed value tag {_short(tag)}: {_short(x)}")


def _index_part(v: Any) -> bool:
    return v is None or isinstance(v, fx.Node) or (isinstance(v, int) and not isinstance(v, bool))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


# functions ---------------------------------------------------------------------------------
def function_name(fn: Any) -> str:
    """The name ``GRAPH_FUNCTIONS`` records ``fn`` under (StructureError if it is not there)."""
    name = _FUNCTION_NAMES.get(id(fn))
    if name is None or GRAPH_FUNCTIONS[name] is not fn:
        label = getattr(fn, "__qualname__", None) or repr(fn)
        module = getattr(fn, "__module__", None)
        raise StructureError(
            f"function {module + '.' if module else ''}{label} is not in the allow-list of "
            "functions a packed model may call (netshrink.quant.structure.GRAPH_FUNCTIONS: "
            "torch / torch.nn.functional / operator functions traced CNNs use); wrap that code "
            "in a torch.nn module or express it with allowed functions")
    return name


def resolve_function(name: Any) -> Callable[..., Any]:
    """Inverse of ``function_name``: only ``GRAPH_FUNCTIONS`` is ever looked in."""
    if not isinstance(name, str) or name not in GRAPH_FUNCTIONS:
        raise StructureError(f"function {_short(name)} is not allowed: a packed model may call "
                             "only the functions in netshrink.quant.structure.GRAPH_FUNCTIONS")
    return GRAPH_FUNCTIONS[name]


# graphs ------------------------------------------------------------------------------------
def graph_to_json(graph: fx.Graph) -> list[list[Any]]:
    """``[op, name, target, args, kwargs]`` per node, in order. The records are read back with
    ``graph_from_json`` at once, so anything a load would refuse is refused here."""
    out = []
    for node in graph.nodes:
        target = function_name(node.target) if node.op == "call_function" else node.target
        out.append([node.op, node.name, target, encode_value(tuple(node.args)),
                    encode_value(dict(node.kwargs))])
    check_generated_code(graph_from_json(out))
    return out


def graph_from_json(records: Any) -> fx.Graph:
    """An ``fx.Graph`` from ``graph_to_json``'s records, every field checked first."""
    if not isinstance(records, list) or not 0 < len(records) <= MAX_NODES:
        raise StructureError(f"the graph must be a list of 1..{MAX_NODES} node records")
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for i, record in enumerate(records):
        if not isinstance(record, list) or len(record) != 5:
            raise StructureError(f"graph record {i} is not [op, name, target, args, kwargs]: "
                                 f"{_short(record)}")
        op, name, target, args, kwargs = record
        if op not in _GRAPH_OPS:
            raise StructureError(f"unknown graph op {_short(op)}; known: {', '.join(_GRAPH_OPS)}")
        name = identifier(name, "node name")
        if name in nodes or name in _RESERVED_NAMES:
            raise StructureError(f"node name {name!r} is used twice or is reserved "
                                 f"({', '.join(sorted(_RESERVED_NAMES))})")
        args, kwargs = decode_value(args, nodes), decode_value(kwargs, nodes)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise StructureError(f"node {name!r}: args must be a tuple and kwargs a dict")
        for key in kwargs:
            if identifier(key, f"node {name!r}: keyword") == "out":
                raise StructureError(f"node {name!r}: the keyword 'out' is not allowed")
        if op == "output":
            if len(args) != 1 or kwargs or i != len(records) - 1:
                raise StructureError("the graph must end in exactly one output with one value")
            nodes[name] = graph.output(args[0])
            continue
        target = _node_target(op, name, target, args, kwargs)
        nodes[name] = graph.create_node(op, target, args, kwargs, name=name)
    if records[-1][0] != "output":
        raise StructureError("the graph does not end in an output node")
    try:
        graph.lint()
    except Exception as err:  # fx raises RuntimeError for inconsistent graphs
        raise StructureError(f"inconsistent graph: {err}") from err
    return graph


def _node_target(op: str, name: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """The checked target of a non-output node (only allow-listed or validated names)."""
    if op == "placeholder":
        if len(args) > 1 or kwargs or identifier(target, "placeholder") in _RESERVED_NAMES:
            raise StructureError(f"placeholder {name!r} ({target!r}) must be an unreserved "
                                 "name with at most a constant default")
        _no_nodes(args, name)
        return target
    if op in ("get_attr", "call_module"):
        if op == "get_attr" and (args or kwargs):
            raise StructureError(f"node {name!r}: get_attr takes no arguments")
        return dotted_path(target, f"node {name!r}: {op} target")
    if op == "call_method":
        if not isinstance(target, str) or target not in TENSOR_METHODS or not args:
            raise StructureError(f"node {name!r}: private or invalid method {_short(target)}; "
                                 f"allowed: {', '.join(sorted(TENSOR_METHODS))}")
        return next(m for m in TENSOR_METHODS if m == target)  # our string, not the file's
    fn = resolve_function(target)
    if fn is builtins.getattr and not (len(args) == 2 and not kwargs
                                       and isinstance(args[1], str)
                                       and args[1] in TENSOR_ATTRS):
        raise StructureError(f"node {name!r}: getattr of a private attribute or one not in "
                             f"{', '.join(sorted(TENSOR_ATTRS))}, got {_short(args[1:])}")
    if fn is operator.getitem and not (len(args) == 2 and not kwargs and _index(args[1])):
        raise StructureError(f"node {name!r}: getitem needs an int, slice, None, Ellipsis or "
                             f"node index (or a tuple of those), got {_short(args[1:])}")
    return fn


def _index(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(_index(x) and not isinstance(x, tuple) for x in v)
    return _index_part(v) or isinstance(v, slice) or v is Ellipsis


def _no_nodes(args: tuple, name: str) -> None:
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    if found:
        raise StructureError(f"placeholder {name!r}: a default value cannot refer to nodes")


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
    """A JSON record from which ``module_from_spec`` rebuilds ``m`` (without its tensors);
    rebuilt here at once, so a record a load would refuse is refused at save time."""
    if isinstance(m, QUANT_LAYERS):
        spec = {"type": "quant." + m.deploy_type.__name__,
                "args": {k: encode_value(v) for k, v in m.deploy_args().items()},
                **m.quant_spec()}
        module_from_spec(spec)
    elif isinstance(m, QuantAdd):  # a quantized residual add (netshrink.quant.quant_add)
        spec = {"type": "quant.QuantAdd", "args": m.spec()}
        _check_rebuilt(m, module_from_spec(spec))
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


def _constructor_params(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind == p.VAR_KEYWORD and p.name == "observer_options" for p in params):
        for observer in OBSERVERS:  # AffineAct passes these on to its observer
            names |= _constructor_params(OBSERVERS.get(observer))
    return names - {"self", "device", "dtype", "shape"}


def _scalar_args(args: Any, allowed: set[str], what: str, *, sequences: bool) -> dict[str, Any]:
    """Keyword arguments for a constructor: known names, scalar (or int-sequence) values."""
    if not isinstance(args, dict):
        raise StructureError(f"{what}: arguments must be a JSON object, got {_short(args)}")
    out = {}
    for key, raw in args.items():
        if key not in allowed:
            raise StructureError(f"{what}: unknown argument {_short(key)}; known: "
                                 f"{', '.join(sorted(allowed))}")
        value = decode_value(raw)
        items = value if isinstance(value, (tuple, list)) and sequences else (value,)
        for x in items:
            if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_CONSTRUCTOR_INT:
                raise StructureError(f"{what}: argument {key!r} = {x} is out of range")
            if not (x is None or isinstance(x, (bool, int, float, str))):
                raise StructureError(f"{what}: argument {key!r} must be a scalar"
                                     f"{' or a list of scalars' if sequences else ''}, got "
                                     f"{_short(value)}")
        out[key] = value
    return out


def _quantizer(spec: Any, registry: Any, what: str) -> nn.Module | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("kind") not in registry:
        raise StructureError(f"{what} must be null or a record with a known 'kind' "
                             f"({', '.join(registry)}), got {_short(spec)}")
    cls = registry.get(spec["kind"])
    options = {k: v for k, v in spec.items() if k != "kind"}
    return cls(**_scalar_args(options, _constructor_params(cls), what, sequences=False))


def weight_quantizer_from_record(spec: dict[str, Any]) -> nn.Module | None:
    """The weight quantizer a quantized layer's record names (None for float weights), its
    options checked against the quantizer's constructor (no ``shape``: nothing allocated)."""
    return _quantizer(spec.get("weight_quant"), WEIGHT_QUANTIZERS,
                      f"{spec.get('type')} weight_quant")


def module_from_spec(spec: Any) -> nn.Module:
    """Rebuild a module from ``module_spec``'s record with every parameter and buffer on the
    meta device (no memory is allocated for them: assign real tensors afterwards)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise StructureError(f"a module record must be an object with a 'type', got "
                             f"{_short(spec)}")
    kind, _, name = spec["type"].partition(".")
    with torch.device("meta"):
        if kind == "nn" and name in MODULE_TYPES and set(spec) <= {"type", "args"}:
            cls = getattr(nn, name)
            args = _scalar_args(spec.get("args", {}), _constructor_params(cls), spec["type"],
                                sequences=True)
            return cls(**args)
        if kind == "quant" and name == "QuantAdd" and set(spec) <= {"type", "args"}:
            return QuantAdd(**_scalar_args(spec.get("args", {}), _constructor_params(QuantAdd),
                                           spec["type"], sequences=False))
        if kind == "quant" and name in _QUANT_TYPES and set(spec) <= {
                "type", "args", "weight_quant", "input_quant", "folded"}:
            cls = _QUANT_TYPES[name]
            base = _torch_base(cls)
            args = _scalar_args(spec.get("args", {}), _constructor_params(base), spec["type"],
                                sequences=True)
            folded = spec.get("folded", False)
            if not isinstance(folded, bool):
                raise StructureError(f"{spec['type']}: 'folded' must be true or false")
            weight_quantizer_from_record(spec)  # checked here, installed by the caller
            layer = cls(**args, device="meta",
                        input_quant=_quantizer(spec.get("input_quant"), ACT_QUANTIZERS,
                                               f"{spec['type']} input_quant"))
            if folded:
                layer.out_scale = torch.empty(layer.num_out_channels, device="meta")
            return layer
    raise StructureError(f"unknown module record {_short(spec)}; known types: nn.<one of "
                         f"netshrink.quant.structure.MODULE_TYPES> or "
                         f"quant.{{{', '.join(sorted(_QUANT_TYPES))}}}")
