"""The deployment table: its rows reuse other tables' rows (same spec, trained once), each
measured row is exported to ONNX and measured in ONNX Runtime, and the report renders the
README's deployment columns."""

from pathlib import Path

import pytest

from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import PROFILE_SETTINGS, TABLES, Row, Schedule, Table
from netshrink.bench.tables.deploy import DEPLOY, FORMS, ONNX_FILE, _float_file, deploy_markdown
from netshrink.bench.tables.micronet import MICRONET
from netshrink.bench.tables.prune import PRUNE
from netshrink.bench.tables.report import markdown
from netshrink.bench.tables.runner import RunContext, load_table_data, run_table

ONE = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=0.05, batch_size=256)
FLOAT = Row("float", "float", model="nin", model_kwargs={"width": 0.3}, schedule=ONE)
TUNED = Row("tuned", "float, one more epoch", upstream="float", schedule=ONE)


def _ctx(tmp_path: Path, table: Table) -> RunContext:
    profile = PROFILE_SETTINGS["smoke"]
    train, test = load_table_data(table, profile, tmp_path)
    return RunContext(table=table, profile=profile, env=DistEnv(), results_dir=tmp_path / "res",
                      runs_dir=tmp_path / "runs", train_data=train, test_data=test,
                      show_progress=False)


