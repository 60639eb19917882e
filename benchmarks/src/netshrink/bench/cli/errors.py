"""How the ``bench`` CLI reports the mistakes a user is expected to make.

A wrong name, a missing or broken data folder, an ``--out`` that is a file, a checkpoint that is
not one: each is one ``error: <message>`` line on stderr and exit code 2 (typer's code for usage
errors), because the last line of a traceback is all the user needs and the forty lines above it
hide it. ``bench --debug ...`` or ``NETSHRINK_DEBUG=1`` print the whole traceback (with every
``raise ... from`` cause) before that line; the exit code stays 2.

Only the types in ``EXPECTED_ERRORS`` are reported this way; anything else (a bug) keeps its
traceback. Each command is wrapped with ``report_errors`` where it is registered, so the same
handling applies to ``bench``, ``python -m netshrink.bench`` (what torchrun launches) and
typer's ``CliRunner`` in tests.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import typer

from netshrink.core import CheckpointError
from netshrink.quant import PackedFileError

DEBUG_ENV = "NETSHRINK_DEBUG"
USAGE_EXIT_CODE = 2

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    # our own checks of option values (netshrink.bench.cli.validate)
    typer.BadParameter,
    # config validation names the field, the bad value and what is allowed; the library's
    # ValueError subclasses: DatasetFormatError, ChecksumError, UnsafeArchiveError (data),
    # ConfigMismatchError (resume), StructureError (packed structure), json.JSONDecodeError
    ValueError,
    # user paths: FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    # PermissionError, a read-only disk or a full one, a failed download (URLError)
    OSError,
    # a file that is not a readable netshrink checkpoint / packed model
    CheckpointError,
    PackedFileError,
)

_debug: ContextVar[bool] = ContextVar("netshrink_bench_debug", default=False)
_FALSE_WORDS = ("", "0", "false", "no", "off")

F = TypeVar("F", bound=Callable[..., Any])


def set_debug(flag: bool) -> None:
    """Remember ``bench --debug`` for this invocation (the app callback calls this)."""
    _debug.set(flag)


def debug_requested() -> bool:
    """``--debug`` was given, or ``$NETSHRINK_DEBUG`` is set to something other than 0/false."""
    return _debug.get() or os.environ.get(DEBUG_ENV, "").strip().lower() not in _FALSE_WORDS


def message_of(err: BaseException) -> str:
    """The one (at most two) line(s) to show for ``err``: a longer message is joined into one.

    The outermost error is the one written for the user (a library error that wraps another
    already says what the inner one meant), so its message is used; an empty one falls back to
    the first non-empty message down the ``raise ... from`` chain.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = _text(current).strip()
        if text:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            return "\n".join(lines) if len(lines) <= 2 else " ".join(lines)
        current = current.__cause__ or current.__context__
    return type(err).__name__


def _text(err: BaseException) -> str:
    if isinstance(err, typer.BadParameter):
        # raised by our own checks without a parameter: the message names the option itself
        has_param = err.param is not None or err.param_hint is not None
        return err.format_message() if has_param else err.message
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        # "[Errno 20] Not a directory: '/x/y'" -> "/x/y: Not a directory", as Unix tools say it
        where = str(err.filename)
        if err.filename2 is not None:
            where += f" -> {err.filename2}"
        return f"{where}: {err.strerror}"
    return str(err)


def report_errors(command: F) -> F:
    """Wrap a command: an expected error becomes ``error: <message>`` on stderr and exit 2;
    any other exception passes through untouched, traceback and all."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as err:
            if debug_requested():  # the whole chain, in Python's own format, then the line
                traceback.print_exception(err, file=sys.stderr)
            print(f"error: {message_of(err)}", file=sys.stderr, flush=True)
            raise typer.Exit(USAGE_EXIT_CODE) from None

    return run  # type: ignore[return-value]


__all__ = ["DEBUG_ENV", "EXPECTED_ERRORS", "USAGE_EXIT_CODE", "debug_requested", "message_of",
           "report_errors", "set_debug"]
