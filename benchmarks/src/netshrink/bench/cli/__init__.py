"""The ``bench`` command line: one module per sub-command group."""

from __future__ import annotations

import warnings

import typer

from netshrink.bench.cli import fuse as _fuse
from netshrink.bench.cli import stats as _stats
from netshrink.bench.cli import tables as _tables
from netshrink.bench.cli import train as _train
from netshrink.bench.engine.host import keep_freed_memory

app = typer.Typer(
    name="bench",
    no_args_is_help=True,
    add_completion=False,
    help="netshrink benchmarks: train, measure and reproduce compressed CNNs.",
)
app.command("train")(_train.train)
app.command("stats")(_stats.stats)
app.command("models")(_stats.models)
app.command("reproduce")(_tables.reproduce)
app.command("report")(_tables.report)
app.command("check")(_tables.check)
app.command("fuse-check")(_fuse.fuse_check)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    import sys

    print(f"warning: {message}", file=file or sys.stderr)


def main() -> None:
    warnings.showwarning = _one_line_warning  # users read the message, not our source lines
    keep_freed_memory()  # 1.4x faster CPU training steps (see engine/host.py)
    app()


__all__ = ["app", "main"]
