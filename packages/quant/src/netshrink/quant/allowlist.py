"""What a packed file's structure may name: the explicit allow-lists of graph functions,
tensor methods and attributes, ``torch.nn`` leaf module types, dtypes and memory formats, and
the checks of stored names (plain identifiers, dotted module paths).

Packed files come from strangers and ``torch.fx`` turns their graph into Python source, so
nothing is resolved by looking a name up in a module: a name is either on these lists or the
file is refused (``StructureError``). See ``netshrink.quant.structure`` for how they are used.
"""

from __future__ import annotations

import builtins
import keyword
import operator
import re
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F


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
