"""``bench reproduce``, ``bench report`` and ``bench check``: the README's results tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from netshrink.bench.data import resolve_data_root
from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import PROFILE_SETTINGS, PROFILES, TABLES, Table
from netshrink.bench.tables.check import baseline_record, compare, read_baseline
from netshrink.bench.tables.report import load_results, markdown, plot, replace_block
from netshrink.bench.tables.runner import RunContext, load_table_data, run_table

TableOpt = Annotated[str, typer.Option("--table", help="A table name, or 'all' (every table "
                                                       "except the CI-only smoke table).")]
ResultsOpt = Annotated[Path, typer.Option(help="Folder of results/<table>/<row>.json.")]


def _tables(name: str) -> list[Table]:
    if name == "all":
        return [TABLES.get(n) for n in TABLES.names() if not TABLES.get(n).ci_only]
    try:
        return [TABLES.get(name)]
    except ValueError as err:
        raise typer.BadParameter(f"{err}, or 'all'") from err


def reproduce(
    table: TableOpt = "all",
    profile: Annotated[str, typer.Option(help="full (GPU, published schedule), quick (2-core "
                                              "CPU, ~30 min for all) or smoke (CI).")] = "quick",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    rows: Annotated[str | None, typer.Option(help="Comma-separated row names (their upstream "
                                                  "rows run too).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data root; default $NETSHRINK_DATA, "
                                                       "else ~/.cache/netshrink/data.")] = None,
    download: Annotated[bool, typer.Option(help="Download the dataset if absent.")] = False,
    results: ResultsOpt = Path("results"),
    runs: Annotated[Path, typer.Option(help="Folder of runs/<table>/<row>/ (checkpoints, "
                                            "TensorBoard).")] = Path("runs"),
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Retrain and re-measure every row of TABLE; finished rows are reused (cached by spec)."""
    if profile not in PROFILES:
        raise typer.BadParameter(f"--profile {profile!r} is not allowed; choose one of: "
                                 f"{', '.join(PROFILES)}")
    chosen = _tables(table)
    env = DistEnv.from_environment(device)
    console = Console()
    try:
        settings = PROFILE_SETTINGS[profile]
        root = resolve_data_root(data_dir)
        for spec in chosen:
            wanted = spec.closure(rows.split(",")) if rows else list(spec.rows)
            if env.is_main:  # rank 0 downloads (if asked) before the others read
                train, test = load_table_data(spec, settings, root, download=download)
            env.barrier()
            if not env.is_main:
                train, test = load_table_data(spec, settings, root)
            ctx = RunContext(table=spec, profile=settings, env=env, results_dir=results,
                             runs_dir=runs, train_data=train, test_data=test,
                             show_progress=progress and env.is_main)
            if env.is_main:
                console.rule(f"table {spec.name}, profile {profile}"
                             + (" (the quick profile: reduced width and epochs)"
                                if profile == "quick" else ""))

            def on_row(row, state, _spec=spec):
                if env.is_main:
                    console.print(f"[bold]{_spec.name}/{row.name}[/bold]: {state}")

            run_table(ctx, wanted, on_row=on_row)
            if env.is_main:
                print(markdown(load_results(results, spec), spec))
    finally:
        env.close()


def report(
    table: TableOpt = "all",
    results: ResultsOpt = Path("results"),
    write_readme: Annotated[Path | None, typer.Option(help="Replace each table's block between "
                                                           "its markers in this README.")] = None,
    plot_dir: Annotated[Path | None, typer.Option(help="Write <table>.png accuracy-vs-size "
                                                       "plots here.")] = None,
) -> None:
    """Print the markdown results table(s) made from the results files."""
    blocks = []
    for spec in _tables(table):
        res = load_results(results, spec)
        block = markdown(res, spec)
        blocks.append((spec, block))
        print(block)
        if plot_dir is not None and res:
            path = plot(res, spec, plot_dir / f"{spec.name}.png")
            print(f"wrote {path}")
    if write_readme is not None:
        text = write_readme.read_text()
        for spec, block in blocks:
            try:
                text = replace_block(text, spec.name, block)
            except ValueError as err:
                raise typer.BadParameter(str(err)) from err
        write_readme.write_text(text)
        print(f"updated {write_readme}")


def check(
    table: Annotated[str, typer.Option("--table", help="The table to check.")] = "smoke",
    baseline: Annotated[Path, typer.Option(help="Baseline JSON file.")] = Path(
        "benchmarks/baselines/smoke-cpu.json"),
    results: ResultsOpt = Path("results"),
    tolerance: Annotated[float, typer.Option(help="Allowed accuracy drop, percentage "
                                                  "points.")] = 5.0,
    update: Annotated[bool, typer.Option(
        "--update", help="Write the current results as the new baseline (on purpose only).")
    ] = False,
) -> None:
    """Fail (exit 1) when a row's accuracy fell by more than the tolerance or its size or
    params grew, against BASELINE."""
    spec = _tables(table)[0]
    res = load_results(results, spec)
    if not res:
        raise typer.BadParameter(f"no results for table {spec.name!r} in {results}; run "
                                 f"`bench reproduce --table {spec.name}` first")
    if update:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        baseline.write_text(json.dumps(baseline_record(res), indent=2, sort_keys=True) + "\n")
        print(f"wrote baseline {baseline} ({len(res)} rows)")
        return
    try:
        base = read_baseline(baseline)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from err
    findings = compare(res, base, tolerance / 100)
    for name, b in base["rows"].items():
        m = res.get(name, {}).get("metrics")
        now = (f"{100 * m['accuracy']:.2f}% {m['size_bytes']} B {m['params']} params"
               if m else "missing")
        print(f"{name:32s} baseline {100 * b['accuracy']:.2f}% {b['size_bytes']} B "
              f"{b['params']} params | now {now}")
    if findings:
        print(f"\nREGRESSION in table {spec.name} against {baseline}:")
        for f in findings:
            print(f"  {f.row}: {f.message}")
        raise typer.Exit(1)
    print(f"\nno regression in table {spec.name} against {baseline} "
          f"(tolerance {tolerance} pp)")
