"""A model's structure as JSON, without pickle: a torch.fx graph plus one record per module.

``trace`` runs ``torch.fx`` with ``torch.nn`` modules and netshrink.quant layers as leaves
(everything else, e.g. a ResNet block or a channel shuffle, is traced through into plain
tensor operations). ``graph_to_json`` / ``graph_from_json`` turn the graph into lists of
JSON values and back; ``module_spec`` / ``module_from_spec`` record a leaf module's constructor
arguments; a rebuilt module is checked against the original, so anything that cannot be rebuilt
exactly is an error at save time, not a surprise at load time.

Packed files come from strangers, and ``torch.fx.GraphModule`` turns a graph into Python source
and executes it, so reading never trusts the file (issue 11):

* every callable comes from an explicit allow-list: ``GRAPH_FUNCTIONS`` (functions traced CNNs
  use: nothing that reaches attributes, calls arbitrary objects, imports, or touches files),
  ``TENSOR_METHODS`` and ``TENSOR_ATTRS`` (``call_method`` targets and ``getattr`` names),
  ``MODULE_TYPES`` (``torch.nn`` leaf classes); saving a model that uses anything else is a
  ``StructureError`` naming it, so a save never writes a file that cannot be loaded;
* every name (node names, placeholders, module and attribute paths, keyword names) must be a
  plain ASCII identifier (module path parts may also be indices, as in ``Sequential``, or hold
  ``-``), not a keyword and not a dunder; every field's type is checked;
* ``check_generated_code`` parses (never runs) the source fx generates and accepts only the
  shapes of code fx writes for such graphs, so a hole in the checks above still cannot reach
  ``exec``;
* modules are built on the meta device (no memory for their parameters until the file's own
  tensors are assigned).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import keyword
import math
import operator
import re
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from netshrink.quant.layers import QUANT_LAYERS
from netshrink.quant.observers import OBSERVERS
from netshrink.quant.quantizers import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

_QUANT_TYPES = {cls.__name__: cls for cls in QUANT_LAYERS}

#: Bounds on what a stored graph may hold (real CNNs have hundreds of nodes).
MAX_NODES = 100_000
MAX_VALUE_DEPTH = 16  # nesting of one argument value (tuples in tuples ...)
MAX_INT = 2**62  # larger integers are not sizes, dims or counts of any real model
MAX_CONSTRUCTOR_INT = 2**31  # channel counts, kernel sizes, ... of a module


class StructureError(ValueError):
    """A model part that cannot be written as (or read back from) JSON."""


# allow-lists ------------------------------------------------------------------------------
def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _allow(module: Any, prefix: str, names: str) -> dict[str, Callable[..., Any]]:
    return {f"{prefix}.{name}": getattr(module, name) for name in _words(names)}


#: Every function a stored graph may call, by the name files record. Derived from what
#: ``trace`` gives for netshrink.models (nin, nin_gc, mobilenet_student, resnet18_cifar) and
#: torchvision's resnet, resnext, wide_resnet, mobilenet_v2/v3, shufflenet_v2, squeezenet,
#: vgg, alexnet, densenet, mnasnet, googlenet, inception_v3 and convnext (LayerNorm,
#: permute), plus the elementwise and shape operations such models commonly add. Deliberately
#: absent: ``operator.attrgetter/methodcaller/call``, ``builtins`` other than ``getattr``
#: (checked against ``TENSOR_ATTRS``), anything that imports, loads, saves or allocates a
#: size of its own choosing (``torch.zeros``, ``torch.empty``, ...).
GRAPH_FUNCTIONS: MappingProxyType[str, Callable[..., Any]] = MappingProxyType({
    **_allow(torch, "torch",
             "flatten cat stack add sub mul div matmul transpose permute reshape chunk split "
             "squeeze unsqueeze mean sum amax relu sigmoid tanh clamp abs neg exp sqrt rsqrt "
             "softmax log_softmax addcmul narrow roll channel_shuffle pixel_shuffle "
             "pixel_unshuffle sign floor_divide maximum minimum max_pool2d"),
    **_allow(F, "torch.nn.functional",
             "relu relu6 leaky_relu gelu silu mish hardswish hardsigmoid hardtanh elu selu "
             "sigmoid tanh softmax log_softmax softplus dropout adaptive_avg_pool2d "
             "adaptive_max_pool2d avg_pool2d max_pool2d layer_norm group_norm batch_norm "
             "interpolate pad linear conv2d normalize pixel_shuffle channel_shuffle"),
    **_allow(operator, "operator",
             "add sub mul truediv floordiv mod neg pos pow matmul getitem"),
    "builtins.getattr": builtins.getattr,
})
_FUNCTION_NAMES: dict[int, str] = {}
for _name, _fn in GRAPH_FUNCTIONS.items():  # the first name of an object is the one stored
    _FUNCTION_NAMES.setdefault(id(_fn), _name)

#: Tensor methods a ``call_method`` node may call (shape, reduction and elementwise methods;
#: no in-place methods, no allocation of a chosen size, nothing that leaves the tensor).
TENSOR_METHODS = frozenset(_words(
    "view view_as reshape reshape_as size dim flatten unflatten mean sum amax chunk split "
    "contiguous transpose permute squeeze unsqueeze expand expand_as narrow flip t relu "
    "sigmoid tanh clamp abs neg add sub mul div matmul softmax log_softmax sign float"))
#: Attributes ``builtins.getattr`` nodes may read (``x.shape`` in a forward).
TENSOR_ATTRS = frozenset({"shape", "dtype", "device", "ndim"})
#: ``torch.nn`` classes a packed file may rebuild as leaf modules.
MODULE_TYPES = frozenset(_words(
    "Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d Linear Identity "
    "BatchNorm1d BatchNorm2d BatchNorm3d LayerNorm GroupNorm InstanceNorm1d InstanceNorm2d "
    "LocalResponseNorm ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Hardswish "
    "Hardsigmoid Hardtanh Sigmoid Tanh Softmax LogSoftmax Softplus Threshold Flatten Unflatten "
    "Dropout Dropout1d Dropout2d AlphaDropout MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d "
    "AvgPool3d AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d "
    "AdaptiveMaxPool2d Upsample UpsamplingNearest2d UpsamplingBilinear2d PixelShuffle "
    "PixelUnshuffle ChannelShuffle ZeroPad2d ConstantPad2d ReflectionPad2d "
    "ReplicationPad2d"))
_DTYPES = {name: getattr(torch, name) for name in _words(
    "float32 float64 float16 bfloat16 uint8 int8 int16 int32 int64 bool complex64 "
    "complex128")}
_MEMORY_FORMATS = {name: getattr(torch, name) for name in _words(
    "contiguous_format channels_last channels_last_3d preserve_format")}
#: Names the generated forward uses itself: no node may take them.
_RESERVED_NAMES = frozenset({"self", "torch", "getattr", "inf", "nan", "device", "slice",
                             "Ellipsis", "NoneType", "fx_pytree", "pytree"})
_GRAPH_OPS = ("placeholder", "get_attr", "call_module", "call_method", "call_function",
              "output")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: A module path part: an identifier, an index ("0"), or a name such as regnet's "block1-0"
#: (fx writes non-identifiers as ``getattr(self, "...")``: no quote or backslash may appear).
_PATH_PART = re.compile(r"[A-Za-z0-9_-]+\Z")


def identifier(value: Any, what: str) -> str:
    """``value`` if it is a plain ASCII identifier, not a keyword, not starting with ``__``."""
    if (not isinstance(value, str) or not _IDENTIFIER.match(value) or keyword.iskeyword(value)
            or value.startswith("__")):
        raise StructureError(f"{what} {value!r} is not a plain identifier (letters, digits, "
                             "'_'; not a keyword; no leading '__')")
    return value


def dotted_path(value: Any, what: str) -> str:
    """``value`` if it is a dotted path of identifiers, indices or ``-``-joined names
    (``layer1.0.conv``, ``block1-0``)."""
    if not isinstance(value, str) or not value or len(value) > 1000 or not all(
            _PATH_PART.match(part) and not keyword.iskeyword(part)
            and not part.startswith("__") for part in value.split(".")):
        raise StructureError(f"{what} {value!r} is not a dotted path of names made of "
                             "letters, digits, '_' and '-' (no keywords, no leading '__')")
    return value


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


# the generated source ----------------------------------------------------------------------
_CODE_NODES = (ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Assign, ast.Return,
               ast.Pass, ast.Name, ast.Attribute, ast.Call, ast.keyword, ast.Constant,
               ast.Tuple, ast.List, ast.Dict, ast.Subscript, ast.Slice, ast.BinOp,
               ast.UnaryOp, ast.Load, ast.Store, ast.operator, ast.unaryop)
_CODE_GLOBALS = _RESERVED_NAMES - {"self", "NoneType", "fx_pytree", "pytree"}
_TORCH_NAMES = frozenset(
    {name for name, fn in GRAPH_FUNCTIONS.items() if name.startswith("torch.")}
    | {f"torch.{name}" for name in (*_DTYPES, *_MEMORY_FORMATS, "Size")})


def check_generated_code(graph: fx.Graph) -> None:
    """Parse (never run) the forward fx generates for ``graph`` and accept only what fx writes
    for allowed graphs: one ``forward(self, ...)`` of assignments and a return, whose names are
    its arguments, its locals and a few fx globals, whose calls are ``self`` submodules,
    allowed tensor methods and ``GRAPH_FUNCTIONS``, and with no dunder anywhere. Raises
    ``StructureError`` otherwise (before ``GraphModule`` executes the source)."""
    try:
        code = graph.python_code(root_module="self")
        tree = ast.parse(code.src)
    except Exception as err:  # SyntaxError, or fx refusing the graph
        raise StructureError(f"the graph does not give valid Python: {err}") from err
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(tree.body) != 1 or len(funcs) != 1 or funcs[0].name != "forward":
        raise StructureError("generated code is not one forward function")
    fn = funcs[0]
    a = fn.args
    if (fn.decorator_list or a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs
            or not a.args or a.args[0].arg != "self"
            or any(x.annotation is not None for x in a.args) or fn.returns is not None):
        raise StructureError("generated forward has an unexpected signature")
    local = {x.arg for x in a.args[1:]} | {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign)
                                          for t in n.targets if isinstance(t, ast.Name)}
    if local & _RESERVED_NAMES:
        raise StructureError(f"generated code rebinds {sorted(local & _RESERVED_NAMES)}")
    local.add("self")
    parents = {child: n for n in ast.walk(tree) for child in ast.iter_child_nodes(n)}
    for n in ast.walk(fn):
        _check_code_node(n, parents, local)


def _check_code_node(n: ast.AST, parents: dict[ast.AST, ast.AST], local: set[str]) -> None:
    if not isinstance(n, _CODE_NODES):
        raise StructureError(f"generated code contains a {type(n).__name__}")
    if isinstance(n, ast.Assign) and not all(isinstance(t, ast.Name) for t in n.targets):
        raise StructureError("generated code assigns to something other than a local name")
    if isinstance(n, ast.Name):
        if n.id.startswith("__") or (isinstance(n.ctx, ast.Load) and n.id not in local
                                     and n.id not in _CODE_GLOBALS):
            raise StructureError(f"generated code uses the name {n.id!r}")
    elif isinstance(n, ast.keyword):
        if n.arg is None or n.arg.startswith("__"):
            raise StructureError("generated code passes **kwargs or a dunder keyword")
    elif isinstance(n, ast.Attribute):
        if n.attr.startswith("__"):
            raise StructureError(f"generated code reads the attribute {n.attr!r}")
        if not isinstance(parents.get(n), ast.Attribute):  # the whole chain, once
            _check_chain(n)
    elif isinstance(n, ast.Call):
        _check_call(n)


def _chain(n: ast.AST) -> tuple[ast.AST, list[str]]:
    """Root and attribute names of ``root.a.b`` (``getattr(x, "0")`` counts as ``.0``)."""
    parts: list[str] = []
    while True:
        if isinstance(n, ast.Attribute):
            parts.append(n.attr)
            n = n.value
        elif _is_getattr_call(n):
            parts.append(n.args[1].value)
            n = n.args[0]
        else:
            return n, parts[::-1]


def _is_getattr_call(n: ast.AST) -> bool:
    return (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"
            and len(n.args) == 2 and not n.keywords and isinstance(n.args[1], ast.Constant)
            and isinstance(n.args[1].value, str))


def _check_chain(n: ast.AST) -> None:
    """``self.<module path>``, ``torch.<allowed name>`` or ``<local>.<allowed method/attr>``."""
    root, parts = _chain(n)
    if not isinstance(root, ast.Name):
        raise StructureError("generated code reads an attribute of an expression")
    if root.id == "self":
        if any(p.startswith("__") or not _PATH_PART.match(p) for p in parts):
            raise StructureError(f"generated code reads self.{'.'.join(parts)}")
    elif root.id == "torch":
        if ".".join(["torch", *parts]) not in _TORCH_NAMES:
            raise StructureError(f"generated code uses torch.{'.'.join(parts)}")
    elif len(parts) != 1 or parts[0] not in TENSOR_METHODS | TENSOR_ATTRS:
        raise StructureError(f"generated code reads {root.id}.{'.'.join(parts)}")


def _check_call(n: ast.Call) -> None:
    if isinstance(n.func, ast.Name):
        if n.func.id == "getattr":
            if not _is_getattr_call(n):
                raise StructureError("generated code calls getattr with a computed name")
            _check_chain(n)
        elif n.func.id not in ("device", "slice"):
            raise StructureError(f"generated code calls {n.func.id!r}")
    elif not isinstance(n.func, ast.Attribute) and not _is_getattr_call(n.func):
        raise StructureError("generated code calls the result of an expression")


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
