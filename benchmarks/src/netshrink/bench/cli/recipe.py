"""``bench recipe``: a results-table row as a recipe file.

The row and every row it starts from (its upstream chain, its teacher's) become one recipe
step each, with the profile's epochs and model width (``netshrink.bench.recipefile.row_recipe``);
``bench compress`` runs the file with the tables' engine and gives the row's model bit for bit
on the profile's data (the file's header says the command). Written to ``--out`` atomically
(a reader never sees half a file), else printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from netshrink.bench.cli import validate
from netshrink.bench.recipefile import row_recipe
from netshrink.bench.tables import PROFILES, TABLES
from netshrink.core import write_text_atomic


def recipe(
    table: Annotated[str, typer.Option("--table", help="A results table (`bench reproduce "
                                                       "--table`), extra and CI-only ones "
                                                       "included.")],
    row: Annotated[str, typer.Option("--row", help="A row of that table.")],
    profile: Annotated[str, typer.Option(help="Whose epochs and model width: full (the "
                                              "published schedule), quick or smoke.")] = "full",
    out: Annotated[Path | None, typer.Option(help="Write the recipe to this file (else print "
                                                  "it).")] = None,
) -> None:
    """Write TABLE's ROW (with the rows it starts from) as a recipe file for bench compress."""
    if table not in TABLES:
        raise typer.BadParameter(f"--table {table!r} is not a table; allowed: "
                                 f"{', '.join(TABLES.names())}")
    spec = TABLES.get(table)
    names = [r.name for r in spec.rows]
    if row not in names:
        raise typer.BadParameter(f"--row {row!r} is not a row of table {table!r}; its rows: "
                                 f"{', '.join(names)}")
    validate.check_choice("--profile", profile, PROFILES)
    if out is not None:
        validate.check_out_file("--out", out)
    text = row_recipe(spec, row, profile)
    if out is None:
        print(text, end="")
        return
    write_text_atomic(out.expanduser(), text)
    print(f"wrote {out} ({table}/{row}, profile {profile})")
