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


# -- the bits and prune tables, per-table profiles, grids, accuracy before training ----------

def test_bits_table_covers_every_weight_activation_pair_once():
    from netshrink.bench.tables.bits import ACTIVATIONS, WEIGHTS

    bits = TABLES.get("bits")
    cells = {r.cell: r for r in bits.rows if r.cell is not None}
    assert set(cells) == {(str(w), str(a)) for w in WEIGHTS for a in ACTIVATIONS}
    assert len(cells) == 30
    for (w, a), row in cells.items():
        if (w, a) == ("32", "32"):
            assert row.name == bits.baseline and not row.stages
            continue
        config = row.stages[0]["config"]
        assert (str(config["w"]), str(config["a"])) == (w, a)
        # binary activations start from the bacp-order float model (BN before the sign)
        assert row.upstream == ("nin-bacp-float" if a == "binary" else "nin-float")
        assert row.schedule.recalibrate_bn > 0


def test_prune_table_compares_every_criterion_and_mode_at_one_macs_target():
    table = TABLES.get("prune")
    configs = [r.stages[0]["config"]["prune"] for r in table.rows if r.stages]
    pairs = {(c["criterion"], c["mode"]) for c in configs}
    assert pairs == {(c, m) for c in ("bn_gamma", "l1", "l2", "fpgm", "taylor", "random")
                     for m in ("normal", "regular")}
    assert {c["macs_target"] for c in configs} == {0.5}
    assert all("amount" not in c for c in configs)
    assert all(c.get("round_to") == 8 for c in configs if c["mode"] == "regular")
    assert all(r.latency for r in table.rows) and table.before_training


def test_grid_cells_are_validated():
    with pytest.raises(ValueError, match="same grid cell"):
        Table(name="t", title="t", baseline="a", grid=("W", "A"), rows=(
            Row("a", "a", cell=("1", "2")), Row("b", "b", cell=("1", "2"))))
    with pytest.raises(ValueError, match="names no grid axes"):
        Table(name="t", title="t", baseline="a", rows=(Row("a", "a", cell=("1", "2")),))


def _fake_result(acc: float, size: int) -> dict:
    return {"metrics": {"accuracy": acc, "gmacs": 0.01, "params": 1000, "size_bytes": size},
            "date": "2026-01-02T00:00:00", "profile": "quick", "device": "cpu",
            "world_size": 1, "torch": "x", "dataset": {"name": "d", "train_images": 1,
                                                       "test_images": 1}}


def test_grid_markdown_puts_each_row_in_its_cell():
    table = Table(name="g", title="G", baseline="f", grid=("W", "A"), rows=(
        Row("f", "float", cell=("32", "32")), Row("b", "b", cell=("32", "bin")),
        Row("c", "c", cell=("2", "32")), Row("extra", "not in the grid")))
    results = {"f": _fake_result(0.5, 4_000_000), "b": _fake_result(0.25, 1_000_000),
               "c": _fake_result(0.125, 250_000), "extra": _fake_result(0.1, 1)}
    text = markdown(results, table)
    assert "| W \\ A | 32 | bin |" in text
    assert "| 32 | 50.00 (4.000 MB) | 25.00 (1.000 MB) |" in text
    assert "| 2 | 12.50 (0.250 MB) | - |" in text  # a cell without a row shows '-'
    assert "| not in the grid | 10.00 |" in text  # every row is still in the full table


def test_before_training_accuracy_and_macs_target_end_to_end(tmp_path: Path):
    from netshrink.bench.tables.recipes import prune

    table = Table(name="toyprune", title="Toy prune", baseline="float", dataset="synthetic",
                  before_training=True, rows=(
                      TOY.rows[0],
                      Row("pruned", "l1 to 60% MACs", upstream="float", schedule=ONE,
                          stages=(prune("l1", macs_target=0.6, scope="per_layer"),),
                          latency=True)))
    results = run_table(_ctx(tmp_path, table), list(table.rows))
    float_m, pruned_m = results[0]["metrics"], results[1]["metrics"]
    assert "accuracy_before_training" not in float_m  # no stages before its training
    before = pruned_m["accuracy_before_training"]
    assert 0.0 <= before <= 1.0
    assert 0.5 < pruned_m["macs"] / float_m["macs"] <= 0.6
    assert set(pruned_m["latency_ms"]) == {"batch1", "batch64"}
    line = next(x for x in markdown(load_results(tmp_path / "res", table), table).splitlines()
                if x.startswith("| l1 to 60% MACs |"))
    assert f"| {100 * before:.2f} |" in line


def test_readme_has_a_block_for_every_published_table():
    from netshrink.bench.tables.report import BEGIN, END

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in TABLES.names():
        if not TABLES.get(name).ci_only:
            assert BEGIN.format(name=name) in readme and END.format(name=name) in readme, name


@pytest.mark.parametrize("plot_x", ["size", "latency"])
def test_plot_writes_a_png_on_either_axis(tmp_path: Path, plot_x: str):
    from netshrink.bench.tables.report import plot

    table = Table(name="p", title="P", baseline="f", plot_x=plot_x,
                  rows=(Row("f", "float"), Row("g", "g")))
    results = {"f": _fake_result(0.5, 4_000_000), "g": _fake_result(0.4, 1_000_000)}
    for r, ms in zip(results.values(), (30.0, 12.0), strict=True):
        r["metrics"]["latency_ms"] = {"batch1": 1.0, "batch64": ms}
    path = plot(results, table, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="plot_x='speed'"):
        Table(name="p", title="P", baseline="f", plot_x="speed", rows=(Row("f", "float"),))
