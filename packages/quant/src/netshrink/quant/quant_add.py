"""Quantized residual adds for integer-only int8 (``scheme="int8_affine"``).

Why: in integer-only inference (Jacob et al. 2018) every tensor between two integer ops is
uint8 with its own scale. With only the layers' inputs quantized, a ResNet block's
``conv2 -> BN -> (+ shortcut) -> ReLU`` stays float: conv2's output has no scale (it feeds a
float add, not a quantizer), so a runtime cannot run conv2 (nor the shortcut's 1x1 conv) as an
integer conv, and the add itself is float (in ONNX Runtime: 8 of 19 quantized convs of
resnet18_cifar fused into QLinearConv, int8 slower than float).

``quantize_adds_(model, estimator)`` (called by ``quantize_`` for the schemes in
``QUANT_ADD_SCHEMES``) replaces every add of two tensors in a submodule's own ``forward``
(``a + b``, ``a += b``, ``torch.add(a, b)``) by a ``QuantAdd`` module, which fake-quantizes
each operand and the sum with affine uint8 activation quantizers (``AffineAct``, moving-average
observers updated in QAT like the layers' own input quantizers, frozen with them by
``freeze_observers_``; never re-calibrated at export). A ReLU that is the add's only user
(module called once, or ``relu`` function) moves inside: ``QuantAdd(relu=True)`` quantizes
``relu(a + b)``, so the exported graph is ``DQ, DQ -> Add -> Relu -> Q`` (ONNX Runtime drops
a ReLU before a zero-point-0 Q and runs ``QLinearAdd``).

Then, on the whole model's fx graph, quantizers that would quantize an already quantized value
twice are dropped: an operand that is another ``QuantAdd``'s output (the identity shortcut of
the next block) and the input quantizer of a quantized layer that reads a ``QuantAdd``'s
output directly (the next block's first conv and shortcut conv). Their input is then exactly
the add's uint8 grid, so in the exported graph the conv starts from the add's DQ; each such
layer is linked to the add's output quantizer (``link_input_grids``), whose scale its int8 bias
is rounded with (``s_in * s_w``, as integer kernels add it).

Submodules are rewritten as ``torch.fx.GraphModule`` s of their own code (children kept as
they are, state-dict keys unchanged but the removed ReLU); the model object itself stays the
same, so an add in the root module's own ``forward`` is left float (logged), as are adds in a
module fx cannot trace. Other schemes are untouched.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
from torch import fx, nn

from netshrink.core import AddForm, check_choice
from netshrink.quant.estimators import ESTIMATORS
from netshrink.quant.layers import QUANT_LAYERS
from netshrink.quant.quantizers import AffineAct

#: ``QuantConfig.scheme`` values whose ``quantize`` also quantizes residual adds.
QUANT_ADD_SCHEMES: frozenset[str] = frozenset({"int8_affine"})
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu)
#: Ops whose result is a Python number or shape, not a tensor (``x.size(0) + 1``).
_SCALAR_METHODS = frozenset({"size", "dim", "numel", "item", "tolist"})
_log = logging.getLogger(__name__)


class QuantAdd(nn.Module):
    """``out_quant(relu?(a_quant(a) + b_quant(b)))``: a residual add on uint8 grids.

    ``a_quant`` / ``b_quant`` are None for an operand that already is quantized (the output of
    another ``QuantAdd``); ``out_quant`` always exists. All are ``AffineAct(bits)``: asymmetric
    per-tensor, moving-average observer, ``estimator`` for the gradient."""

    def __init__(self, bits: int = 8, relu: bool = False, quantize_a: bool = True,
                 quantize_b: bool = True, estimator: str = "saturate_ste") -> None:
        super().__init__()
        for name, value in (("relu", relu), ("quantize_a", quantize_a),
                            ("quantize_b", quantize_b)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False")
        check_choice("estimator", estimator, ESTIMATORS.ordered())
        self.bits = bits
        self.relu = relu
        self.estimator = estimator
        # registered as submodules even when None, as ``_drop_double_quantizers`` leaves them
        self.add_module("a_quant", AffineAct(bits, estimator=estimator) if quantize_a else None)
        self.add_module("b_quant", AffineAct(bits, estimator=estimator) if quantize_b else None)
        self.out_quant = AffineAct(bits, estimator=estimator)

    @property
    def quantize_a(self) -> bool:
        return self.a_quant is not None

    @property
    def quantize_b(self) -> bool:
        return self.b_quant is not None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.a_quant is not None:
            a = self.a_quant(a)
        if self.b_quant is not None:
            b = self.b_quant(b)
        y = a + b
        if self.relu:
            y = torch.relu(y)
        return self.out_quant(y)

    def add_form(self) -> AddForm:
        """The operands' and output's ``ActivationForm`` (ValueError before any range was
        observed: train with QAT first)."""
        forms = [None if q is None else q.activation_form()
                 for q in (self.a_quant, self.b_quant, self.out_quant)]
        return AddForm(forms[0], forms[1], forms[2], relu=self.relu)

    def spec(self) -> dict[str, Any]:
        """The constructor arguments (JSON values) that rebuild this module's structure."""
        return {"bits": self.bits, "relu": self.relu, "quantize_a": self.quantize_a,
                "quantize_b": self.quantize_b, "estimator": self.estimator}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.spec().items())


