import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import PROFILE_SETTINGS, PROFILES, TABLES, Row, Schedule, Table
from netshrink.bench.tables.check import baseline_record, compare
from netshrink.bench.tables.report import load_results, markdown, replace_block
from netshrink.bench.tables.runner import RunContext, load_table_data, run_table

ONE = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=0.05, batch_size=256)
TOY = Table(name="toy", title="Toy", baseline="float", dataset="synthetic", rows=(
    Row("float", "float", model="nin", model_kwargs={"width": 0.4}, schedule=ONE),
    Row("again", "float, one more epoch", upstream="float", schedule=ONE),
))


def _ctx(tmp_path: Path, table: Table = TOY) -> RunContext:
    profile = PROFILE_SETTINGS["smoke"]
    train, test = load_table_data(table, profile, tmp_path)
    return RunContext(table=table, profile=profile, env=DistEnv(), results_dir=tmp_path / "res",
                      runs_dir=tmp_path / "runs", train_data=train, test_data=test,
                      show_progress=False)


def test_registered_tables_are_valid_and_every_row_builds():
    from netshrink.core import stage_from_description

    assert "micronet" in TABLES and "smoke" in TABLES
    for name in TABLES.names():
        table = TABLES.get(name)
        for row in table.rows:
            for profile in PROFILES:
                assert row.schedule.epochs[profile] >= 0
                json.dumps(row.record(profile))  # JSON-able, so hashable
            for record in row.stages:
                stage_from_description(record)  # every recipe's stages build


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="upstream 'later'"):
        Table(name="t", title="t", baseline="a", rows=(
            Row("a", "a", upstream="later"), Row("later", "later")))
    with pytest.raises(ValueError, match="baseline 'x' is not a row"):
        Table(name="t", title="t", baseline="x", rows=(Row("a", "a"),))
    with pytest.raises(ValueError, match="no entry for profile 'smoke'"):
        Schedule(epochs={"full": 1, "quick": 1})


def test_run_caches_and_reruns_only_what_changed(tmp_path: Path):
    seen: list[tuple[str, str]] = []
    ctx = _ctx(tmp_path)
    first = run_table(ctx, list(TOY.rows), on_row=lambda r, s: seen.append((r.name, s)))
    assert seen == [("float", "running"), ("again", "running")]
    assert first[1]["history"][0]["epoch"] == 1
    assert (tmp_path / "res" / "toy" / "float.json").is_file()
    seen.clear()
    run_table(ctx, list(TOY.rows), on_row=lambda r, s: seen.append((r.name, s)))
    assert seen == [("float", "cached"), ("again", "cached")]
    # change the downstream row only: the upstream stays cached
    changed = Table(name="toy", title="Toy", baseline="float", dataset="synthetic", rows=(
        TOY.rows[0], Row("again", "float, one more epoch", upstream="float",
                         schedule=Schedule(epochs={p: 1 for p in PROFILES}, lr=0.02,
                                           batch_size=256))))
    seen.clear()
    run_table(_ctx(tmp_path, changed), list(changed.rows),
              on_row=lambda r, s: seen.append((r.name, s)))
    assert seen == [("float", "cached"), ("again", "running")]
    # change the upstream: everything downstream reruns
    seen.clear()
    upstream_changed = Table(name="toy", title="Toy", baseline="float", dataset="synthetic",
                             rows=(Row("float", "float", model="nin",
                                       model_kwargs={"width": 0.3}, schedule=ONE),
                                   changed.rows[1]))
    run_table(_ctx(tmp_path, upstream_changed), list(upstream_changed.rows),
              on_row=lambda r, s: seen.append((r.name, s)))
    assert seen == [("float", "running"), ("again", "running")]


def test_interrupted_row_resumes_from_its_checkpoint(tmp_path: Path):
    two = Table(name="toy", title="Toy", baseline="float", dataset="synthetic", rows=(
        Row("float", "float", model="nin", model_kwargs={"width": 0.4},
            schedule=Schedule(epochs={p: 2 for p in PROFILES}, lr=0.05, batch_size=256)),))
    ctx = _ctx(tmp_path, two)
    result = run_table(ctx, list(two.rows))[0]
    # simulate a crash after epoch 1: drop the result and the newer checkpoint
    (tmp_path / "res" / "toy" / "float.json").unlink()
    (tmp_path / "runs" / "toy" / "float" / "checkpoints" / "epoch-0002.safetensors").unlink()
    again = run_table(ctx, list(two.rows))[0]
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    assert again["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished run of the toy table, shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("toy")
    run_table(_ctx(root), list(TOY.rows))
    return root


def test_report_matches_results_and_readme_block_is_regenerated_identically(finished: Path):
    results = load_results(finished / "res", TOY)
    text = markdown(results, TOY)
    for name, r in results.items():
        label = TOY.row(name).label
        line = next(x for x in text.splitlines() if x.startswith(f"| {label} |"))
        assert f"| {100 * r['metrics']['accuracy']:.2f} |" in line
        assert f"| {r['metrics']['size_bytes'] / 1e6:.3f} |" in line
    readme = "intro\n<!-- bench:table:toy:begin -->\nold\n<!-- bench:table:toy:end -->\nrest\n"
    once = replace_block(readme, "toy", text)
    assert replace_block(once, "toy", text) == once
    assert once.startswith("intro\n") and once.endswith("rest\n") and "old" not in once
    with pytest.raises(ValueError, match="no block for table 'other'"):
        replace_block(readme, "other", text)


def test_check_passes_on_baseline_and_fails_on_planted_regressions(finished: Path):
    results = load_results(finished / "res", TOY)
    base = baseline_record(results)
    assert compare(results, base, 0.02) == []
    worse = json.loads(json.dumps(results))
    worse["again"]["metrics"]["accuracy"] -= 0.05
    worse["float"]["metrics"]["size_bytes"] += 1
    found = compare(worse, base, 0.02)
    assert [(f.row, f.message.split()[0]) for f in found] == [("float", "size"),
                                                              ("again", "accuracy")]
    del worse["again"]
    assert any(f.row == "again" and "no result" in f.message for f in compare(worse, base, 0.02))


def test_check_cli_exit_codes(finished: Path, tmp_path: Path, monkeypatch):
    from netshrink.bench.tables import spec as spec_module

    monkeypatch.setitem(spec_module.TABLES._items, "toy", TOY)
    runner = CliRunner()
    base = tmp_path / "base.json"
    args = ["check", "--table", "toy", "--results", str(finished / "res"), "--baseline",
            str(base)]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2 and "bench check --update" in missing.output
    assert runner.invoke(app, [*args, "--update"]).exit_code == 0
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0 and "no regression" in ok.output
    record = json.loads(base.read_text())
    record["rows"]["float"]["accuracy"] += 0.5
    base.write_text(json.dumps(record))
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1 and "REGRESSION" in bad.output and "float: accuracy" in bad.output
