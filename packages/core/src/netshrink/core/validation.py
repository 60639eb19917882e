"""Config validation helpers: every bad value gets a ValueError naming the field, the value and
what is allowed. Call them from a frozen dataclass's ``__post_init__``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Reject ``value`` unless it is one of ``allowed`` (``==``, and bool never equals int)."""
    allowed = list(allowed)
    ok = any(value == a and type(value) is type(a) for a in allowed)
    if not ok:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{field}={value!r} is not allowed; choose one of: {shown}")


def check_int(field: str, value: Any, *, min_value: int | None = None,
              max_value: int | None = None) -> None:
    """Reject anything that is not an int (bools excluded) within [min_value, max_value]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}={value!r} must be an integer")
    _check_bounds(field, value, min_value, max_value)


def check_float(field: str, value: Any, *, min_value: float | None = None,
                max_value: float | None = None, min_exclusive: bool = False) -> None:
    """Reject non-numbers, NaN, infinities, and values outside the bounds
    (``min_exclusive`` for ``> min``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field}={value!r} must be a finite real number")
    if min_exclusive and min_value is not None and value <= min_value:
        raise ValueError(f"{field}={value!r} must be greater than {min_value}")
    _check_bounds(field, value, min_value, max_value)


def _check_bounds(field: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise ValueError(f"{field}={value!r} must be at least {lo}")
    if hi is not None and value > hi:
        raise ValueError(f"{field}={value!r} must be at most {hi}")
