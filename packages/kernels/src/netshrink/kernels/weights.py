"""Weight codes in the kernels' layout: tap-major bit-planes, blocks of 8 output channels.

A packed file stores a conv's codes out-major, ``(out, in/groups, kh, kw)`` flattened, one bit
per binary weight (base 3 for ternary). The kernels read the input packed along channels, so
each tap's channels must lie in consecutive 64-bit words: ``bit_planes`` reorders the codes
once, at load time, to ``[groups, blocks, kh * kw * words, 8]`` (``words = ceil(in/groups /
64)``, ``blocks = ceil(out/groups / 8)``, padding bits and padding channels 0), as

* ``p``: 1 where the weight is +1;
* ``m`` (ternary only): 1 where the weight is non-zero (binary: implied, every channel).

plus per output channel ``total`` (the number of non-zero weights) and ``tap_sum`` (the sum of
each tap's weights, what a zero-padded tap must give back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_LANES = 8


@dataclass(frozen=True)
class BitPlanes:
    """A conv's ternary / binary weights as the kernel reads them (see the module doc)."""

    p: torch.Tensor  # int64 [groups, blocks, K, 8]
    m: torch.Tensor  # int64, same shape (ternary) or empty (binary)
    total: torch.Tensor  # int32 [out]
    tap_sum: torch.Tensor  # int32 [out, kh * kw]


def _words(bits: torch.Tensor) -> torch.Tensor:
    """``[..., 64]`` 0/1 -> ``[...]`` int64 words, bit ``i`` = element ``i`` (two's complement
    for bit 63: the powers of two are distinct, so the sum is an exact OR)."""
    shifts = torch.arange(64, dtype=torch.int64)
    return (bits.to(torch.int64) << shifts).sum(-1)


def bit_planes(t: torch.Tensor, groups: int, ternary: bool) -> BitPlanes:
    """Pack weights ``t`` in {-1, 0, +1} (``(out, in/groups, kh, kw)``, any integer or float
    dtype) for the kernels; ``ternary=False`` requires every weight to be -1 or +1."""
    if t.dim() != 4:
        raise ValueError(f"weights must be (out, in/groups, kh, kw), got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.int64)
    allowed = (-1, 0, 1) if ternary else (-1, 1)
    if not torch.isin(t, torch.tensor(allowed)).all():
        raise ValueError(f"{'ternary' if ternary else 'binary'} weights must be in {allowed}")
    out, cin_g, kh, kw = t.shape
    if out % groups:
        raise ValueError(f"out channels {out} do not divide into groups={groups}")
    words = -(-cin_g // 64)
    tap_major = t.permute(0, 2, 3, 1)  # (out, kh, kw, in/groups)
    tap_major = torch.nn.functional.pad(tap_major, (0, words * 64 - cin_g))
    tap_major = tap_major.reshape(out, kh * kw * words, 64)
    cout_g, blocks = out // groups, -(-(out // groups) // _LANES)

    def layout(bits: torch.Tensor) -> torch.Tensor:
        w = _words(bits).view(groups, cout_g, -1)
        w = torch.nn.functional.pad(w, (0, 0, 0, blocks * _LANES - cout_g))
        return w.view(groups, blocks, _LANES, -1).transpose(2, 3).contiguous()

    p = layout(tap_major > 0)
    m = layout(tap_major != 0) if ternary else torch.empty(0, dtype=torch.int64)
    total = (t != 0).sum((1, 2, 3)).to(torch.int32)
    tap_sum = t.sum(1).reshape(out, kh * kw).to(torch.int32)
    return BitPlanes(p, m, total, tap_sum)
