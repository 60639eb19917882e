"""`bench check` is strict: a bad tolerance, a broken or foreign baseline, results from another
profile, device or spec, a missing row or a non-finite accuracy never pass."""

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.tables import Row, Table
from netshrink.bench.tables.check import (
    BaselineError,
    baseline_record,
    check_tolerance,
    compare,
    read_baseline,
    tolerance_from_points,
)

REPO = Path(__file__).resolve().parents[2]
A = Table(name="gate_a", title="A", baseline="x", dataset="synthetic",
          rows=(Row("x", "x"), Row("y", "y")))
B = Table(name="gate_b", title="B", baseline="z", dataset="synthetic", rows=(Row("z", "z"),))


def _result(table: str, row: str, accuracy=0.5, profile="smoke", device="cpu") -> dict:
    return {"table": table, "row": row, "profile": profile, "device": device,
            "spec_hash": f"hash-{row}", "torch": "2",
            "metrics": {"accuracy": accuracy, "size_bytes": 1000, "params": 10}}


def _results(table: Table, **kwargs) -> dict:
    return {r.name: _result(table.name, r.name, **kwargs) for r in table.rows}


RES = _results(A)
BASE = baseline_record(RES, "gate_a")


def _messages(findings) -> str:
    return "\n".join(f"{f.row}: {f.message}" for f in findings)


def test_the_same_results_pass_and_the_record_names_its_table():
    assert BASE["table"] == "gate_a" and BASE["profile"] == "smoke"
    assert compare(RES, BASE, 0.05) == []


@pytest.mark.parametrize("tol", [float("nan"), float("inf"), -0.01, 1.5, True, "0.1"])
def test_a_tolerance_that_is_not_a_finite_fraction_is_refused(tol):
    worse = copy.deepcopy(RES)
    worse["x"]["metrics"]["accuracy"] = 0.01  # a fall that nan/inf would let through
    with pytest.raises(ValueError, match="accuracy tolerance .* is not allowed"):
        compare(worse, BASE, tol)
    with pytest.raises(ValueError):
        check_tolerance(tol)


@pytest.mark.parametrize("points", [float("nan"), float("inf"), -1.0, 101.0])
def test_the_cli_tolerance_is_checked_in_points(points):
    with pytest.raises(ValueError, match="--tolerance .* finite number of percentage points"):
        tolerance_from_points(points)
    assert tolerance_from_points(5.0) == 0.05


@pytest.mark.parametrize("key, value, expected", [
    ("profile", "quick", "profile differs: results from quick, baseline from smoke"),
    ("device", "cuda:0", "device differs: results from cuda, baseline from cpu"),
])
def test_results_from_another_profile_or_device_fail(key, value, expected):
    other = copy.deepcopy(RES)
    for r in other.values():
        r[key] = value
    assert expected in _messages(compare(other, BASE, 0.05))


def test_a_cuda_index_is_the_same_device_kind():
    base = baseline_record(_results(A, device="cuda:0"), "gate_a")
    assert compare(_results(A, device="cuda:1"), base, 0.05) == []


def test_a_row_made_from_another_spec_fails():
    other = copy.deepcopy(RES)
    other["y"]["spec_hash"] = "something-else"
    assert "y: spec_hash differs: result something-else, baseline hash-y" in _messages(
        compare(other, BASE, 0.05))


@pytest.mark.parametrize("accuracy", [float("nan"), None, float("inf")])
def test_a_non_finite_accuracy_fails(accuracy):
    other = copy.deepcopy(RES)
    other["x"]["metrics"]["accuracy"] = accuracy
    assert f"x: accuracy {accuracy!r} is not a finite number" in _messages(
        compare(other, BASE, 0.05))


def test_a_nan_size_fails():
    other = copy.deepcopy(RES)
    other["x"]["metrics"]["size_bytes"] = float("nan")
    assert "x: size nan is not a finite number" in _messages(compare(other, BASE, 0.05))


def test_a_missing_row_fails():
    assert "y: no result" in _messages(compare({"x": RES["x"]}, BASE, 0.05))


