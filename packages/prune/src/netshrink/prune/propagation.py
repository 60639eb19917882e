"""Propagate channel labels through an fx graph, node by node, next to the real values.

``LabelPropagator`` is an fx Interpreter: for every node it computes the value (so sizes read
with ``x.size()`` are real) and the node's label tensor (see ``_labels``). What a channel-moving
op means for pruning is decided in a few hooks that two subclasses fill differently:

* ``analysis.Analysis`` reads the dependencies of the original model: residual adds and
  SE multiplies *merge* labels (the summands' channel i must be pruned together), depthwise
  convs and BatchNorms *tie* output to input, grouped convs, chunks and channel-splitting
  reshapes add *partitions* (blocks that must keep equal channel counts), and every op it does
  not understand *pins* its channels (never pruned), so an unknown op can make pruning
  timid, never wrong. The model's outputs and inputs are pinned too.
* ``planning.Simulation`` replays the graph with the pruned channel counts and checks that
  every consumer receives exactly the kept channels, in an order it can index.
"""

from __future__ import annotations

import builtins
import dataclasses
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import Node, map_arg

from netshrink.prune import _labels as L
from netshrink.prune._shape_ops import ShapeOps, dim_arg, size_spec
from netshrink.prune.pruners import find_pruner

# -- records --------------------------------------------------------------------------------


@dataclasses.dataclass
class ModuleCall:
    """One call of a conv / linear / BatchNorm module and the labels of its channels.

    ``kind``: ``"dense"`` (conv with groups=1 or linear: prunable outputs), ``"grouped"``
    (1 < groups: outputs prunable group-wise), ``"depthwise"`` (groups == in_channels: output
    channel i is input channel i, or with a multiplier m, output i is input i // m), ``"bn"``
    (per-channel, output = input) or ``"fixed"`` (outputs never pruned).
    ``in_vec`` is None when the input's channels could not be read (then they are pinned).
    """

    node: str
    module: str
    kind: str
    in_vec: torch.Tensor | None
    out_vec: torch.Tensor | None
    groups: int = 1


@dataclasses.dataclass
class Partition:
    """Blocks of labels (in channel order) that must all keep the same number of channels."""

    node: str
    why: str
    blocks: list[torch.Tensor]



# -- the interpreter ------------------------------------------------------------------------