class _OwnCodeTracer(fx.Tracer):
    """Traces one module's own ``forward``: every child module call is a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


class _QuantLeafTracer(fx.Tracer):
    """Traces the whole model, quantized layers and ``QuantAdd`` s as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, (*QUANT_LAYERS, QuantAdd))
                or super().is_leaf_module(m, module_qualified_name))


def _is_scalar(node: Any) -> bool:
    """Whether an fx value is (derived from) a size or shape rather than a tensor."""
    if not isinstance(node, fx.Node):
        return True
    if node.op == "call_method" and node.target in _SCALAR_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return True
    if node.op == "call_function" and node.target in (*_ADD_FUNCTIONS, operator.getitem,
                                                      operator.mul, operator.sub,
                                                      operator.floordiv):
        return all(_is_scalar(a) for a in node.args)
    return False


def _is_tensor_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS
            and len(node.args) == 2 and not node.kwargs
            and not any(_is_scalar(a) for a in node.args))


def _own_relu(node: fx.Node, module: nn.Module, graph: fx.Graph) -> fx.Node | None:
    """The ReLU that is ``node``'s only user and only consumer of it, else None."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op == "call_function" and user.target in _RELU_FUNCTIONS and \
            user.args == (node,) and not user.kwargs:
        return user
    if user.op == "call_module" and type(module.get_submodule(user.target)) is nn.ReLU and \
            user.args == (node,) and not user.kwargs and \
            sum(n.op == "call_module" and n.target == user.target for n in graph.nodes) == 1:
        return user
    return None


def _free_name(module: nn.Module, base: str) -> str:
    name, i = base, 0
    while hasattr(module, name):
        i += 1
        name = f"{base}_{i}"
    return name


def _rewrite(module: nn.Module, estimator: str) -> fx.GraphModule | None:
    """``module`` as a GraphModule with its tensor adds as ``QuantAdd`` s; None when it has
    none (or fx cannot trace it)."""
    try:
        graph = _OwnCodeTracer().trace(module)
    except Exception as err:  # noqa: BLE001 - any tracing failure: leave its adds float
        _log.info("quantize: %s cannot be traced by torch.fx (%s); its adds stay float",
                  type(module).__name__, err)
        return None
    adds = [n for n in graph.nodes if _is_tensor_add(n)]
    if not adds:
        return None
    for node in adds:
        relu = _own_relu(node, module, graph)
        name = _free_name(module, "quant_add")
        module.add_module(name, QuantAdd(8, relu=relu is not None, estimator=estimator))
        with graph.inserting_after(relu or node):
            new = graph.call_module(name, tuple(node.args))
        (relu or node).replace_all_uses_with(new)
        if relu is not None:
            graph.erase_node(relu)
        graph.erase_node(node)
    graph.lint()
    return fx.GraphModule(module, graph, class_name=type(module).__name__)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_adds_(model: nn.Module, estimator: str = "saturate_ste") -> list[str]:
    """Replace the tensor adds of ``model``'s submodules by ``QuantAdd`` s and drop the
    quantizers that would quantize their outputs twice (see the module docstring); returns
    the new ``QuantAdd`` s' names. ``model`` is changed in place."""
    if _rewrite_check_root(model):
        _log.info("quantize: %s adds tensors in its own forward; those adds stay float (only "
                  "submodules are rewritten)", type(model).__name__)
    for name, module in list(model.named_modules()):
        # containers of user code only: never torch's own modules nor netshrink.quant's
        # (quantized layers, quantizers, observers: tracing them would touch their state)
        if not name or not any(True for _ in module.children()) or \
                type(module).__module__.startswith(("torch.", "netshrink.quant.")):
            continue
        new = _rewrite(module, estimator)
        if new is not None:
            _set_submodule(model, name, new)
    names = [n for n, m in model.named_modules() if isinstance(m, QuantAdd)]
    if names:
        _drop_double_quantizers(model)
    return names


