"""An audit of the Python source ``torch.fx`` generates for a stored graph, run before
``GraphModule`` executes it: only the shapes of code fx writes for allowed graphs pass, so a
hole in the structure checks still cannot reach ``exec`` (issue 11)."""

from __future__ import annotations

import ast

import torch.fx as fx

from netshrink.quant.allowlist import (
    _DTYPES,
    _MEMORY_FORMATS,
    _PATH_PART,
    _RESERVED_NAMES,
    GRAPH_FUNCTIONS,
    TENSOR_ATTRS,
    TENSOR_METHODS,
    StructureError,
)

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
