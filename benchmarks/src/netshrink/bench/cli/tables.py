"""``bench reproduce``, ``bench report`` and ``bench check``: the README's results tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from netshrink.bench.cli import validate
from netshrink.bench.data import resolve_data_root
from netshrink.bench.engine import DistEnv
from netshrink.bench.engine.jsonfile import dumps_standard
from netshrink.bench.tables import PROFILE_SETTINGS, PROFILES, TABLES, Table
from netshrink.bench.tables.check import (
    baseline_for,
    baseline_record,
    compare,
    read_baseline,
    tolerance_from_points,
)
from netshrink.bench.tables.report import load_results, markdown, plot, replace_block
from netshrink.bench.tables.runner import RunContext, load_table_data, run_table
from netshrink.core import write_text_atomic

TableOpt = Annotated[str, typer.Option("--table", help="A table name, or 'all' (every table "
                                                       "except the CI-only smoke table and the "
                                                       "extra tables, which run by name).")]
ResultsOpt = Annotated[Path, typer.Option(help="Folder of results/<table>/<row>.json.")]


def _tables(name: str) -> list[Table]:
    if name == "all":
        return [TABLES.get(n) for n in TABLES.names()
                if not (TABLES.get(n).ci_only or TABLES.get(n).extra)]
    try:
        return [TABLES.get(name)]
    except ValueError as err:
        raise typer.BadParameter(f"{err}, or 'all'") from err


def _rows(spec: Table, rows: str | None) -> list:
    """The rows ``--rows`` names in ``spec``, with their upstream rows; all rows if None."""
    if not rows:
        return list(spec.rows)
    names = [n.strip() for n in rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in {r.name for r in spec.rows}]
    if unknown or not names:
        raise typer.BadParameter(f"--rows {rows!r}: table {spec.name!r} has no row "
                                 f"{', '.join(map(repr, unknown)) or 'named'}; its rows: "
                                 f"{', '.join(r.name for r in spec.rows)}")
    return spec.closure(names)


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
    wait: Annotated[bool, typer.Option(help="A row another process is running into the same "
                                            "--runs: wait for it and reuse its result "
                                            "(--no-wait: stop with an error).")] = True,
) -> None:
    """Retrain and re-measure every row of TABLE; finished rows are reused (cached by spec)."""
    validate.check_choice("--profile", profile, PROFILES)
    chosen = _tables(table)
    wanted_rows = {spec.name: _rows(spec, rows) for spec in chosen}  # before any data is read
    validate.check_device(device)
    validate.check_out_folder("--results", results)
    validate.check_out_folder("--runs", runs)
    env = DistEnv.from_environment(device)
    console = Console()
    try:
        settings = PROFILE_SETTINGS[profile]
        root = resolve_data_root(data_dir)
        for spec in chosen:
            wanted = wanted_rows[spec.name]
            if env.is_main:  # rank 0 downloads (if asked) before the others read
                train, test = load_table_data(spec, settings, root, download=download)
            env.barrier()
            if not env.is_main:
                train, test = load_table_data(spec, settings, root)
            ctx = RunContext(table=spec, profile=settings, env=env, results_dir=results,
                             runs_dir=runs, train_data=train, test_data=test,
                             show_progress=progress and env.is_main, wait_for_lock=wait)
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
    if write_readme is not None:
        validate.check_in_file("--write-readme", write_readme, "an existing README file")
        validate.check_out_file("--write-readme", write_readme)
    if plot_dir is not None:
        validate.check_out_folder("--plot-dir", plot_dir)
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
                raise typer.BadParameter(f"--write-readme {write_readme}: {err}") from err
        write_text_atomic(write_readme, text)  # a full disk leaves the old README whole
        print(f"updated {write_readme}")


def check(
    table: Annotated[str, typer.Option("--table", help="The table to check, or 'all' (the "
                                                       "tables of reproduce --table all: each "
                                                       "must have a baseline).")] = "smoke",
    baseline: Annotated[Path, typer.Option(help="Baseline JSON file, or a folder of them (each "
                                                "records its table; with --table all, a "
                                                "file's folder is searched).")] = Path(
        "benchmarks/baselines/smoke-cpu.json"),
    results: ResultsOpt = Path("results"),
    tolerance: Annotated[float, typer.Option(help="Allowed accuracy drop, percentage "
                                                  "points (finite, 0 to 100).")] = 5.0,
    update: Annotated[bool, typer.Option(
        "--update", help="Write the current results as the new baseline (on purpose only).")
    ] = False,
) -> None:
    """Fail (exit 1) when a row's accuracy fell by more than the tolerance or its size or
    params grew, when results come from another profile, device or spec than BASELINE, or
    when a baseline row (or, with --table all, a table's baseline) is missing."""
    tol = tolerance_from_points(tolerance)
    specs = _tables(table)
    if update:
        if len(specs) != 1:
            raise typer.BadParameter("--update writes one table's baseline: name the table")
        validate.check_out_file("--baseline", baseline)
    folder = baseline if baseline.is_dir() else baseline.parent if table == "all" else None
    failed = []
    for spec in specs:
        res = load_results(results, spec)
        if not res:
            if len(specs) == 1:
                raise typer.BadParameter(f"no results for table {spec.name!r} in {results}; "
                                         f"run `bench reproduce --table {spec.name}` first")
            print(f"table {spec.name}: no results in {results}: FAILED")
            failed.append(spec.name)
            continue
        if update:
            write_text_atomic(baseline, dumps_standard(baseline_record(res, spec.name),
                                                       what=str(baseline), indent=2,
                                                       sort_keys=True) + "\n")
            print(f"wrote baseline {baseline} ({len(res)} rows)")
            return
        path = baseline if folder is None else baseline_for(folder, spec.name, res)
        if path is None:
            print(f"table {spec.name}: no baseline in {folder}: not checked, FAILED (write one "
                  f"on purpose with `bench check --table {spec.name} --update`)")
            failed.append(spec.name)
        elif not _check_one(spec, res, path, tol):
            failed.append(spec.name)
    if failed:
        raise typer.Exit(1)


def _check_one(spec: Table, res: dict, path: Path, tol: float) -> bool:
    """Print one table's comparison with its baseline file; True if it passes."""
    base = _read_baseline(path, spec)
    findings = compare(res, base, tol)
    for name, b in base["rows"].items():
        m = res.get(name, {}).get("metrics")
        now = "missing"
        if m:
            acc = m.get("accuracy")
            shown = f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else repr(acc)
            now = f"{shown} {m.get('size_bytes')} B {m.get('params')} params"
        print(f"{name:32s} baseline {100 * b['accuracy']:.2f}% {b['size_bytes']} B "
              f"{b['params']} params | now {now}")
    if findings:
        print(f"\nREGRESSION in table {spec.name} against {path}:")
        for f in findings:
            print(f"  {f.row}: {f.message}")
        return False
    print(f"\nno regression in table {spec.name} against {path} "
          f"(tolerance {100 * tol:g} pp)")
    return True


def _read_baseline(path: Path, spec: Table) -> dict:
    """``read_baseline`` with the file named in every error, and the shape the check needs:
    ``{"rows": {row: {"accuracy", "size_bytes", "params"}}}`` for rows of ``spec``."""
    try:
        base = read_baseline(path, spec.name)
    except (OSError, ValueError) as err:  # missing, unreadable, truncated or not JSON
        text = str(err)
        raise typer.BadParameter(text if str(path) in text else f"baseline {path}: {text}") \
            from err
    rows = base.get("rows") if isinstance(base, dict) else None
    if not isinstance(rows, dict) or not rows:
        raise typer.BadParameter(f"baseline {path} is not a baseline file: expected a JSON object "
                                 f"whose 'rows' maps row names to their numbers (write one with "
                                 f"`bench check --update`)")
    foreign = sorted(set(rows) - {r.name for r in spec.rows})
    if foreign:
        raise typer.BadParameter(f"baseline {path} has rows that table {spec.name!r} lacks "
                                 f"({', '.join(foreign)}): the baseline of another table?")
    for name, row in rows.items():
        if not isinstance(row, dict) or not all(
                isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                for k in ("accuracy", "size_bytes", "params")):
            raise typer.BadParameter(f"baseline {path}: row {name!r} needs numbers 'accuracy', "
                                     f"'size_bytes' and 'params'; got {row!r}")
    return base
