"""Finding fold patterns with torch.fx: which layer a BatchNorm follows or precedes, and whether
folding it there is safe.

Patterns are found on the traced data flow, never from module names or registration order.
The tracer keeps FoldsAffine and sign-input layers (quantized layers), and subclasses of conv,
linear and BatchNorm, as leaves, so each shows up as one ``call_module`` node; it traces
*through* ``nn.Identity``, so a BN already replaced by an Identity leaves no node behind and a BN
that followed it now directly follows the layer.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from netshrink.bnfuse.fold_math import CONV_TYPES, PLAIN_TYPES, TRANSPOSED_TYPES
from netshrink.core import FoldsAffine, applies_sign_to_input


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (FoldsAffine, *PLAIN_TYPES, _BatchNorm)) or applies_sign_to_input(m):
            return True  # subclasses too: a custom-forward conv is reported, not traced into
        if type(m) is nn.Identity:
            return False
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The model's fx graph (leaf rules above); a clear TypeError if it cannot be traced."""
    try:
        return _Tracer().trace(model)
    except Exception as err:  # fx raises many kinds (TraceError, TypeError, ...)
        raise TypeError(f"BatchNorm folding finds patterns with torch.fx, and "
                        f"{type(model).__name__} cannot be traced: {err}") from err


@dataclass
class GraphView:
    """A traced graph plus what the pattern checks need to know about the model."""

    model: nn.Module
    graph: fx.Graph
    calls: Counter[str]
    attr_targets: frozenset[str]
    shared_params: frozenset[int]
    has_shapes: bool

    @classmethod
    def build(cls, model: nn.Module, example_input: torch.Tensor | None = None) -> GraphView:
        graph = trace(model)
        if example_input is not None:
            with torch.no_grad():
                ShapeProp(fx.GraphModule(model, graph)).propagate(example_input)
        calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
        attrs = frozenset(str(n.target) for n in graph.nodes if n.op == "get_attr")
        owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
        shared = frozenset(k for k, v in owners.items() if v > 1)
        return cls(model, graph, calls, attrs, shared, example_input is not None)

    def module(self, node: fx.Node) -> nn.Module | None:
        """The module a ``call_module`` node calls, else None."""
        if node.op != "call_module":
            return None
        return self.model.get_submodule(str(node.target))

    def batchnorm(self, node: fx.Node) -> _BatchNorm | None:
        m = self.module(node)
        return m if isinstance(m, _BatchNorm) else None

    def describe(self, node: fx.Node) -> str:
        """A short human name for a node, for report reasons."""
        if node.op == "placeholder":
            return f"the model input '{node.target}'"
        if node.op == "call_module":
            return f"{node.target} ({type(self.module(node)).__name__})"
        if node.op == "call_method":
            return f".{node.target}()"
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            return {operator.add: "an add", operator.iadd: "an add", torch.add: "an add",
                    torch.cat: "a concat"}.get(node.target, name)
        return f"{node.op} {node.target}"

    def shared_use(self, node: fx.Node) -> str | None:
        """Why the module called at ``node`` is not this node's alone, or None if it is."""
        target = str(node.target)
        if self.calls[target] > 1:
            return f"{target} is called {self.calls[target]} times (shared module)"
        if any(a == target or a.startswith(target + ".") for a in self.attr_targets):
            return f"the forward reads {target}'s tensors directly"
        module = self.model.get_submodule(target)
        if any(id(p) in self.shared_params for p in module.parameters(recurse=False)):
            return f"{target} shares a parameter with another module"
        return None

    def other_users(self, node: fx.Node, user: fx.Node) -> str | None:
        """Why ``node``'s output is not used by ``user`` alone, or None."""
        others = [u for u in node.users if u is not user]
        if not others:
            return None
        names = ", ".join(self.describe(u) for u in others[:3])
        return f"the output of {self.describe(node)} is also used by {names}"


def is_linear_like(layer: nn.Module) -> bool:
    """Features in the last dim (Linear, or a FoldsAffine layer with ``in_features``)."""
    return isinstance(layer, nn.Linear) or hasattr(layer, "in_features")


def plain_layer_problem(layer: nn.Module) -> str | None:
    """Why ``layer``'s weight and bias cannot be rewritten in place, or None if they can."""
    name = type(layer).__name__
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        return f"{name} is not initialised yet (lazy)"
    if parametrize.is_parametrized(layer):
        return f"{name} has parametrizations; its weight is computed, not stored"
    if layer._forward_pre_hooks:
        return f"{name} has forward pre-hooks (weight_norm?) that could change its weight"
    for base in PLAIN_TYPES:
        if isinstance(layer, base):
            standard = type(layer).forward is base.forward
            if isinstance(layer, CONV_TYPES):
                standard = standard and type(layer)._conv_forward is base._conv_forward
            if standard:
                return None
            return (f"{name} subclasses {base.__name__} with its own forward and does not "
                    f"implement FoldsAffine")
    return f"{name} is not a conv, transposed conv or linear layer and not FoldsAffine"


