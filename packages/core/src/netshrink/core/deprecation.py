"""Old public names kept importable for a while after a rename (docs/api-conventions.md).

``deprecated_alias(new, "old")`` is a function named ``old`` that warns (``DeprecationWarning``,
pointing at the caller's line) and then calls ``new`` with the same arguments: code written
against the old name keeps working and says what to change.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["deprecated_alias"]

F = TypeVar("F", bound=Callable[..., Any])


def deprecated_alias(new: F, old_name: str) -> F:
    """``new`` under its former name ``old_name``, warning on every call."""
    message = (f"{old_name} is renamed {new.__name__} (a function that modifies the model it "
               "is given ends in '_'; see docs/api-conventions.md); the old name will go")

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated name of ``{new.__name__}``.\n\n{new.__doc__ or ''}"
    alias.__wrapped__ = new  # type: ignore[attr-defined]
    return alias  # type: ignore[return-value]
