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
* ``"tucker2"`` (``nn.Conv2d``, Kim et al. 2016; a Tucker-2 decomposition by truncated HOSVD):
  ``U_out`` and ``U_in``, the leading left singular vectors of the kernel's mode-0
  (``out x in*kh*kw``) and mode-1 (``in x out*kh*kw``) unfoldings, and the core
  ``G = W x_0 U_out^T x_1 U_in^T``; a ``1 x 1`` conv ``in -> r_in`` (``U_in^T``), a ``kh x kw``
  conv ``r_in -> r_out`` (``G``; the original stride, padding, dilation and padding mode: a
  pointwise map commutes with zero and reflect padding alike) then a ``1 x 1`` conv
  ``r_out -> out`` (``U_out``, with the bias). Its rank is a pair ``(r_in, r_out)``. Truncating
  both modes leaves ``||W - W_r||^2 = d_out + d_in - ||W x_0 (I - P_out) x_1 (I - P_in)||^2``
  with ``d`` the discarded squared singular values of a mode (so between ``max(d_out, d_in)``
  and ``d_out + d_in``, exactly ``d`` of the one mode truncated when the other is full).

The result is a plain ``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv2d``: it trains, saves,
traces with torch.fx, and prune and quant treat its two (three) layers like any others. Grouped and
depthwise convs are not factorised (each group is already a small matrix).
"""

from __future__ import annotations

import torch
from torch import nn

SCHEMES: tuple[str, ...] = ("svd", "channel", "spatial", "tucker2")

Svd = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: a layer's rank: an int, or ``(r_in, r_out)`` for ``tucker2``
Rank = int | tuple[int, int]


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
                         f"(groups={layer.groups}); only groups=1 is factorised")
    kh, kw = layer.kernel_size
    if scheme == "spatial" and (kh < 2 or kw < 2):
        raise ValueError(f"scheme 'spatial' needs a kernel of at least 2 x 2, got {kh} x {kw}")


def matrix_shape(layer: nn.Module, scheme: str) -> tuple[int, int]:
    """Rows and columns of the matrix ``scheme`` decomposes (from shapes only: meta-safe);
    for ``tucker2``, the two mode sizes ``(in, out)`` (its full rank)."""
    check_layer(layer, scheme)
    if scheme == "tucker2":
        return layer.in_channels, layer.out_channels
    if scheme == "svd":
        return layer.out_features, layer.in_features
    n, c, kh, kw = layer.weight.shape
    return (n, c * kh * kw) if scheme == "channel" else (c * kh, n * kw)


def max_rank(layer: nn.Module, scheme: str) -> Rank:
    """The full rank: the smaller side of the decomposed matrix; for ``tucker2`` the pair
    ``(in, out)`` (the unfoldings' ranks are at most these)."""
    if scheme == "tucker2":
        return matrix_shape(layer, scheme)
    return min(matrix_shape(layer, scheme))


def layer_matrix(layer: nn.Module, scheme: str) -> torch.Tensor:
    """The matrix ``scheme`` decomposes, in float64 (``tucker2``: its mode-0 unfolding, as
    ``channel``; ``mode_unfoldings`` gives both)."""
    check_layer(layer, scheme)
    w = layer.weight.detach().to(torch.float64)
    if scheme == "tucker2":
        scheme = "channel"
    if scheme == "svd":
        return w
    n, c, kh, kw = w.shape
    if scheme == "channel":
        return w.reshape(n, c * kh * kw)
    return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)  # M[(c, y), (n, x)] = W[n, c, y, x]


def layer_svd(layer: nn.Module, scheme: str) -> Svd:
    """``(U, S, Vh)`` of the layer's matrix (float64, singular values descending)."""
    return torch.linalg.svd(layer_matrix(layer, scheme), full_matrices=False)


