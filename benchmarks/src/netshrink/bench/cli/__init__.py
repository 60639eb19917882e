"""The ``bench`` command line: one module per sub-command group."""

from __future__ import annotations

import typer

from netshrink.bench.cli import stats as _stats
from netshrink.bench.cli import train as _train

app = typer.Typer(
    name="bench",
    no_args_is_help=True,
    add_completion=False,
    help="netshrink benchmarks: train, measure and reproduce compressed CNNs.",
)
app.command("train")(_train.train)
app.command("stats")(_stats.stats)


def main() -> None:
    app()


__all__ = ["app", "main"]
