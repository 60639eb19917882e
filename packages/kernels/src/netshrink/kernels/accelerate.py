"""Swap binary-input binary / ternary convs of a model for packed-kernel ``BitConv2d``.

``accelerate(model)`` returns a copy (eval mode) in which every ``QuantConv2d`` with a binary
``sign`` input and binary or ternary weights runs on the C++ kernels; every other layer (the
float first and last layers, k-bit layers, BatchNorms, pools) is left as it is.
``load_packed(path, backend=...)`` does the same for a model saved by
``netshrink.quant.save_packed``.
"""

from __future__ import annotations

import copy
import os
from typing import Literal

from torch import nn

from netshrink.kernels._build import kernel_ops, kernels_available
from netshrink.kernels.absorb import absorb_sign_preserving
from netshrink.kernels.layers import BitConv2d, BitLinear, convertible_reason

BACKENDS: tuple[str, ...] = ("bitpacked", "torch", "auto")


def accelerate(model: nn.Module, *, inplace: bool = False, absorb: bool = True) -> nn.Module:
    """``model`` (a copy unless ``inplace``) in eval mode with its binary-input binary /
    ternary convs replaced by ``BitConv2d`` (linear layers by ``BitLinear``); with ``absorb``,
    each also takes over the sign-preserving activations and the max-pool in front of it
    (``absorb_sign_preserving``: bit-identical, fewer float passes; no pool for a linear).
    RuntimeError (naming why) when the kernels are not available."""
    kernel_ops()
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    swaps = [(name, m) for name, m in model.named_modules()
             if name and convertible_reason(m) is None]
    for name, layer in swaps:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, leaf, BitLinear.from_quant_linear(layer) if isinstance(layer, nn.Linear)
                else BitConv2d.from_quant_conv(layer))
    if absorb:
        absorb_sign_preserving(model)
    return model


def bit_layers(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that run on the packed kernels (``BitConv2d``,
    ``BitLinear``)."""
    return [name for name, m in model.named_modules() if isinstance(m, BitConv2d)]


def load_packed(path: str | os.PathLike[str],
                backend: Literal["bitpacked", "torch", "auto"] = "bitpacked") -> nn.Module:
    """``netshrink.quant.load_packed(path)``, then with ``backend="bitpacked"`` its binary /
    ternary layers on the packed kernels (RuntimeError when they are unavailable);
    ``"torch"``: the float path as is; ``"auto"``: the kernels when they are available."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of: "
                         f"{', '.join(BACKENDS)}")
    from netshrink.quant import load_packed as load_float

    model = load_float(path)
    if backend == "torch" or (backend == "auto" and not kernels_available()):
        return model
    return accelerate(model, inplace=True)