@pytest.mark.parametrize("content, expected", [
    ('{"table": "gate_a", "profile": "smoke", "device": "cpu", "rows": {}}', "has no rows"),
    ('{"table": "gate_a", "profile": "smoke", "device": "cpu", "rows": {"x": {"accur',
     "is not valid JSON"),
    ('[1, 2]', "expected a JSON object, got list"),
    ('{"profile": "smoke", "device": "cpu", "rows": {"x": {}}}', "records no 'table'"),
    ('{"table": "gate_a", "device": "cpu", "rows": {"x": {}}}', "records no 'profile'"),
    ('{"table": "gate_a", "profile": "smoke", "rows": {"x": {}}}', "records no 'device'"),
    ('{"table": "gate_a", "profile": "smoke", "device": "cpu", "rows": [1]}',
     "'rows' must map row names"),
    ('{"table": "gate_b", "profile": "smoke", "device": "cpu", "rows": {"z": {}}}',
     "baseline of table 'gate_b', not of table 'gate_a'"),
    ('{"table": "gate_a", "profile": "smoke", "device": "cpu", "rows": {"x": '
     '{"accuracy": NaN, "size_bytes": 1, "params": 1, "spec_hash": "h"}}}', "NaN"),
    ('{"table": "gate_a", "profile": "smoke", "device": "cpu", "rows": {"x": '
     '{"accuracy": 0.5, "size_bytes": 1, "params": 1}}}', "needs finite numbers"),
])
def test_a_broken_or_foreign_baseline_is_an_error_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "base.json"
    path.write_text(content)
    with pytest.raises(BaselineError, match="base.json") as info:
        read_baseline(path, "gate_a")
    assert expected in str(info.value)


def test_an_empty_baseline_given_directly_is_refused():
    with pytest.raises(BaselineError, match="has no rows"):
        compare(RES, {**BASE, "rows": {}}, 0.05)


def test_the_committed_smoke_baseline_is_valid():
    base = read_baseline(REPO / "benchmarks" / "baselines" / "smoke-cpu.json", "smoke")
    assert base["profile"] == "smoke" and base["device"] == "cpu" and len(base["rows"]) == 5


# -- the command --------------------------------------------------------------------------

def _write(folder: Path, results: dict) -> None:
    for name, r in results.items():
        path = folder / r["table"] / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))


@pytest.fixture
def tables(monkeypatch):
    from netshrink.bench.tables import spec as spec_module

    monkeypatch.setitem(spec_module.TABLES._items, "gate_a", A)
    monkeypatch.setitem(spec_module.TABLES._items, "gate_b", B)
    # --table all means the tables reproduce --table all runs: just these two here
    for name in list(spec_module.TABLES._items):
        if name not in ("gate_a", "gate_b"):
            monkeypatch.delitem(spec_module.TABLES._items, name)


def test_cli_tolerance_nan_and_inf_are_usage_errors(tmp_path, tables):
    _write(tmp_path / "res", RES)
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    for tol in ("nan", "inf"):
        out = CliRunner().invoke(app, ["check", "--table", "gate_a", "--results",
                                       str(tmp_path / "res"), "--baseline",
                                       str(tmp_path / "base.json"), "--tolerance", tol])
        assert out.exit_code == 2 and "--tolerance" in out.output, out.output


def test_cli_other_profile_fails_with_the_reason(tmp_path, tables):
    _write(tmp_path / "res", _results(A, profile="quick"))
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    out = CliRunner().invoke(app, ["check", "--table", "gate_a", "--results",
                                   str(tmp_path / "res"), "--baseline",
                                   str(tmp_path / "base.json")])
    assert out.exit_code == 1 and "profile differs" in out.output, out.output


def test_cli_table_all_checks_every_table_and_fails_on_a_missing_baseline(tmp_path, tables):
    res, bases = tmp_path / "res", tmp_path / "baselines"
    bases.mkdir()
    rb = _results(B)
    _write(res, RES)
    _write(res, rb)
    (bases / "a-cpu.json").write_text(json.dumps(BASE))
    args = ["check", "--table", "all", "--results", str(res), "--baseline", str(bases)]
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code == 1, missing.output
    assert "no regression in table gate_a" in missing.output
    assert "table gate_b: no baseline" in missing.output
    (bases / "b-cpu.json").write_text(json.dumps(baseline_record(rb, "gate_b")))
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0, ok.output
    assert "no regression in table gate_a" in ok.output
    assert "no regression in table gate_b" in ok.output
    # a regression in the second table fails the whole check (it used to check only the first)
    worse = copy.deepcopy(rb)
    worse["z"]["metrics"]["accuracy"] = 0.01
    _write(res, worse)
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 1 and "REGRESSION in table gate_b" in bad.output, bad.output


def test_cli_update_writes_a_baseline_that_records_its_table(tmp_path, tables):
    _write(tmp_path / "res", RES)
    base = tmp_path / "new.json"
    out = CliRunner().invoke(app, ["check", "--table", "gate_a", "--results",
                                   str(tmp_path / "res"), "--baseline", str(base), "--update"])
    assert out.exit_code == 0, out.output
    assert read_baseline(base, "gate_a")["table"] == "gate_a"
