"""Factorising one layer: the matrix each scheme decomposes, its SVD, and the two-layer module.

Three schemes, each a truncated SVD ``M ~ U_r S_r V_r^T`` of a matrix made from the weight, the
singular values split as ``sqrt(S_r)`` into both factors (so neither factor's scale dominates
when it is fine-tuned):

* ``"svd"`` (``nn.Linear``, ``out x in``): ``Linear(in -> r, no bias)`` then
  ``Linear(r -> out, with the bias)``.
* ``"channel"`` (``nn.Conv2d``): the kernel reshaped to ``out x (in*kh*kw)``; a ``kh x kw``
  conv to ``r`` channels (the original stride, padding, dilation and padding mode) then a
  ``1 x 1`` conv to ``out`` (with the bias).
* ``"spatial"`` (``nn.Conv2d``, Jaderberg et al. 2014, scheme 2): the kernel reshaped to
  ``(in*kh) x (out*kw)``; a vertical ``kh x 1`` conv to ``r`` channels (the height's stride,
  padding and dilation) then a horizontal ``1 x kw`` conv to ``out`` (the width's, and the
  bias). Both factors are linear, so at full rank the product is the original conv exactly.

The result is a plain ``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv2d``: it trains, saves,
traces with torch.fx, and prune and quant treat its two layers like any others. Grouped and
depthwise convs are not factorised (each group is already a small matrix).
"""

from __future__ import annotations

import torch
from torch import nn

SCHEMES: tuple[str, ...] = ("svd", "channel", "spatial")

Svd = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_layer(layer: nn.Module, scheme: str) -> None:
    """Raise ValueError unless ``scheme`` can factorise ``layer``."""
    if scheme == "svd":
        if type(layer) is not nn.Linear:
            raise ValueError(f"scheme 'svd' factorises nn.Linear, got {type(layer).__name__}")
        return
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not allowed; choose one of: "
                         + ", ".join(repr(s) for s in SCHEMES))
    if type(layer) is not nn.Conv2d:
        raise ValueError(f"scheme {scheme!r} factorises nn.Conv2d, got {type(layer).__name__}")
    if layer.groups != 1:
        raise ValueError(f"scheme {scheme!r} leaves grouped/depthwise convs alone "
                         f"(groups={layer.groups})")
    kh, kw = layer.kernel_size
    if scheme == "spatial" and (kh < 2 or kw < 2):
        raise ValueError(f"scheme 'spatial' needs a kernel of at least 2 x 2, got {kh} x {kw}")


def matrix_shape(layer: nn.Module, scheme: str) -> tuple[int, int]:
    """Rows and columns of the matrix ``scheme`` decomposes (from shapes only: meta-safe)."""
    check_layer(layer, scheme)
    if scheme == "svd":
        return layer.out_features, layer.in_features
    n, c, kh, kw = layer.weight.shape
    return (n, c * kh * kw) if scheme == "channel" else (c * kh, n * kw)


def max_rank(layer: nn.Module, scheme: str) -> int:
    """The full rank: the smaller side of the decomposed matrix."""
    return min(matrix_shape(layer, scheme))


def layer_matrix(layer: nn.Module, scheme: str) -> torch.Tensor:
    """The matrix ``scheme`` decomposes, in float64."""
    check_layer(layer, scheme)
    w = layer.weight.detach().to(torch.float64)
    if scheme == "svd":
        return w
    n, c, kh, kw = w.shape
    if scheme == "channel":
        return w.reshape(n, c * kh * kw)
    return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)  # M[(c, y), (n, x)] = W[n, c, y, x]


def layer_svd(layer: nn.Module, scheme: str) -> Svd:
    """``(U, S, Vh)`` of the layer's matrix (float64, singular values descending)."""
    return torch.linalg.svd(layer_matrix(layer, scheme), full_matrices=False)


def build_factorised(layer: nn.Module, scheme: str, rank: int) -> nn.Sequential:
    """The two-layer structure replacing ``layer`` at ``rank``, on the layer's device and dtype,
    with freshly initialised weights (``rebuild`` loads a checkpoint's weights into it)."""
    full = max_rank(layer, scheme)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"rank={rank!r} must be an integer in [1, {full}] for this "
                         f"{type(layer).__name__} under scheme {scheme!r}")
    kw_ = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    has_bias = layer.bias is not None
    if scheme == "svd":
        return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False, **kw_),
                             nn.Linear(rank, layer.out_features, bias=has_bias, **kw_))
    c, n = layer.in_channels, layer.out_channels
    if scheme == "channel":
        first = nn.Conv2d(c, rank, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, bias=False,
                          padding_mode=layer.padding_mode, **kw_)
        return nn.Sequential(first, nn.Conv2d(rank, n, 1, bias=has_bias, **kw_))
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    pad = layer.padding
    pad_h, pad_w = (pad, pad) if isinstance(pad, str) else ((pad[0], 0), (0, pad[1]))
    vertical = nn.Conv2d(c, rank, (kh, 1), stride=(sh, 1), padding=pad_h, dilation=(dh, 1),
                         bias=False, padding_mode=layer.padding_mode, **kw_)
    horizontal = nn.Conv2d(rank, n, (1, kw), stride=(1, sw), padding=pad_w, dilation=(1, dw),
                           bias=has_bias, padding_mode=layer.padding_mode, **kw_)
    return nn.Sequential(vertical, horizontal)


@torch.no_grad()
def factorise(layer: nn.Module, scheme: str, rank: int, svd: Svd | None = None) -> nn.Sequential:
    """``layer`` replaced by its rank-``rank`` factorisation (the truncated SVD of its matrix;
    at full rank it computes the same function). ``svd``: a precomputed ``layer_svd``."""
    module = build_factorised(layer, scheme, rank)
    u, s, vh = svd if svd is not None else layer_svd(layer, scheme)
    root = s[:rank].sqrt()
    left = u[:, :rank] * root  # rows x r
    right = root[:, None] * vh[:rank]  # r x cols
    first, second = module[0], module[1]
    dtype = layer.weight.dtype
    if scheme == "svd":
        first.weight.copy_(right.to(dtype))
        second.weight.copy_(left.to(dtype))
    elif scheme == "channel":
        first.weight.copy_(right.reshape(first.weight.shape).to(dtype))
        second.weight.copy_(left.reshape(second.weight.shape).to(dtype))
    else:
        n, _, _, kw = layer.weight.shape
        first.weight.copy_(left.t().reshape(first.weight.shape).to(dtype))
        second.weight.copy_(right.reshape(rank, n, kw).permute(1, 0, 2)
                            .reshape(second.weight.shape).to(dtype))
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    module.train(layer.training)
    return module