def _rewrite_check_root(model: nn.Module) -> bool:
    try:
        graph = _OwnCodeTracer().trace(model)
    except Exception:  # noqa: BLE001 - untraceable: nothing to report
        return False
    return any(_is_tensor_add(n) for n in graph.nodes)


def _drop_double_quantizers(model: nn.Module) -> None:
    """Quantizers whose input is a ``QuantAdd``'s (already quantized) output go."""
    try:
        graph = _QuantLeafTracer().trace(model)
    except Exception as err:  # noqa: BLE001 - keep every quantizer: correct, less fused
        _log.info("quantize: %s cannot be traced by torch.fx as a whole (%s); every QuantAdd "
                  "quantizes both operands", type(model).__name__, err)
        return
    modules = dict(model.named_modules())

    def from_add(arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg.op == "call_module" and \
            isinstance(modules.get(arg.target), QuantAdd)

    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    for target, nodes in calls.items():
        node = nodes[0]
        if len(nodes) != 1 or not node.args:  # a module called twice keeps its quantizers
            continue
        m = modules.get(target)
        if isinstance(m, QuantAdd):
            if from_add(node.args[0]):
                m.a_quant = None
            if len(node.args) > 1 and from_add(node.args[1]):
                m.b_quant = None
        elif isinstance(m, QUANT_LAYERS) and isinstance(m.input_quant, AffineAct) and \
                from_add(node.args[0]) and not node.kwargs:
            m.input_quant = None
    link_input_grids(model, graph)


def link_input_grids(model: nn.Module, graph: fx.Graph | None = None) -> int:
    """Link every quantized layer without an input quantizer that reads a ``QuantAdd``'s
    output (called once, positionally) to that add's output quantizer
    (``link_input_grid``): its int8 bias is then rounded at ``s_in * s_w`` as integer kernels
    add it (``netshrink.quant.quantizers.integer_bias``). ``quantize_adds_`` does it; a model
    rebuilt from a packed file needs it again (``load_packed``). ``graph``: the model traced by
    ``_QuantLeafTracer`` (traced here when None; an untraceable model links nothing).
    Returns how many layers were linked."""
    if graph is None:
        try:
            graph = _QuantLeafTracer().trace(model)
        except Exception:  # noqa: BLE001 - untraceable: its layers keep float biases
            return 0
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    linked = 0
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or not node.args or node.kwargs:
            continue
        m, src = modules.get(node.target), node.args[0]
        if not isinstance(m, QUANT_LAYERS) or m.input_quant is not None or \
                not isinstance(src, fx.Node) or src.op != "call_module":
            continue
        add = modules.get(src.target)
        if isinstance(add, QuantAdd):
            m.link_input_grid(add.out_quant)
            linked += 1
    return linked
