"""The binary-activation fold: a BN whose output only ever reaches sign() is a threshold.

``sign(a * z + b) == sign(z + b / a)`` for ``a > 0``, and ``== sign(-z + b / |a|)`` for
``a < 0``: dividing the BN output by ``|a| > 0`` never changes its sign. So the BN becomes
``y -> sign(a) * y + b / |a|`` on the producing layer's output: a bias shift, plus a negation of
the channel's weight and bias where ``a < 0`` (a FoldsAffine layer gets ``fold_affine(±1,
shift)``, so binary weight codes stay binary). Where ``a == 0`` the BN outputs the constant
``b``, so the channel becomes ``0 * y + b``.

Which ops may sit between the BN and the sign consumer? Those that map two tensors with equal
signs elementwise to two tensors with equal signs: elementwise ``f`` whose output sign depends
only on the input sign (ReLU, clamp/Hardtanh with any bounds, LeakyReLU, Tanh, eval Dropout),
pure data movement (view, flatten, transpose, channel shuffle, concat) and max-pooling (the sign
of a max is the max of the signs). Average pooling, adds and anything else do not qualify.

Between the producing layer and the BN only a max-pool may sit, and only when every BN scale is
``>= 0``: then the per-channel map is non-decreasing and commutes with max; a negative scale
would turn the max into a min.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from netshrink.bnfuse.graph import GraphView
from netshrink.core import applies_sign_to_input

_SIGN_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.Tanh,
    nn.Softsign, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten, nn.Unflatten,
)
_MAX_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_MAX_POOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d,
                       F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
_SIGN_PRESERVING_FUNCTIONS = (
    torch.relu, F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, torch.tanh, torch.clamp,
    torch.clip, torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze,
    torch.unsqueeze, operator.getitem,
)
_SIGN_PRESERVING_METHODS = frozenset({
    "relu", "clamp", "clip", "tanh", "view", "reshape", "flatten", "unflatten", "transpose",
    "permute", "contiguous", "squeeze", "unsqueeze", "expand", "clone",
})
_SHAPE_QUERY_METHODS = frozenset({"size", "dim"})


def is_max_pool(view: GraphView, node: fx.Node) -> bool:
    """A max-pool that returns only values (no indices)."""
    module = view.module(node)
    if module is not None:
        return isinstance(module, _MAX_POOL_MODULES) and not module.return_indices
    return (node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS
            and not node.kwargs.get("return_indices", False))


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_QUERY_METHODS
    return node.op == "call_function" and (
        (node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device"))
        or node.target is len)


def _is_sign_consumer(view: GraphView, node: fx.Node, value: fx.Node) -> bool:
    """``node`` applies sign() to ``value`` and uses ``value`` for nothing else."""
    only_input = node.args[:1] == (value,) and value not in node.args[1:] and not any(
        v is value for v in node.kwargs.values())
    if not only_input:
        return False
    module = view.module(node)
    if module is not None:
        return applies_sign_to_input(module)
    return (node.op == "call_function" and node.target is torch.sign) or (
        node.op == "call_method" and node.target == "sign")


def _preserves_sign(view: GraphView, node: fx.Node, value: fx.Node) -> bool:
    """Equal input signs give equal output signs, with ``value`` as the data input."""
    if node.op == "call_function" and node.target in (torch.cat, torch.concat):
        parts = node.args[0] if node.args else node.kwargs.get("tensors", ())
        return isinstance(parts, (list, tuple)) and value in parts
    if not node.args or node.args[0] is not value:
        return False
    module = view.module(node)
    if module is not None:
        return isinstance(module, _SIGN_PRESERVING_MODULES) or is_max_pool(view, node)
    if node.op == "call_method":
        return node.target in _SIGN_PRESERVING_METHODS
    if node.op == "call_function":
        return node.target in _SIGN_PRESERVING_FUNCTIONS or is_max_pool(view, node)
    return False


def sign_only_reason(view: GraphView, bn_node: fx.Node) -> str | None:
    """None when every use of the BN's output ends in a sign activation through
    sign-preserving ops; otherwise why not."""
    stack, seen, consumers = [bn_node], {bn_node}, 0
    while stack:
        value = stack.pop()
        for user in value.users:
            if _is_shape_query(user):
                continue
            if _is_sign_consumer(view, user, value):
                consumers += 1
            elif _preserves_sign(view, user, value):
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
            else:
                return (f"its output reaches {view.describe(user)}, which is neither a sign "
                        f"activation nor sign-preserving")
    return None if consumers else "no sign activation uses its output"


def threshold_affine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``sign(y * scale + shift) == sign(a * y + b)`` per channel:
    ``scale = sign(a)`` (-1, 0 or 1) and ``shift = b / |a|``, or ``b`` where ``a == 0``."""
    nonzero = a != 0
    scale = torch.where(a > 0, 1.0, torch.where(a < 0, -1.0, 0.0)).to(a.dtype)
    shift = torch.where(nonzero, b / torch.where(nonzero, a.abs(), torch.ones_like(a)), b)
    return scale, shift
