"""Channel-width scaling shared by every model: one rounding rule, validated once.

A width multiplier scales hidden channel counts (never the class count). Rounding is half-up
(``floor(c * width / multiple + 0.5) * multiple``), so the result does not depend on Python's
banker's rounding, and it never falls below ``multiple``.
"""

from __future__ import annotations

import math

from netshrink.core import check_float


def check_width(width: float) -> None:
    """Reject a width multiplier that is not a finite number > 0 (ValueError naming the value)."""
    check_float("width", width, min_value=0.0, min_exclusive=True)
    if not math.isfinite(width):
        raise ValueError(f"width={width!r} must be a finite number > 0")


def scale_channels(channels: int, width: float, *, multiple: int = 1) -> int:
    """``channels * width`` rounded half-up to a multiple of ``multiple``, at least ``multiple``."""
    units = math.floor(channels * width / multiple + 0.5)
    return max(1, units) * multiple