def _run(tmp_path: Path, table: Table) -> tuple[list[dict], list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    results = run_table(_ctx(tmp_path, table), list(table.rows),
                        on_row=lambda r, s: seen.append((r.name, s)))
    return results, seen


def test_deploy_table_reuses_the_other_tables_rows_and_measures_each_form():
    assert "deploy" in TABLES.names() and not DEPLOY.ci_only  # part of --table all
    assert DEPLOY.deploy_rows == tuple(FORMS)
    by_name = {r.name: r for r in DEPLOY.rows}
    # the very rows of micronet / prune (same spec, same hash): trained once, then reused
    for source in (MICRONET, PRUNE):
        for row in source.rows:
            if row.name in by_name:
                assert by_name[row.name] == row, row.name
    new = [r.name for r in DEPLOY.rows
           if r.name not in {x.name for x in (*MICRONET.rows, *PRUNE.rows)}]
    assert new == ["nin-int8-all", "nin-pruned50-int8", "r18-int8", "r18-pruned-int8",
                   "r18-wbin-abin"]
    # the int8 forms quantize every conv, the first and the last too, as deployment does
    for name in new[:-1]:
        (stage,) = by_name[name].stages
        assert stage["config"] == {"w": 8, "a": 8, "scheme": "int8_affine", "first": "same",
                                   "last": "same"}, name
    for arch in ("nin", "resnet18_cifar"):
        forms = {form for a, form, _ in FORMS.values() if a == arch}
        assert {"float", "int8 QAT", "binary W / A (int8 kernels)"} <= forms
        assert any(f.startswith("pruned") and "int8" in f for f in forms)
    assert all(base in FORMS and FORMS[base][1] == "float" for _, _, base in FORMS.values())


def test_deploy_rows_must_be_rows():
    with pytest.raises(ValueError, match=r"deploy_rows \['nope'\] are not rows"):
        Table(name="t", title="t", baseline="a", rows=(Row("a", "a"),), deploy_rows=("nope",))


def test_a_row_finished_in_another_table_is_reused_not_retrained(tmp_path: Path):
    first = Table(name="first", title="First", baseline="float", dataset="synthetic",
                  rows=(FLOAT, TUNED))
    done, _ = _run(tmp_path, first)
    other_float = Row("float", "float", model="nin", model_kwargs={"width": 0.2},
                      schedule=ONE)
    second = Table(name="second", title="Second", baseline="float", dataset="synthetic",
                   rows=(FLOAT, TUNED, Row("more", "more", upstream="tuned", schedule=ONE)))
    results, seen = _run(tmp_path, second)
    assert seen == [("float", "reused from first/float"), ("tuned", "reused from first/tuned"),
                    ("more", "running")]
    runs = tmp_path / "runs"
    for name in ("float", "tuned"):
        assert (runs / "second" / name / "final.safetensors").read_bytes() == \
            (runs / "first" / name / "final.safetensors").read_bytes()
    assert results[1]["table"] == "second" and results[1]["spec_hash"] == done[1]["spec_hash"]
    assert results[1]["metrics"]["accuracy"] == done[1]["metrics"]["accuracy"]
    _, seen = _run(tmp_path, second)  # now this table's own cache
    assert seen == [("float", "cached"), ("tuned", "cached"), ("more", "cached")]
    # a row of the same name with another spec is trained, not reused
    third = Table(name="third", title="Third", baseline="float", dataset="synthetic",
                  rows=(other_float,))
    _, seen = _run(tmp_path, third)
    assert seen == [("float", "running")]


def test_a_row_is_not_reused_from_a_table_that_did_not_measure_what_this_one_reports(
        tmp_path: Path):
    pruned = Row("pruned", "pruned", upstream="float", schedule=ONE,
                 stages=({"kind": "prune.channels",
                          "config": {"prune": {"criterion": "l1", "amount": 0.25}}},))
    plain = Table(name="plain", title="Plain", baseline="float", dataset="synthetic",
                  rows=(FLOAT, pruned))
    _run(tmp_path, plain)
    wants = Table(name="wants", title="Wants", baseline="float", dataset="synthetic",
                  rows=(FLOAT, pruned), before_training=True)
    results, seen = _run(tmp_path, wants)  # the pruned row lacks accuracy right after pruning
    assert seen == [("float", "reused from plain/float"), ("pruned", "running")]
    assert "accuracy_before_training" in results[1]["metrics"]


@pytest.mark.slow
def test_deploy_rows_are_exported_measured_and_reported(tmp_path: Path):
    quant = Row("int8", "int8", upstream="float",
                stages=({"kind": "quant.quantize",
                         "config": {"w": 8, "a": 8, "scheme": "int8_affine"}},),
                schedule=ONE)  # QAT: the activation observers need data
    table = Table(name="dep", title="Dep", baseline="float", dataset="synthetic",
                  rows=(FLOAT, quant), deploy_rows=("float", "int8"))
    results, _ = _run(tmp_path, table)
    for r in results:
        d = r["metrics"]["deploy"]
        assert d["file"] == ONNX_FILE
        assert (tmp_path / "runs" / "dep" / r["row"] / ONNX_FILE).stat().st_size == \
            d["file_bytes"]
        ort = d["runtimes"]["onnxruntime"]
        assert ort["agreement"] >= 0.95 and ort["finite"]
        assert ort["images"] == 512  # the smoke profile's test images
        assert set(ort["latency_ms"]) == {"batch1", "batch64"}
    assert results[0]["metrics"]["deploy"]["runtimes"]["onnxruntime"]["integer_layers"] == {}
    assert results[1]["metrics"]["deploy"]["runtimes"]["onnxruntime"]["integer_layers"]
    # int8 weights: the file is smaller than the float one (a tiny model: the graph counts,
    # and its 12- and 14-channel convs are padded to 16: netshrink.deploy.align)
    assert results[1]["metrics"]["deploy"]["file_bytes"] < \
        0.85 * results[0]["metrics"]["deploy"]["file_bytes"]
    text = markdown({r["row"]: r for r in results}, table)
    assert text == deploy_markdown({r["row"]: r for r in results}, table)
    lines = [ln for ln in text.splitlines() if ln.startswith("| float") or
             ln.startswith("| int8")]
    assert len(lines) == 2
    assert "| x1.00 |" in lines[0]  # the float row against itself
    ratio = (results[0]["metrics"]["deploy"]["runtimes"]["onnxruntime"]["latency_ms"]["batch64"]
             / results[1]["metrics"]["deploy"]["runtimes"]["onnxruntime"]["latency_ms"]
             ["batch64"])
    assert f"x{ratio:.2f}" in lines[1]


def test_deploy_markdown_without_measurements_says_how_to_get_them():
    assert "bench reproduce --table deploy" in deploy_markdown({}, DEPLOY)


def _measured(b1: float, b64: float, paired: dict | None = None) -> dict:
    ort = {"runtime": "onnxruntime", "version": "1.32.0", "accuracy": 0.5, "agreement": 1.0,
           "latency_ms": {"batch1": b1, "batch64": b64}, "integer_layers": {}}
    if paired is not None:
        ort["paired"] = {"speedup": paired}
    return {"metrics": {"deploy": {"file_bytes": 1000, "runtimes": {"onnxruntime": ort}}},
            "dataset": {"name": "cifar10", "test_images": 1017}, "profile": "quick",
            "date": "2026-12-02T00:00:00"}


def test_a_row_paired_with_its_float_file_reports_the_paired_speedup(tmp_path: Path):
    """A row timed in rounds alternating with its float model's file reports the median of
    the per-round ratios, not the ratio of two medians taken minutes apart."""
    results = {"nin-float": _measured(0.40, 40.0),
               "nin-int8-all": _measured(0.25, 20.0, {"batch1": 1.93, "batch64": 2.21}),
               "nin-pruned50": _measured(0.20, 10.0)}  # not paired: the ratio of medians
    lines = {ln.split(" | ")[1]: ln for ln in deploy_markdown(results, DEPLOY).splitlines()
             if ln.startswith("| nin")}
    assert "| 0.25 | x1.93 | 20.00 | x2.21 |" in lines["int8 QAT"]
    assert "| 0.20 | x2.00 | 10.00 | x4.00 |" in lines["pruned 50% channels"]
    assert "| x1.00 |" in lines["float"]
    runs = tmp_path / "deploy"
    assert _float_file(runs / "nin-int8-all") is None  # the float row's file is not written yet
    (runs / "nin-float").mkdir(parents=True)
    (runs / "nin-float" / ONNX_FILE).write_bytes(b"onnx")
    assert _float_file(runs / "nin-int8-all") == runs / "nin-float" / ONNX_FILE
    assert _float_file(runs / "nin-float") is None  # a float row is its own reference
    assert _float_file(runs / "not-a-deploy-row") is None
