"""The classic CIFAR Network-in-Network (as in micronet): nine convs in three mlpconv blocks.

Channel plan (at ``width=1``, 32x32 input, ``cbap`` order):

=========  ===========================  ======  ==========
block      convs (kernel: out)           pool    resolution
=========  ===========================  ======  ==========
1          5x5: 192, 1x1: 160, 1x1: 96  max 3/2  32 -> 16
2          5x5: 192, 1x1: 192, 1x1: 192 max 3/2  16 -> 8
3          3x3: 192, 1x1: 192, 1x1: C   GAP      8 -> 1
=========  ===========================  ======  ==========

968,404 parameters (0.97 M) and 222,486,528 MACs (0.22 G) for C = 10.
"""

from __future__ import annotations

from netshrink.models._nin_stack import ConvSpec, NINStack, check_nin_options
from netshrink.models._width import check_width, scale_channels
from netshrink.models.registry import register_model

_PLAN: tuple[tuple[int, int, bool], ...] = (  # (out channels, kernel, pool after)
    (192, 5, False), (160, 1, False), (96, 1, True),
    (192, 5, False), (192, 1, False), (192, 1, True),
    (192, 3, False), (192, 1, False),
)


class NIN(NINStack):
    """CIFAR Network-in-Network.

    ``width`` multiplies every hidden channel count (rounded half-up, at least 1), never the
    class count. ``block_order`` is ``"cbap"`` (conv-BN-act, then pool) or ``"bacp"`` (stem conv,
    then BN-act-conv; head BN-act-GAP); ``act`` is ``"relu"``, ``"hardtanh"`` or ``"identity"``.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 block_order: str = "cbap", act: str = "relu") -> None:
        check_nin_options(num_classes, in_channels, block_order, act)
        check_width(width)
        plan = [ConvSpec(scale_channels(c, width), k, pool_after=pool) for c, k, pool in _PLAN]
        plan.append(ConvSpec(num_classes, 1))
        super().__init__(plan, in_channels=in_channels, block_order=block_order, act=act)


@register_model("nin")
def nin(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
        block_order: str = "cbap", act: str = "relu") -> NIN:
    """CIFAR Network-in-Network (see ``NIN``)."""
    return NIN(num_classes=num_classes, in_channels=in_channels, width=width,
               block_order=block_order, act=act)