class LabelPropagator(ShapeOps, torch.fx.Interpreter):
    """Runs ``gm`` computing each node's value and label tree (``self.labels[node.name]``)."""

    #: simulation replaces parametrised modules by zero tensors of the pruned shape
    dummy_param_modules = False

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.labels: dict[str, Any] = {}
        self.shapes: dict[str, Any] = {}
        self.calls: list[ModuleCall] = []
        self.activations: list[tuple[str, torch.Tensor]] = []
        self.current: Node | None = None

    # hooks filled by the subclasses -----------------------------------------------------
    def new_labels(self, n: Node, count: int, *, pinned: bool) -> torch.Tensor:
        """Labels for ``count`` new channels created by node ``n`` (1-D)."""
        raise NotImplementedError

    def pin(self, *trees: Any) -> None:
        """These labels must never be pruned."""

    def combine_pair(self, n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Element-wise pairing of two equally shaped label tensors; returns output labels."""
        raise NotImplementedError

    def partition(self, n: Node, blocks: list[torch.Tensor], why: str) -> None:
        """Blocks of labels that must keep equal channel counts."""

    def resizable(self, n: Node, lab: torch.Tensor, x: torch.Tensor, dim: int,
                  bounds: list[tuple[int, int]]) -> None:
        """A split / slice of ``x`` along channel dim ``dim`` with literal sizes: its pieces
        are ``x``'s channels ``[start, stop)`` of ``bounds``. By default pinned."""
        self.pin(lab)

    def record_call(self, call: ModuleCall) -> None:
        self.calls.append(call)

    # driver -------------------------------------------------------------------------------
    def run_node(self, n: Node) -> Any:
        self.current = n
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            module = self.module_of(n)
            if self.dummy_param_modules and _is_param_module(module):
                labels, value = self.param_module(n, module, args, simulate=True)
            elif n.op == "call_module" and _is_param_module(module):
                value = getattr(self, n.op)(n.target, args, kwargs)
                labels, _ = self.param_module(n, module, args, simulate=False)
            else:
                value = getattr(self, n.op)(n.target, args, kwargs)
                labels = self.label_node(n, value, args, kwargs)
        self.labels[n.name] = labels
        self.shapes[n.name] = L.tree_map(value, lambda t: tuple(t.shape))
        return value

    def module_of(self, n: Node) -> nn.Module | None:
        return self.module.get_submodule(n.target) if n.op == "call_module" else None

    def arg_labels(self, n: Node) -> tuple[tuple, dict]:
        args = map_arg(n.args, lambda a: self.labels[a.name])
        kwargs = map_arg(n.kwargs, lambda a: self.labels[a.name])
        return args, kwargs

    def fresh_like(self, n: Node, value: Any, *, pinned: bool = True) -> Any:
        """New labels for every tensor of ``value``: along dim 1 (or dim 0 of a 1-D tensor)."""
        def one(t: torch.Tensor) -> torch.Tensor:
            if t.ndim == 0:
                return self.new_labels(n, 1, pinned=pinned).reshape(())
            dim = 1 if t.ndim >= 2 else 0
            return L.along(self.new_labels(n, t.shape[dim], pinned=pinned), t.ndim, dim)
        return L.tree_map(value, one)

    def unknown(self, n: Node, value: Any) -> Any:
        """An op we do not understand: pin its inputs, give its outputs pinned labels."""
        largs, lkwargs = self.arg_labels(n)
        self.pin(largs, lkwargs)
        return self.fresh_like(n, value)

    # dispatch -----------------------------------------------------------------------------
    def label_node(self, n: Node, value: Any, args: tuple, kwargs: dict) -> Any:
        if n.op == "output":
            largs, _ = self.arg_labels(n)
            self.pin(largs)
            return None
        if not L.has_tensor(value):
            return None
        if n.op == "placeholder":
            return self.fresh_like(n, value)
        if n.op == "get_attr":
            return self.get_attr_labels(n, value)
        if n.op == "call_module":
            return self.module_labels(n, self.module_of(n), value, args)
        return self.function_labels(n, value, args, kwargs)

    def get_attr_labels(self, n: Node, value: Any) -> Any:
        """A stored tensor: every element its own pinned label (it cannot be sliced)."""
        def one(t: torch.Tensor) -> torch.Tensor:
            if t.numel() > (1 << 22):
                return self.fresh_like(n, t)
            return self.new_labels(n, t.numel(), pinned=True).reshape(t.shape)
        return L.tree_map(value, one)

    def module_labels(self, n: Node, m: nn.Module, value: Any, args: tuple) -> Any:
        largs, _ = self.arg_labels(n)
        if isinstance(m, L.UNARY_MODULES) and not isinstance(m, nn.PReLU):
            out = largs[0]
            if isinstance(m, L.ACTIVATION_MODULES):
                self.record_activation(n, out, args[0])
            return out
        if isinstance(m, L.SPATIAL_MODULES):
            return self.spatial(n, largs[0], args[0], value)
        if isinstance(m, nn.Flatten):
            return self.reshape(n, largs[0], args[0], value, None)
        if isinstance(m, nn.Unflatten):
            spec = {d: None for d in range(value.ndim)}
            dim = m.dim % args[0].ndim
            for i, size in enumerate(m.unflattened_size):
                spec[dim + i] = size
            return self.reshape(n, largs[0], args[0], value, spec)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            return self.mix_along(n, largs[0], args[0], [m.dim])
        return self.unknown(n, value)

    def param_module(self, n: Node, m: nn.Module, args: tuple,
                     simulate: bool) -> tuple[Any, Any]:
        """A module with a registered pruner (conv, linear, BatchNorm, user-registered types):
        record the call; return (labels, dummy value or None). A per-channel pruner (BatchNorm,
        a channel scale, ...) ties output channel i to input channel i (kind ``"bn"``)."""
        x = args[0]
        lab = self.arg_labels(n)[0][0]
        pruner = find_pruner(type(m))
        if pruner.per_channel and not pruner.prunable(m):  # e.g. a LayerNorm over 2 dims
            self.pin(lab)
            return lab, (x if simulate else None)
        if pruner.per_channel:
            dim = pruner.dim_of(m) % x.ndim
            vec = L.channel_vector(lab, x.shape[dim], dim)
            out = vec
            if vec is None:  # channels unreadable here (e.g. a wrong channel_dim): kept
                self.pin(lab)
                out = self.new_labels(n, x.shape[dim], pinned=True)
            self.record_call(ModuleCall(n.name, n.target, "bn", vec, out))
            return lab, (x if simulate else None)
        if isinstance(m, L.LINEAR_TYPES):
            vec = L.channel_vector(lab, x.shape[-1], x.ndim - 1)
            if vec is None:
                self.pin(lab)
            out = self.new_labels(n, m.out_features, pinned=False)
            self.record_call(ModuleCall(n.name, n.target, "dense", vec, out))
            shape = tuple(x.shape[:-1]) + (out.numel(),)
            return L.along(out, x.ndim, x.ndim - 1), _zeros(simulate, shape, x)
        # convolution
        if self.slides_along_channels(n, m, lab, x):  # ECA: the channel dim passes through
            return lab, _zeros(simulate, tuple(x.shape), x)
        vec = L.channel_vector(lab, x.shape[1], 1)
        groups, c_in, c_out = m.groups, m.in_channels, m.out_channels
        if vec is None:
            self.pin(lab)
        if groups == 1:
            kind, out = "dense", self.new_labels(n, c_out, pinned=False)
        elif groups == c_in == c_out and vec is not None:
            kind, out = "depthwise", vec
        elif groups == c_in > 1 and c_out % c_in == 0 and vec is not None:
            # depthwise with a channel multiplier (FastViT): outputs i*m .. i*m+m-1 are
            # input channel i's, pruned with it
            kind, out = "depthwise", vec.repeat_interleave(c_out // c_in)
        elif groups == c_in or vec is None:
            self.pin(lab)
            kind, out = "fixed", self.new_labels(n, c_out, pinned=True)
        else:
            kind, out = "grouped", self.new_labels(n, c_out, pinned=False)
            self.partition(n, list(vec.chunk(groups)), f"input groups of {n.target}")
            self.partition(n, list(out.chunk(groups)), f"output groups of {n.target}")
        self.record_call(ModuleCall(n.name, n.target, kind, vec, out, groups))
        shape = ((x.shape[0], out.numel()) + tuple(self.reference_shape(n)[2:])
                 if simulate else ())
        return L.along(out, x.ndim, 1), _zeros(simulate, shape, x)

    def slides_along_channels(self, n: Node, m: nn.Module, lab: torch.Tensor,
                              x: torch.Tensor) -> bool:
        """Whether conv ``n`` passes the channels through (``_slides_along_channels``)."""
        return _slides_along_channels(m, lab, x)

    def reference_shape(self, n: Node) -> tuple[int, ...]:
        """The node's output shape in the original model (simulation needs it)."""
        return self.shapes[n.name]

    def record_activation(self, n: Node, lab: torch.Tensor, x: torch.Tensor) -> None:
        if isinstance(x, torch.Tensor) and x.ndim >= 2:
            vec = L.channel_vector(lab, x.shape[1], 1)
            if vec is not None:
                self.activations.append((n.name, vec))

    # functions and methods ----------------------------------------------------------------
    def function_labels(self, n: Node, value: Any, args: tuple, kwargs: dict) -> Any:
        t = n.target
        is_method = n.op == "call_method"
        largs, lkwargs = self.arg_labels(n)
        name = L.op_name(t)

        def among(functions: set, methods: set) -> bool:
            return t in methods if is_method else t in functions

        if t is builtins.getattr:  # x.data, x.T, ...: not followed
            return self.unknown(n, value)
        if t is operator.getitem:
            return self.getitem(n, largs[0], args[0], args[1], value)
        if among(L.UNARY_FUNCTIONS, L.UNARY_METHODS):
            first = next((lab for lab in largs if isinstance(lab, torch.Tensor)), None)
            if first is None:
                return self.unknown(n, value)
            if among(L.ACTIVATION_FUNCTIONS, L.ACTIVATION_METHODS):
                self.record_activation(n, first, args[0])
            return first
        if among(L.ELEMENTWISE_FUNCTIONS, L.ELEMENTWISE_METHODS):
            return self.elementwise(n, list(largs) + list(lkwargs.values()), value)
        if among(L.MOVE_FUNCTIONS, L.MOVE_METHODS):
            return self.move(n, largs[0], args, kwargs, value)
        if among(L.RESHAPE_FUNCTIONS, L.RESHAPE_METHODS):
            return self.reshape(n, largs[0], args[0], value, size_spec(n, name, args))
        if among(L.REDUCE_FUNCTIONS, L.REDUCE_METHODS):
            if len(args) > 1 and isinstance(args[1], torch.Tensor):  # torch.max(a, b)
                return self.elementwise(n, list(largs), value)
            return self.reduce(n, name, largs[0], args, kwargs, value)
        if among(L.SPATIAL_FUNCTIONS, set()):
            return self.spatial(n, largs[0], args[0], value)
        if not is_method and t is F.pad:
            return self.pad(n, largs[0], args, kwargs, value)
        if among(L.CAT_FUNCTIONS, set()) or among(L.STACK_FUNCTIONS, set()):
            return self.cat(n, largs[0], args[0], dim_arg(args, kwargs, 1, 0), value,
                            stack=t in L.STACK_FUNCTIONS)
        if among(L.CHUNK_FUNCTIONS, {"chunk"}) or among(L.SPLIT_FUNCTIONS, {"split"}):
            return self.split(n, largs[0], args, kwargs, value, chunk=name == "chunk")
        if name in ("size", "dim", "numel", "nelement"):
            return None
        return self.unknown(n, value)

    def elementwise(self, n: Node, labs: list[Any], value: torch.Tensor) -> torch.Tensor:
        labs = [lab for lab in labs if isinstance(lab, torch.Tensor)]
        if not labs or not isinstance(value, torch.Tensor):
            return self.unknown(n, value)
        out = labs[0]
        for lab in labs[1:]:
            ndim = max(out.ndim, lab.ndim)
            a = L.expand_to(out, (1,) * (ndim - out.ndim) + tuple(out.shape))
            b = L.expand_to(lab, (1,) * (ndim - lab.ndim) + tuple(lab.shape))
            shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape, strict=True))
            out = self.combine_pair(n, a.expand(shape), b.expand(shape))
        return L.compress(L.expand_to(out, (1,) * (value.ndim - out.ndim) + tuple(out.shape)))