def foldable_layer(view: GraphView, node: fx.Node) -> tuple[nn.Module | None, str | None]:
    """The layer at ``node`` when a BN can be folded into its output, else (None, reason)."""
    layer = view.module(node)
    if layer is None or not (isinstance(layer, (FoldsAffine, *PLAIN_TYPES))):
        return None, f"follows {view.describe(node)}, not a conv or linear layer"
    problem = view.shared_use(node)
    if problem is None and not isinstance(layer, FoldsAffine):
        problem = plain_layer_problem(layer)
    return (None, problem) if problem else (layer, None)


def producer(view: GraphView, bn_node: fx.Node,
             through: Callable[[fx.Node], bool] = lambda n: False,
             ) -> tuple[fx.Node | None, tuple[fx.Node, ...], str | None]:
    """The layer node whose output the BN at ``bn_node`` normalises, the ``through`` nodes
    (e.g. max-pools) between them, and None; or (None, (), reason)."""
    bn = view.batchnorm(bn_node)
    src = bn_node.args[0] if bn_node.args else None
    if not isinstance(src, fx.Node):
        return None, (), "its input is not a traced tensor"
    user, via = bn_node, []
    while through(src):
        if (why := view.other_users(src, user)) is not None:
            return None, (), why
        via.append(src)
        user, src = src, src.args[0]
        if not isinstance(src, fx.Node):
            return None, (), f"the input of {view.describe(user)} is not a traced tensor"
    if src.op == "placeholder":
        return None, (), f"starts the network (its input is {view.describe(src)})"
    layer, why = foldable_layer(view, src)
    if layer is None:
        return None, (), why
    if (why := view.other_users(src, user)) is not None:
        return None, (), why
    if layer._forward_hooks:
        return None, (), f"{src.target} has forward hooks, which would see the folded output"
    channels = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    if channels is not None and channels != bn.num_features:
        return None, (), (f"{src.target} has {channels} output channels but the BN has "
                          f"{bn.num_features}")
    if is_linear_like(layer) and not is_2d(view, src):
        return None, (), (f"cannot tell that {src.target}'s output is 2-D (N, C), where "
                          f"BatchNorm1d's channels are its features; pass example_input")
    return src, tuple(via), None


def zero_pads(conv: nn.Module) -> bool:
    """Whether ``conv`` pads its input with zeros (a BN before it then cannot fold in)."""
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(
            (k - 1) * d for k, d in zip(conv.kernel_size, conv.dilation, strict=True))
    return any(p != 0 for p in conv.padding)


def consumer(view: GraphView, bn_node: fx.Node) -> tuple[fx.Node | None, str | None]:
    """The conv or linear node the BN's output flows into, when the BN folds into that
    layer's input side (no zero padding, the layer's only input). Otherwise (None, reason), or
    (None, None) when the BN does not feed a single conv or linear layer at all."""
    bn = view.batchnorm(bn_node)
    users = list(bn_node.users)
    layer = view.module(users[0]) if len(users) == 1 else None
    if not isinstance(layer, (*CONV_TYPES, nn.Linear)) or isinstance(layer, TRANSPOSED_TYPES):
        return None, None
    (user,) = users
    desc = view.describe(user)
    if isinstance(layer, FoldsAffine) or applies_sign_to_input(layer):
        return None, f"it precedes {desc}, whose input side cannot absorb it"
    if user.args[:1] != (bn_node,) or len(user.args) > 1 or user.kwargs:
        return None, f"it is not the only input of {desc}"
    problem = view.shared_use(user) or plain_layer_problem(layer)
    if problem:
        return None, problem
    if isinstance(layer, nn.Linear):
        if not is_2d(view, bn_node.args[0]):
            return None, f"cannot tell that the input of {desc} is 2-D; pass example_input"
    elif zero_pads(layer):
        return None, (f"it precedes a padded conv {desc} (padding={layer.padding}): the "
                      f"border would see BN(0) = shift instead of 0")
    if layer.weight.shape[1] * getattr(layer, "groups", 1) != bn.num_features:
        return None, f"{desc} does not take the BN's {bn.num_features} channels"
    return user, None


_RANK_KEEPING_MODULES = (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU,
                         nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Dropout)


def is_2d(view: GraphView, node: object, depth: int = 0) -> bool:
    """Whether ``node``'s output is known to be 2-D: from shape propagation when fuse got an
    example input, else from the graph (a flatten from dim 1, then rank-keeping layers)."""
    if not isinstance(node, fx.Node) or depth > 32:
        return False
    if view.has_shapes:
        meta = node.meta.get("tensor_meta")
        return meta is not None and hasattr(meta, "shape") and len(meta.shape) == 2
    module = view.module(node)
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    flat = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten")
    if flat:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        return len(sizes) == 2
    if isinstance(module, (_RANK_KEEPING_MODULES, FoldsAffine)):
        return is_2d(view, node.args[0] if node.args else None, depth + 1)
    return False
