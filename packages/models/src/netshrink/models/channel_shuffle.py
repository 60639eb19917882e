"""ChannelShuffle: the ShuffleNet channel permutation, as a module of its own.

It is a module (not a functional call inside a conv) so graph passes can recognise it: pruning
must permute channel indices through it, and BN folding must not fold across it. The forward is
the standard reshape-transpose-reshape, written with ``unflatten``/``flatten`` so it traces with
``torch.fx`` (no Python-level shape unpacking).
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.core import check_int


class ChannelShuffle(nn.Module):
    """Shuffle channels across ``groups``: channel ``g * (C // groups) + i`` moves to
    ``i * groups + g``.

    With C = 6 and groups = 2 the output holds input channels ``[0, 3, 1, 4, 2, 5]``. The
    channel count must be divisible by ``groups``.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        check_int("groups", groups, min_value=1)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, ...) -> (N, g, C/g, ...) -> (N, C/g, g, ...) -> (N, C, ...)
        return x.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
