"""Standard JSON only: our result, summary and baseline files never hold NaN or Infinity.

Python's ``json`` writes ``NaN``/``Infinity`` tokens by default and reads them back, but they
are not JSON (other tools reject the file) and a NaN metric is a result nobody can trust. So
every file we write goes through ``dumps_standard`` (``allow_nan=False``, with an error that
names the key path of the bad value), and every file of ours we read goes through
``loads_standard`` / ``read_json``, which reject those tokens and say which file held them.
Where a value may legitimately be undefined, the writer turns it into ``None`` first
(``finite_or_none``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from netshrink.core import write_text_atomic


class NonStandardJSONError(ValueError):
    """A JSON document holds (or would hold) NaN/Infinity, or is not JSON at all."""


def finite_or_none(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (for metrics that can be undefined)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _first_non_finite(obj: Any, path: str = "") -> str | None:
    """The key path (``a.b[2]``) of the first non-finite float inside ``obj``, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "<top level>")
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_non_finite(v, f"{path}.{k}" if path else str(k))
            if found is not None:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _first_non_finite(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def dumps_standard(obj: Any, *, what: str = "a JSON document", **kwargs: Any) -> str:
    """``json.dumps(obj, allow_nan=False, **kwargs)``; a NaN/inf value raises
    NonStandardJSONError naming ``what`` and the key path of the value."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as err:
        where = _first_non_finite(obj)
        if where is None:
            raise
        raise NonStandardJSONError(
            f"refusing to write {what}: {where} is not a finite number (NaN or infinity is "
            "neither standard JSON nor a trustworthy result)") from err


def _reject_constant(token: str) -> float:
    raise NonStandardJSONError(f"{token} is not standard JSON")


def loads_standard(text: str, *, what: str = "a JSON document") -> Any:
    """``json.loads`` that rejects NaN/Infinity tokens; errors name ``what``."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except NonStandardJSONError as err:
        raise NonStandardJSONError(f"{what} holds a non-finite number: {err}") from err
    except json.JSONDecodeError as err:
        raise NonStandardJSONError(f"{what} is not valid JSON ({err})") from err


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read one of our JSON files, strictly (see ``loads_standard``)."""
    path = Path(path)
    return loads_standard(path.read_text(), what=str(path))


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as standard, indented, key-sorted JSON, atomically."""
    write_text_atomic(path, dumps_standard(payload, what=str(path), indent=2, sort_keys=True)
                      + "\n")
