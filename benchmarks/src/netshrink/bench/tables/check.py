"""Regression gate: compare a table's results with a committed baseline file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Finding:
    row: str
    message: str


def baseline_record(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a baseline file keeps of each row: accuracy, size, params, and how it was made."""
    rows = {}
    for name, r in results.items():
        m = r["metrics"]
        rows[name] = {"accuracy": m["accuracy"], "size_bytes": m["size_bytes"],
                      "params": m["params"], "spec_hash": r["spec_hash"]}
    first = next(iter(results.values()), {})
    return {"profile": first.get("profile"), "device": first.get("device"),
            "torch": first.get("torch"), "rows": rows}


def compare(results: dict[str, dict[str, Any]], baseline: dict[str, Any],
            accuracy_tolerance: float) -> list[Finding]:
    """Regressions: accuracy below baseline by more than the tolerance (absolute, 0..1), size
    or params above baseline, and rows of the baseline with no result."""
    findings = []
    for name, b in baseline["rows"].items():
        r = results.get(name)
        if r is None:
            findings.append(Finding(name, "no result (row missing or not run)"))
            continue
        m = r["metrics"]
        if m["accuracy"] < b["accuracy"] - accuracy_tolerance:
            findings.append(Finding(name, f"accuracy {100 * m['accuracy']:.2f}% < baseline "
                                          f"{100 * b['accuracy']:.2f}% - "
                                          f"{100 * accuracy_tolerance:.1f} pp"))
        if m["size_bytes"] > b["size_bytes"]:
            findings.append(Finding(name, f"size {m['size_bytes']} B > baseline "
                                          f"{b['size_bytes']} B"))
        if m["params"] > b["params"]:
            findings.append(Finding(name, f"params {m['params']} > baseline {b['params']}"))
    return findings


def read_baseline(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no baseline file {path}; create it on purpose with "
                                "`bench check --update`")
    return json.loads(path.read_text())
