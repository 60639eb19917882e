"""JSON read from files someone else wrote, with bounds on its size and nesting.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` a few thousand deep raises
RecursionError, and a parsed value a few hundred deep can still break any recursive code that
walks it later (``==``, ``json.dumps``, a describe/rebuild round trip). ``loads_bounded`` turns
every such problem into one ValueError that callers convert to their own error type.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_CHARS = 16 * 2**20  # checkpoint metadata is a few KiB; a long training history ~1 MiB
MAX_JSON_DEPTH = 64  # our records nest 5-6 levels; anything deeper is not ours


def loads_bounded(text: str | bytes, *, max_chars: int = MAX_JSON_CHARS,
                  max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``text`` as JSON; ValueError if it is longer than ``max_chars``, nested deeper
    than ``max_depth`` (lists and objects), or not valid JSON (including integers too long for
    Python to convert)."""
    if len(text) > max_chars:
        raise ValueError(f"JSON text of {len(text)} characters is longer than the "
                         f"{max_chars} allowed")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"JSON nests deeper than the {max_depth} levels allowed") from None
    except ValueError as err:  # JSONDecodeError, and int conversion over sys's digit limit
        raise ValueError(f"not valid JSON: {err}") from err
    check_depth(value, max_depth)
    return value


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not standard JSON (non-finite numbers are not stored)")


def check_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """ValueError if lists/dicts in ``value`` nest deeper than ``max_depth`` (a scalar is depth
    0, ``[1]`` depth 1). Iterative, so it cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            raise ValueError(f"JSON nests deeper than the {max_depth} levels allowed")
        stack.extend((child, depth + 1) for child in children)
