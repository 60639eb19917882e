"""Results files -> the markdown table (and README block) and an accuracy-vs-size plot."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from netshrink.bench.engine.jsonfile import read_json
from netshrink.bench.tables.spec import Table
from netshrink.core import write_atomic

BEGIN = "<!-- bench:table:{name}:begin -->"
END = "<!-- bench:table:{name}:end -->"


def load_results(results_dir: Path, table: Table) -> dict[str, dict[str, Any]]:
    """Row name -> result record, for the rows of ``table`` that have one. Files are read as
    standard JSON: one holding NaN/Infinity or cut short raises NonStandardJSONError naming
    it."""
    out = {}
    for row in table.rows:
        path = results_dir / table.name / f"{row.name}.json"
        if path.is_file():
            out[row.name] = read_json(path)
    return out


def derived(results: dict[str, dict[str, Any]], table: Table) -> dict[str, dict[str, float]]:
    """Accuracy loss (percentage points) and compression against the row's float baseline (the
    table's, or with ``baseline_per_chain`` its own model's float row)."""
    out = {}
    rows = {row.name for row in table.rows}
    for name, r in results.items():
        m = r["metrics"]
        base = results.get(table.baseline_of(name) if name in rows else table.baseline)
        if base is None:
            out[name] = {}
            continue
        b = base["metrics"]
        out[name] = {"accuracy_loss_pp": 100 * (b["accuracy"] - m["accuracy"]),
                     "compression": b["size_bytes"] / m["size_bytes"]}
    return out


def markdown(results: dict[str, dict[str, Any]], table: Table) -> str:
    """The table as markdown, with a line saying how and when it was produced."""
    if table.deploy_rows:  # the deployment table: its own columns (ONNX Runtime, OpenVINO)
        from netshrink.bench.tables.deploy import deploy_markdown

        return deploy_markdown(results, table)
    if not results:
        return (f"_No results for table `{table.name}` yet: run "
                f"`bench reproduce --table {table.name}`._\n")
    extra = derived(results, table)
    latency = any("latency_ms" in r["metrics"] for r in results.values())
    before = table.before_training
    teacher = any("teacher_accuracy" in r["metrics"] for r in results.values())  # distilled
    search = any(search_seconds(r) is not None for r in results.values())  # automatic rows
    head = ["row", "accuracy (%)", "loss vs float (pp)", "GMACs", "params (M)", "size (MB)",
            "compression"]
    if before:
        head.insert(2, "before fine-tuning (%)")
    if teacher:
        head.append("teacher (%)")
    if latency:
        head += ["latency b1 (ms)", "latency b64 (ms)"]
    if search:
        head.append("search (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        r = results.get(row.name)
        if r is None:
            continue
        m, d = r["metrics"], extra[row.name]
        cells = [row.label, f"{100 * m['accuracy']:.2f}",
                 f"{d['accuracy_loss_pp']:.2f}" if d else "-", f"{m['gmacs']:.4f}",
                 f"{m['params'] / 1e6:.3f}", f"{m['size_bytes'] / 1e6:.3f}",
                 f"{d['compression']:.1f}x" if d else "-"]
        if before:
            acc = m.get("accuracy_before_training")
            cells.insert(2, "-" if acc is None else f"{100 * acc:.2f}")
        if teacher:
            acc = m.get("teacher_accuracy")
            cells.append("-" if acc is None else f"{100 * acc:.2f}")
        if latency:
            lat = m.get("latency_ms", {})
            cells += [f"{lat['batch1']:.2f}" if "batch1" in lat else "-",
                      f"{lat['batch64']:.1f}" if "batch64" in lat else "-"]
        if search:
            seconds = search_seconds(r)
            cells.append("-" if seconds is None else f"{seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    dates = sorted(r["date"][:10] for r in results.values())
    ds = first["dataset"]
    width = first.get("profile_settings", {}).get("width")
    note = (f"Profile `{first['profile']}`" + (f" (model width x{width:g})" if width else "")
            + f", device `{first['device']}` x{first['world_size']}, "
            f"{ds['name']} {ds['train_images']} train / {ds['test_images']} test images, "
            f"torch {first['torch']}, produced {dates[0]}"
            + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")
            + f" by `bench reproduce --table {table.name} --profile {first['profile']}`. "
            "Size is the packed file on disk.")
    body = "\n".join(lines) + "\n"
    if table.grid is not None:
        body = (_grid(results, table) + "\n<details><summary>every row: accuracy, GMACs, "
                "params, size, compression</summary>\n\n" + body + "\n</details>\n")
    return f"**{table.title}**\n\n" + body + f"\n{note}\n"


def search_seconds(result: dict[str, Any]) -> float | None:
    """Wall time of the automatic searches behind a row's model (the stages of its recipe that
    record ``search_seconds``: netshrink.auto's), its upstream rows' included; None if none."""
    times = [s.get("config", {}).get("search_seconds") for s in result.get("recipe", [])
             if isinstance(s, dict)]
    times = [t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)]
    return float(sum(times)) if times else None


def _grid(results: dict[str, dict[str, Any]], table: Table) -> str:
    """Accuracy (%) and packed size (MB) laid out on the table's grid: one line per first
    coordinate, one column per second, in the order the rows first use them."""
    assert table.grid is not None
    cells = {r.cell: r.name for r in table.rows if r.cell is not None}
    lines_, columns = _ordered([c[0] for c in cells]), _ordered([c[1] for c in cells])
    head = [f"{table.grid[0]} \\ {table.grid[1]}", *columns]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in lines_:
        row_cells = [line]
        for col in columns:
            r = results.get(cells.get((line, col), ""))
            row_cells.append("-" if r is None else
                             f"{100 * r['metrics']['accuracy']:.2f} "
                             f"({r['metrics']['size_bytes'] / 1e6:.3f} MB)")
        out.append("| " + " | ".join(row_cells) + " |")
    return ("Test accuracy (%) and packed size (MB) for each combination:\n\n"
            + "\n".join(out) + "\n")


def _ordered(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def replace_block(text: str, name: str, block: str) -> str:
    """Replace the text between this table's markers in ``text`` (markers must exist)."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no block for table {name!r}: add the lines\n{begin}\n{end}")
    return pattern.sub(lambda _: f"{begin}\n{block}{end}", text)


def plot(results: dict[str, dict[str, Any]], table: Table, path: Path) -> Path:
    """Accuracy against packed size (log scale), or against CPU latency when the table says
    ``plot_x="latency"``, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_latency = table.plot_x == "latency"
    fig, ax = plt.subplots(figsize=(11, 5 if len(results) < 24 else 7), dpi=110)
    markers = "osD^vP*Xph<>"
    for i, row in enumerate(table.rows):
        r = results.get(row.name)
        if r is None:
            continue
        m = r["metrics"]
        if by_latency and "batch64" not in m.get("latency_ms", {}):
            continue
        x = m["latency_ms"]["batch64"] if by_latency else m["size_bytes"] / 1e6
        ax.scatter(x, 100 * m["accuracy"], marker=markers[i % len(markers)], s=40,
                   label=row.label)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              ncol=1 if len(results) < 24 else 2)
    if by_latency:
        ax.set_xlabel("CPU latency, batch 64 (ms)")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("packed size (MB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(table.title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    # atomically, like every file we write; the temp name ends in .tmp, so say the format
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt))
    finally:
        plt.close(fig)
    return path
