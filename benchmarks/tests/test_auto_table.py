"""The auto table: its rows pair automatic and uniform compression at the same budget and
schedule; a toy run through the real runner meets the budgets (MACs counted, size read from
the file) and the saved auto rows load back (their stages rebuild from the record)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from netshrink.bench.data import synthetic
from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import NO_TRAINING, PROFILE_SETTINGS, TABLES, Row, Schedule, Table
from netshrink.bench.tables.auto import W4, auto_mixed, auto_prune
from netshrink.bench.tables.report import markdown
from netshrink.bench.tables.runner import FINAL, RunContext, run_table
from netshrink.models import load_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_rows_pair_auto_and_uniform_at_equal_budget_and_schedule() -> None:
    table = TABLES.get("auto")
    # the float rows and the uniform r18 pruning row are the other tables', spec for spec
    assert table.row("r18-float").record("quick") == TABLES.get("prune").row(
        "r18-float").record("quick")
    assert table.row("r18-l1-normal").record("quick") == TABLES.get("prune").row(
        "r18-l1-normal").record("quick")
    assert table.row("nin-float").record("quick") == TABLES.get("bits").row(
        "nin-float").record("quick")
    for short, uniform_prune in (("nin", "nin-uniform-prune"), ("r18", "r18-l1-normal")):
        pairs = ((uniform_prune, f"{short}-auto-prune"),
                 (f"{short}-uniform-w4", f"{short}-auto-mixed"),
                 (f"{short}-uniform-w2", f"{short}-auto-mixed-w2"),
                 (f"{short}-uniform-prune-w4", f"{short}-auto-prune-mixed"))
        for uniform, auto in pairs:
            u, a = table.row(uniform), table.row(auto)
            assert u.schedule == a.schedule
            assert [s["kind"].split(".")[0] for s in a.stages] == ["auto"]
        assert table.row(f"{short}-auto-prune").stages[0]["config"]["macs_target"] == \
            table.row(uniform_prune).stages[0]["config"]["prune"]["macs_target"] == 0.5


def _result(acc: float, recipe: list[dict]) -> dict:
    return {"metrics": {"accuracy": acc, "gmacs": 0.01, "params": 1000, "size_bytes": 1000},
            "recipe": recipe, "date": "2026-01-02T00:00:00", "profile": "quick",
            "device": "cpu", "world_size": 1, "torch": "x",
            "dataset": {"name": "d", "train_images": 1, "test_images": 1}}


def test_search_time_is_a_column_summed_over_the_recipe() -> None:
    table = Table(name="t", title="T", baseline="f", rows=(
        Row("f", "float"), Row("u", "uniform"), Row("a", "auto"), Row("am", "auto then mixed")))
    prune_ = {"kind": "auto.prune", "config": {"macs_target": 0.5, "search_seconds": 12.4}}
    mixed = {"kind": "auto.mixed", "config": {"size_like": 4, "search_seconds": 30.2}}
    results = {"f": _result(0.5, []), "u": _result(0.4, [W4]), "a": _result(0.45, [prune_]),
               "am": _result(0.44, [prune_, mixed])}  # its upstream's search included
    lines = markdown(results, table).splitlines()
    assert lines[2].endswith("| search (s) |")
    assert next(x for x in lines if x.startswith("| uniform |")).endswith("| - |")
    assert next(x for x in lines if x.startswith("| auto |")).endswith("| 12 |")
    assert next(x for x in lines if x.startswith("| auto then mixed |")).endswith("| 43 |")
    no_search = markdown({"f": results["f"], "u": results["u"]}, table)
    assert "search (s)" not in no_search  # other tables keep their columns


ONE = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=0.05, batch_size=32)


@pytest.mark.slow
def test_toy_run_meets_the_budgets_and_loads_back(tmp_path: Path) -> None:
    table = Table(name="autotoy", title="auto toy", baseline="float", dataset="synthetic",
                  rows=(Row("float", "float", model="nin", model_kwargs={"width": 0.4},
                            schedule=ONE),
                        Row("auto-prune", "auto prune", upstream="float",
                            stages=(auto_prune(0.5),), schedule=NO_TRAINING),
                        Row("uniform-w4", "w4", upstream="float", stages=(W4,),
                            schedule=NO_TRAINING),
                        Row("auto-mixed", "mixed", upstream="float", stages=(auto_mixed(4),),
                            schedule=ONE)))
    ctx = RunContext(table=table, profile=PROFILE_SETTINGS["smoke"], env=DistEnv(),
                     results_dir=tmp_path / "res", runs_dir=tmp_path / "runs",
                     train_data=synthetic("train", 512, num_classes=4, size=16),
                     test_data=synthetic("test", 64, num_classes=4, size=16),
                     show_progress=False)
    results = {r["row"]: r["metrics"] for r in run_table(ctx, list(table.rows))}
    assert results["auto-prune"]["macs"] <= 0.5 * results["float"]["macs"]
    assert results["auto-mixed"]["size_bytes"] <= results["uniform-w4"]["size_bytes"]
    for row in ("auto-prune", "auto-mixed"):
        model = load_model(ctx.run_dir(row) / FINAL)  # rebuilt from the recorded choice
        assert model is not None


def test_each_model_s_rows_compare_against_its_own_float_row() -> None:
    """The auto table holds two models: a nin row's loss is against nin-float, not r18-float."""
    from netshrink.bench.tables.report import derived

    table = TABLES.get("auto")

    def result(accuracy: float, size: int) -> dict:
        return {"metrics": {"accuracy": accuracy, "size_bytes": size}}

    results = {"nin-float": result(0.60, 1000), "r18-float": result(0.47, 4000),
               "nin-uniform-w4": result(0.59, 250), "r18-uniform-w4": result(0.46, 500)}
    d = derived(results, table)
    assert d["nin-float"]["accuracy_loss_pp"] == 0
    assert abs(d["nin-uniform-w4"]["accuracy_loss_pp"] - 1.0) < 1e-9
    assert d["nin-uniform-w4"]["compression"] == 4.0
    assert abs(d["r18-uniform-w4"]["accuracy_loss_pp"] - 1.0) < 1e-9
    assert d["r18-uniform-w4"]["compression"] == 8.0
    # a one-model table keeps its single baseline
    micronet = TABLES.get("micronet")
    assert micronet.baseline_of("nin_gc-float") == micronet.baseline