def mode_unfoldings(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv kernel's mode-1 (``in x out*kh*kw``) and mode-0 (``out x in*kh*kw``)
    unfoldings, in float64 (input mode first, as the factorised layers run)."""
    check_layer(layer, "tucker2")
    w = layer.weight.detach().to(torch.float64)
    n, c = w.shape[:2]
    return w.transpose(0, 1).reshape(c, -1), w.reshape(n, -1)


def tucker_hosvd(layer: nn.Module) -> tuple[Svd, Svd]:
    """The HOSVD of a conv kernel's two channel modes: ``(U, S, empty)`` of the mode-1
    (input) and mode-0 (output) unfoldings (float64, singular values descending).
    ``Vh`` is not needed by the factorisation and is returned empty."""
    out = []
    for m in mode_unfoldings(layer):
        # the left singular vectors of a wide M are the eigenvectors of the small Gram matrix
        # M M^T (channels x channels), its eigenvalues the squared singular values: much
        # cheaper than an SVD of M (e.g. 512 x 4608), and float64 keeps it accurate
        evals, evecs = torch.linalg.eigh(m @ m.t())
        s = evals.flip(0).clamp_min(0.0).sqrt()
        out.append((evecs.flip(1), s, m.new_empty(0)))
    return out[0], out[1]


def _check_rank(layer: nn.Module, scheme: str, rank: object) -> None:
    full = max_rank(layer, scheme)
    if scheme == "tucker2":
        ok = (isinstance(rank, (tuple, list)) and len(rank) == 2
              and all(isinstance(r, int) and not isinstance(r, bool) for r in rank)
              and 1 <= rank[0] <= full[0] and 1 <= rank[1] <= full[1])
        if not ok:
            raise ValueError(f"rank={rank!r} must be a pair (r_in, r_out) of integers in "
                             f"[1, {full[0]}] x [1, {full[1]}] for this Conv2d under scheme "
                             "'tucker2'")
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"rank={rank!r} must be an integer in [1, {full}] for this "
                         f"{type(layer).__name__} under scheme {scheme!r}")


def build_factorised(layer: nn.Module, scheme: str, rank: Rank) -> nn.Sequential:
    """The two-layer (``tucker2``: three-layer) structure replacing ``layer`` at ``rank``, on
    the layer's device and dtype, with freshly initialised weights (``rebuild`` loads a
    checkpoint's weights into it)."""
    _check_rank(layer, scheme, rank)
    kw_ = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    has_bias = layer.bias is not None
    if scheme == "tucker2":
        r_in, r_out = rank
        return nn.Sequential(
            nn.Conv2d(layer.in_channels, r_in, 1, bias=False, **kw_),
            nn.Conv2d(r_in, r_out, layer.kernel_size, stride=layer.stride,
                      padding=layer.padding, dilation=layer.dilation, bias=False,
                      padding_mode=layer.padding_mode, **kw_),
            nn.Conv2d(r_out, layer.out_channels, 1, bias=has_bias, **kw_))
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
def _tucker2(layer: nn.Module, module: nn.Sequential, rank: tuple[int, int],
             hosvd: tuple[Svd, Svd] | None) -> nn.Sequential:
    """Fill the three convs of ``module`` with the truncated HOSVD of ``layer``'s kernel."""
    (u_in, _, _), (u_out, _, _) = hosvd if hosvd is not None else tucker_hosvd(layer)
    r_in, r_out = rank
    a, b = u_in[:, :r_in], u_out[:, :r_out]  # in x r_in, out x r_out (orthonormal columns)
    w = layer.weight.detach().to(torch.float64)
    # one mode at a time (a three-operand einsum may build an out x in x r_out x r_in
    # intermediate): core = W x_0 B^T x_1 A^T, r_out x r_in x kh x kw
    core = torch.einsum("cs,rcyx->rsyx", a, torch.einsum("nr,ncyx->rcyx", b, w))
    dtype = layer.weight.dtype
    module[0].weight.copy_(a.t()[:, :, None, None].to(dtype))
    module[1].weight.copy_(core.to(dtype))
    module[2].weight.copy_(b[:, :, None, None].to(dtype))
    if layer.bias is not None:
        module[2].bias.copy_(layer.bias)
    module.train(layer.training)
    return module


@torch.no_grad()
def factorise(layer: nn.Module, scheme: str, rank: Rank,
              svd: Svd | tuple[Svd, Svd] | None = None) -> nn.Sequential:
    """``layer`` replaced by its rank-``rank`` factorisation (the truncated SVD of its matrix,
    or for ``tucker2`` the truncated HOSVD; at full rank it computes the same function).
    ``svd``: a precomputed ``layer_svd`` (``tucker_hosvd`` for ``tucker2``)."""
    module = build_factorised(layer, scheme, rank)
    if scheme == "tucker2":
        return _tucker2(layer, module, rank, svd)
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
