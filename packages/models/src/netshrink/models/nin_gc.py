"""NIN-GC: Network-in-Network with grouped convs and channel shuffles (as in micronet).

Channel plan (at ``width=1``, 32x32 input):

====  ======  =====  ======  =============  ==========
conv  kernel  out    groups  shuffle before  then
====  ======  =====  ======  =============  ==========
1     5x5     256    1       -
2     1x1     256    2       -
3     1x1     256    2       2              max 3/2
4     3x3     512    16      2
5     1x1     512    4       16
6     1x1     512    4       4              max 3/2
7     3x3     1024   32      4
8     1x1     1024   8       32
9     1x1     C      1       -              GAP
====  ======  =====  ======  =============  ==========

The stem conv and the classifier conv are dense. Each shuffle uses the previous conv's group
count, so information crosses groups between consecutive grouped convs. 587,028 parameters
(0.59 M) and 157,679,616 MACs (0.16 G) for C = 10.
"""

from __future__ import annotations

from netshrink.models._nin_stack import ConvSpec, NINStack, check_nin_options
from netshrink.models._width import check_width, scale_channels
from netshrink.models.registry import register_model

# (out channels, kernel, groups, pool after) for the hidden convs; the classifier conv is added.
_PLAN: tuple[tuple[int, int, int, bool], ...] = (
    (256, 5, 1, False), (256, 1, 2, False), (256, 1, 2, True),
    (512, 3, 16, False), (512, 1, 4, False), (512, 1, 4, True),
    (1024, 3, 32, False), (1024, 1, 8, False),
)
CHANNEL_MULTIPLE = 32  # the largest group count: every group count and shuffle stays valid


class NINGC(NINStack):
    """NIN with grouped convs and channel shuffles.

    ``width`` multiplies every hidden channel count, rounded half-up to a multiple of 32 (at
    least 32) so that every group count (up to 32) and every shuffle still divides the channels;
    the class count is never scaled. ``block_order`` and ``act`` are as for ``NIN``. The shuffle
    sits immediately before its conv in both block orders.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 block_order: str = "cbap", act: str = "relu") -> None:
        check_nin_options(num_classes, in_channels, block_order, act)
        check_width(width)
        plan: list[ConvSpec] = []
        prev_groups = 1
        for c, k, groups, pool in _PLAN:
            out = scale_channels(c, width, multiple=CHANNEL_MULTIPLE)
            plan.append(ConvSpec(out, k, groups=groups, shuffle=prev_groups, pool_after=pool))
            prev_groups = groups
        plan.append(ConvSpec(num_classes, 1))
        super().__init__(plan, in_channels=in_channels, block_order=block_order, act=act)


@register_model("nin_gc")
def nin_gc(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
           block_order: str = "cbap", act: str = "relu") -> NINGC:
    """NIN with grouped convs and channel shuffles (see ``NINGC``)."""
    return NINGC(num_classes=num_classes, in_channels=in_channels, width=width,
                 block_order=block_order, act=act)
