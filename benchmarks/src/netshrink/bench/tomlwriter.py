"""A small TOML writer for the values recipe files hold (the standard library reads TOML but
does not write it, and a dependency for a few dozen lines is not worth it).

``toml_value`` writes one value: a string (basic string, every character TOML does not allow
raw escaped), an integer (64-bit, as TOML allows), a float (``repr``, which round-trips, and
``inf`` / ``-inf`` / ``nan``), a boolean, an array (list or tuple) or an inline table (a dict
with string keys). ``toml_key`` writes a key: bare when TOML allows it, else quoted. Anything
else is a TypeError or ValueError naming the value: the writer never guesses.
``tomllib.loads`` of what these write gives the value back (tuples come back as lists); a
property test checks it.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# characters a TOML basic string must escape: the quote, the backslash and the control
# characters (U+0000-U+001F and U+007F)
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')
INT64 = (-(2**63), 2**63 - 1)


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (``"..."``)."""
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates: not text a file can hold
        raise ValueError(f"{text!r} is not valid Unicode text ({err.reason})") from None

    def escape(m: re.Match[str]) -> str:
        c = m.group()
        return _ESCAPES.get(c, f"\\u{ord(c):04X}")

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def toml_key(key: str) -> str:
    """``key`` bare (letters, digits, ``_``, ``-``) when TOML allows it, else quoted."""
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings; {key!r} is a {type(key).__name__}")
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value: Any) -> str:
    """One TOML value (inline: arrays and tables on one line)."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"{value} does not fit TOML's 64-bit integers")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form: 0.1, 1e-05, 1e+16 are all TOML
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) \
            + " }"
    raise TypeError(f"{value!r} ({type(value).__name__}) has no TOML form; allowed: str, int, "
                    "float, bool, lists and tables of them")


def toml_comment(text: str) -> str:
    """``text`` as comment lines (``# ...``), one per line of ``text``; control characters,
    which a TOML comment may not hold, become spaces."""
    lines = str(text).splitlines() or [""]
    return "\n".join(("# " + re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", line)).rstrip()
                     for line in lines)
