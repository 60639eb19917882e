"""Channel-label tensors and the op tables that say how each fx op moves channels.

A *label tensor* accompanies every tensor value in the graph: it has the value's number of
dimensions, size 1 along the batch dimension, and along every other dimension either the
value's size or 1 (meaning "constant along this dimension"). Each entry is an integer label
naming the channel the element belongs to. A conv gives its output channels fresh labels; an op
that only moves elements (view, transpose, cat, chunk, ...) is simply executed on the labels, so
channel shuffles, concatenation offsets and flattening into a linear layer come out of the
graph itself, without pattern rules.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# -- label tensor helpers -------------------------------------------------------------------


def compress(lab: torch.Tensor) -> torch.Tensor:
    """Shrink every dimension along which the labels are constant to size 1."""
    for d in range(lab.ndim):
        if lab.shape[d] > 1 and bool((lab == lab.narrow(d, 0, 1)).all()):
            lab = lab.narrow(d, 0, 1)
    return lab.contiguous()


def varying_dims(lab: torch.Tensor) -> list[int]:
    """Dimensions along which the labels change (the channel-carrying ones)."""
    c = compress(lab)
    return [d for d in range(c.ndim) if c.shape[d] > 1]


def expand_to(lab: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Broadcast ``lab`` to ``shape`` (aligning trailing dimensions, as torch broadcasting)."""
    shape = tuple(shape)
    if lab.ndim < len(shape):
        lab = lab.reshape((1,) * (len(shape) - lab.ndim) + tuple(lab.shape))
    return lab.expand(shape)


def along(vec: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    """A label tensor of ``ndim`` dimensions holding ``vec`` along ``dim``, size 1 elsewhere."""
    shape = [1] * ndim
    shape[dim] = vec.numel()
    return vec.reshape(shape)


def channel_vector(lab: torch.Tensor, size: int, dim: int) -> torch.Tensor | None:
    """The label of each index along ``dim`` if the labels depend on that index only, else
    None (e.g. after a reshape mixed channels into spatial positions)."""
    c = compress(lab)
    if c.ndim == 0:
        return None
    if any(c.shape[d] > 1 for d in range(c.ndim) if d != dim):
        return None
    vec = c.reshape(-1)
    return vec.expand(size).clone() if vec.numel() == 1 and size > 1 else vec.clone()


def unique_labels(tree: Any) -> set[int]:
    """Every label in a label tree (tensors nested in tuples/lists)."""
    out: set[int] = set()
    for lab in leaves(tree):
        out.update(torch.unique(lab).tolist())
    return out


def leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in leaves(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in leaves(item)]
    return []


def has_tensor(value: Any) -> bool:
    return bool(leaves(value))


def tree_map(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor of a (nested tuple/list) value; non-tensors become None."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return tuple(tree_map(v, fn) for v in value)
    return None


# -- op tables ------------------------------------------------------------------------------
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = (nn.Linear,)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

#: activation modules / functions / methods (0 -> 0 for all but sigmoid-like ones); APoZ and
#: mean-activation criteria measure at their outputs.
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.SiLU, nn.Hardswish,
                      nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.Mish)
ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardtanh, F.silu,
                        F.hardswish, F.gelu, F.elu, F.selu, F.celu, F.mish, torch.relu_,
                        F.relu_}
ACTIVATION_METHODS = {"relu", "relu_"}

#: modules applied element by element: labels pass through.
UNARY_MODULES = ACTIVATION_MODULES + (
    nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout)
#: modules that act on each channel's spatial positions independently.
SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.LPPool2d)

#: functions/methods whose output follows their first tensor argument element by element
#: (other tensor arguments only give a dtype or device).
UNARY_FUNCTIONS = ACTIVATION_FUNCTIONS | {
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardsigmoid, F.softplus, torch.neg,
    operator.neg, operator.pos, torch.abs, operator.abs, torch.exp, torch.log, torch.sqrt,
    torch.rsqrt, torch.square, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
    torch.clone, torch.detach, torch.erf, torch.sin, torch.cos, torch.sign, torch.round,
    torch.floor, torch.ceil, torch.nan_to_num}
UNARY_METHODS = ACTIVATION_METHODS | {
    "sigmoid", "sigmoid_", "tanh", "tanh_", "neg", "abs", "exp", "log", "sqrt", "rsqrt",
    "square", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to",
    "type", "type_as", "cpu", "cuda", "requires_grad_", "sign", "round", "floor", "ceil",
    "exp_", "nan_to_num"}

#: functions/methods combining their tensor arguments element by element (with broadcasting).
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.pow, torch.add, torch.sub, torch.subtract,
    torch.mul, torch.multiply, torch.div, torch.true_divide, torch.where, torch.maximum,
    torch.minimum, torch.pow, torch.clamp, torch.clip, torch.addcmul, torch.addcdiv, torch.lerp}
ELEMENTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "clamp", "clamp_",
    "clip", "clip_", "maximum", "minimum", "where", "masked_fill", "masked_fill_", "lerp",
    "addcmul", "addcdiv"}

#: ops that only rearrange elements without size arguments: executed on the labels.
MOVE_FUNCTIONS = {torch.transpose, torch.permute, torch.movedim, torch.swapaxes, torch.t,
                  torch.squeeze, torch.unsqueeze, torch.flatten, torch.swapdims}
MOVE_METHODS = {"transpose", "permute", "movedim", "swapaxes", "swapdims", "t", "squeeze",
                "unsqueeze", "flatten", "transpose_", "squeeze_", "unsqueeze_"}
#: ops with size arguments (literal sizes are checked against the channel dimensions).
RESHAPE_FUNCTIONS = {torch.reshape, torch.unflatten}
RESHAPE_METHODS = {"view", "reshape", "unflatten", "expand", "view_as", "reshape_as",
                   "expand_as"}

REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.max, torch.min,
                    torch.std, torch.var, torch.prod, torch.logsumexp, torch.argmax,
                    torch.argmin, torch.median, torch.all, torch.any, torch.softmax,
                    F.softmax, torch.log_softmax, F.log_softmax, torch.cumsum}
REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod",
                  "logsumexp", "argmax", "argmin", "median", "all", "any", "softmax",
                  "log_softmax", "cumsum"}
#: ops that keep the tensor's shape (softmax, cumsum): they mix along ``dim`` only.
#: reductions that combine the slices along a dim position by position (``ShapeOps.reduce``)
SLICE_REDUCTIONS = {"sum", "mean", "amax", "amin"}
SHAPE_KEEPING_REDUCTIONS = {"softmax", "log_softmax", "cumsum"}

SPATIAL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                     F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                     F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                     F.adaptive_max_pool3d, F.interpolate, F.upsample, F.lp_pool2d,
                     torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d,
                     torch.adaptive_avg_pool1d}
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
STACK_FUNCTIONS = {torch.stack}
CHUNK_FUNCTIONS = {torch.chunk}
SPLIT_FUNCTIONS = {torch.split}


def op_name(target: Any) -> str:
    """A short name for a call_function / call_method target (for tables and messages)."""
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target))
