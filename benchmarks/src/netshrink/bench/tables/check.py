"""Regression gate: compare a table's results with a committed baseline file.

The gate is strict, because a gate that passes by accident is worse than none:

* the baseline must be a baseline of this table (it records its ``table``, ``profile``,
  ``device`` and at least one row, each with finite numbers and its ``spec_hash``); anything
  else is a ``BaselineError`` naming the file;
* the tolerance must be a finite fraction in [0, 1];
* the results must come from the baseline's profile and device kind (``cpu``, ``cuda``), and
  each row from the same spec (its ``spec_hash``): comparing a quick-profile GPU run with a
  smoke CPU baseline means nothing, so it fails and says which differs;
* a baseline row with no result, or with a non-finite accuracy, fails;
* every comparison is written so that NaN fails it (``not (acc >= limit)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netshrink.bench.engine.jsonfile import NonStandardJSONError, read_json

#: What each baseline row must hold.
ROW_FIELDS = ("accuracy", "size_bytes", "params", "spec_hash")
#: What a baseline file must hold besides its rows.
TOP_FIELDS = ("table", "profile", "device")
WHOLE_TABLE = "(all rows)"


class BaselineError(ValueError):
    """A baseline file that cannot be used: not JSON, wrong shape, empty, another table's."""


@dataclass(frozen=True)
class Finding:
    row: str
    message: str


def baseline_record(results: dict[str, dict[str, Any]], table: str | None = None
                    ) -> dict[str, Any]:
    """What a baseline file keeps of each row: accuracy, size, params, and how it was made;
    plus the table, profile and device it belongs to."""
    rows = {}
    for name, r in results.items():
        m = r["metrics"]
        rows[name] = {"accuracy": m["accuracy"], "size_bytes": m["size_bytes"],
                      "params": m["params"], "spec_hash": r["spec_hash"]}
    first = next(iter(results.values()), {})
    return {"table": table if table is not None else first.get("table"),
            "profile": first.get("profile"), "device": first.get("device"),
            "torch": first.get("torch"), "rows": rows}


def check_tolerance(accuracy_tolerance: float) -> float:
    """The tolerance as a float, if it is a finite fraction in [0, 1]; else ValueError."""
    value = accuracy_tolerance
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"accuracy tolerance {value!r} is not allowed: give a finite fraction "
                         "in [0, 1] (the CLI's --tolerance: percentage points in [0, 100])")
    return float(value)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def validate_baseline(baseline: Any, where: str = "the baseline",
                      table: str | None = None) -> dict[str, Any]:
    """``baseline`` if it has the shape the gate needs (see the module docstring), else
    BaselineError naming ``where``. With ``table``, it must be that table's baseline."""
    hint = "write one on purpose with `bench check --update`"
    if not isinstance(baseline, dict):
        raise BaselineError(f"{where} is not a baseline: expected a JSON object, got "
                            f"{type(baseline).__name__}; {hint}")
    for key in TOP_FIELDS:
        if not isinstance(baseline.get(key), str) or not baseline[key]:
            raise BaselineError(f"{where} is not a baseline: it records no {key!r} (a string); "
                                f"{hint}")
    if table is not None and baseline["table"] != table:
        raise BaselineError(f"{where} is the baseline of table {baseline['table']!r}, not of "
                            f"table {table!r}")
    rows = baseline.get("rows")
    if not isinstance(rows, dict):
        raise BaselineError(f"{where} is not a baseline: 'rows' must map row names to their "
                            f"numbers; {hint}")
    if not rows:
        raise BaselineError(f"{where} has no rows: an empty baseline checks nothing; {hint}")
    for name, row in rows.items():
        ok = isinstance(row, dict) and all(
            _is_number(row.get(k)) for k in ("accuracy", "size_bytes", "params")) and \
            isinstance(row.get("spec_hash"), str)
        if not ok:
            raise BaselineError(f"{where}: row {name!r} needs finite numbers 'accuracy', "
                                f"'size_bytes', 'params' and a string 'spec_hash'; got {row!r}")
    return baseline


def _device_kind(device: Any) -> str:
    return str(device).split(":", 1)[0]


