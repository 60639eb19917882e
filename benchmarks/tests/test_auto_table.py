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
                 (f"{short}-uniform-prune-w4", f"{short}-auto-prune-mixed"))
        for uniform, auto in pairs:
            u, a = table.row(uniform), table.row(auto)
            assert u.schedule == a.schedule
            assert [s["kind"].split(".")[0] for s in a.stages] == ["auto"]
        assert table.row(f"{short}-auto-prune").stages[0]["config"]["macs_target"] == \
            table.row(uniform_prune).stages[0]["config"]["prune"]["macs_target"] == 0.5


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
