"""Results files -> the markdown table (and README block) and an accuracy-vs-size plot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from netshrink.bench.tables.spec import Table

BEGIN = "<!-- bench:table:{name}:begin -->"
END = "<!-- bench:table:{name}:end -->"


def load_results(results_dir: Path, table: Table) -> dict[str, dict[str, Any]]:
    """Row name -> result record, for the rows of ``table`` that have one."""
    out = {}
    for row in table.rows:
        path = results_dir / table.name / f"{row.name}.json"
        if path.is_file():
            out[row.name] = json.loads(path.read_text())
    return out


def derived(results: dict[str, dict[str, Any]], table: Table) -> dict[str, dict[str, float]]:
    """Accuracy loss (percentage points) and compression against the table's float baseline."""
    base = results.get(table.baseline)
    out = {}
    for name, r in results.items():
        m = r["metrics"]
        if base is None:
            out[name] = {}
            continue
        b = base["metrics"]
        out[name] = {"accuracy_loss_pp": 100 * (b["accuracy"] - m["accuracy"]),
                     "compression": b["size_bytes"] / m["size_bytes"]}
    return out


def markdown(results: dict[str, dict[str, Any]], table: Table) -> str:
    """The table as markdown, with a line saying how and when it was produced."""
    if not results:
        return (f"_No results for table `{table.name}` yet: run "
                f"`bench reproduce --table {table.name}`._\n")
    extra = derived(results, table)
    latency = any("latency_ms" in r["metrics"] for r in results.values())
    head = ["row", "accuracy (%)", "loss vs float (pp)", "GMACs", "params (M)", "size (MB)",
            "compression"]
    if latency:
        head += ["latency b1 (ms)", "latency b64 (ms)"]
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
        if latency:
            lat = m.get("latency_ms", {})
            cells += [f"{lat['batch1']:.2f}" if "batch1" in lat else "-",
                      f"{lat['batch64']:.1f}" if "batch64" in lat else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    dates = sorted(r["date"][:10] for r in results.values())
    ds = first["dataset"]
    note = (f"Profile `{first['profile']}`, device `{first['device']}` x{first['world_size']}, "
            f"{ds['name']} {ds['train_images']} train / {ds['test_images']} test images, "
            f"torch {first['torch']}, produced {dates[0]}"
            + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")
            + f" by `bench reproduce --table {table.name} --profile {first['profile']}`. "
            "Size is the packed file on disk.")
    return f"**{table.title}**\n\n" + "\n".join(lines) + f"\n\n{note}\n"


def replace_block(text: str, name: str, block: str) -> str:
    """Replace the text between this table's markers in ``text`` (markers must exist)."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no block for table {name!r}: add the lines\n{begin}\n{end}")
    return pattern.sub(lambda _: f"{begin}\n{block}{end}", text)


def plot(results: dict[str, dict[str, Any]], table: Table, path: Path) -> Path:
    """Accuracy against packed size (log scale) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5), dpi=110)
    markers = "osD^vP*Xph<>"
    for i, row in enumerate(table.rows):
        r = results.get(row.name)
        if r is None:
            continue
        ax.scatter(r["metrics"]["size_bytes"] / 1e6, 100 * r["metrics"]["accuracy"],
                   marker=markers[i % len(markers)], s=40, label=row.label)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("packed size (MB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(table.title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