def _provenance(results: dict[str, dict[str, Any]], baseline: dict[str, Any]) -> list[Finding]:
    """Profile and device kind of the results against the baseline's (one finding each)."""
    findings = []
    for key, kind in (("profile", str), ("device", _device_kind)):
        want = kind(baseline[key])
        got = sorted({kind(r.get(key)) for r in results.values()})
        if got != [want]:
            findings.append(Finding(WHOLE_TABLE, f"{key} differs: results from "
                                                 f"{', '.join(got)}, baseline from {want}; "
                                                 "compare against a baseline made the same way"))
    return findings


def compare(results: dict[str, dict[str, Any]], baseline: dict[str, Any],
            accuracy_tolerance: float) -> list[Finding]:
    """Regressions and mismatches: results from another profile or device kind, a row made
    from another spec, accuracy below baseline by more than the tolerance (absolute, in
    [0, 1]) or not a finite number, size or params above baseline, and rows of the baseline
    with no result. Raises ValueError for a bad tolerance, BaselineError for a bad baseline."""
    tol = check_tolerance(accuracy_tolerance)
    validate_baseline(baseline)
    findings = _provenance(results, baseline)
    for name, b in baseline["rows"].items():
        r = results.get(name)
        if r is None:
            findings.append(Finding(name, "no result (row missing or not run)"))
            continue
        if r.get("spec_hash") != b["spec_hash"]:
            findings.append(Finding(name, f"spec_hash differs: result {r.get('spec_hash')}, "
                                          f"baseline {b['spec_hash']} (the row was made from "
                                          "another spec, data or device)"))
        m = r["metrics"]
        acc = m.get("accuracy")
        if not _is_number(acc):
            findings.append(Finding(name, f"accuracy {acc!r} is not a finite number"))
        elif not acc >= b["accuracy"] - tol:
            findings.append(Finding(name, f"accuracy {100 * acc:.2f}% < baseline "
                                          f"{100 * b['accuracy']:.2f}% - {100 * tol:.1f} pp"))
        for key, unit in (("size_bytes", " B"), ("params", "")):
            now = m.get(key)
            if not (_is_number(now) and now <= b[key]):
                label = "size" if key == "size_bytes" else key
                findings.append(Finding(name, f"{label} {now}{unit} > baseline {b[key]}{unit}"
                                        if _is_number(now) else
                                        f"{label} {now!r} is not a finite number"))
    return findings


def read_baseline(path: Path, table: str | None = None) -> dict[str, Any]:
    """Read and validate a baseline file (strict JSON); errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"no baseline file {path}; create it on purpose with "
                                "`bench check --update`")
    try:
        data = read_json(path)
    except NonStandardJSONError as err:
        raise BaselineError(f"baseline {path} cannot be read: {err} (truncated or edited by "
                            "hand?)") from err
    return validate_baseline(data, f"baseline {path}", table)


def tolerance_from_points(points: float) -> float:
    """The CLI's ``--tolerance`` (percentage points, finite, in [0, 100]) as a fraction."""
    if isinstance(points, bool) or not isinstance(points, (int, float)) or not (
            math.isfinite(points) and 0.0 <= points <= 100.0):
        raise ValueError(f"--tolerance {points!r} is not allowed: give a finite number of "
                         "percentage points in [0, 100]")
    return points / 100


def baseline_for(folder: Path, table: str, results: dict[str, dict[str, Any]]) -> Path | None:
    """The baseline file of ``table`` among ``folder``'s ``*.json`` files (each records its
    table): the one made with the results' profile and device kind if there are several, else
    the first by name (whose mismatch the check then reports); None if there is none. Every
    file is read strictly: a broken file in the folder is an error, not a skipped file."""
    found = []
    for path in sorted(folder.glob("*.json")):
        data = read_baseline(path)
        if data["table"] == table:
            found.append((path, data))
    if not found:
        return None
    made = {(r.get("profile"), _device_kind(r.get("device"))) for r in results.values()}
    for path, data in found:
        if {(data["profile"], _device_kind(data["device"]))} == made:
            return path
    return found[0][0]