def _zeros(simulate: bool, shape: tuple, like: torch.Tensor) -> torch.Tensor | None:
    return torch.zeros(shape, dtype=like.dtype, device=like.device) if simulate else None


def _slides_along_channels(m: nn.Module, lab: torch.Tensor, x: torch.Tensor) -> bool:
    """A one-channel conv whose input holds the model's channels along one *spatial* dim, kept
    at its size (ECA's ``Conv1d(1, 1, k, padding=k // 2)`` over the pooled channel vector): its
    weights do not depend on the channel count, so the channels pass through and may be pruned.
    Not exact: after pruning, the kernel slides over the kept channels only, so a channel's
    neighbours change. Acceptable as for Torch-Pruning: the 1-D conv is a local smoothing of
    gate logits, learned without any order among channels beyond what training imposed, and
    fine-tuning after pruning adapts it; its weights are kept as they are."""
    if not (isinstance(m, L.CONV_TYPES) and m.groups == m.in_channels == m.out_channels == 1):
        return False
    if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[1] != 1:
        return False
    dims = [d % x.ndim for d in L.varying_dims(lab)]
    if len(dims) != 1 or dims[0] < 2:
        return False
    d = dims[0] - 2
    if m.stride[d] != 1:
        return False
    if m.padding == "same":
        return True
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        return False
    return 2 * m.padding[d] == m.dilation[d] * (m.kernel_size[d] - 1)


def _is_param_module(m: nn.Module | None) -> bool:
    """A module whose channels the analysis records: its type has a registered pruner."""
    return m is not None and find_pruner(type(m)) is not None


def describe_node(gm: torch.fx.GraphModule, n: Node | None) -> str:
    """Where a node is, for messages: ``'name' (Type)`` of its module (a module call, or the
    innermost module whose forward holds the op) and the op."""
    if n is None:
        return "the analysis"
    if n.op == "placeholder":
        return "the model's input"
    if n.op == "output":
        return "the model's output"
    if n.op == "call_module":
        return f"'{n.target}' ({type(gm.get_submodule(n.target)).__name__})"
    if n.op == "get_attr":
        return f"stored tensor '{n.target}'"
    stack = n.meta.get("nn_module_stack") or {}
    op = L.op_name(n.target)
    if stack:
        path, kind = list(stack.values())[-1]
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        return f"'{path}' ({kind.rpartition('.')[2]}): {op}"
    return f"{op} in {type(gm).__name__}.forward"
