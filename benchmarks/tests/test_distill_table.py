"""The distill table, and the table machinery it needs: a row's teacher (an earlier row whose
final model the row's distill.kd stage learns from) and a row's seed."""

from pathlib import Path

import pytest
import torch

from netshrink.bench.data import synthetic
from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import PROFILE_SETTINGS, TABLES, Row, Schedule, Table
from netshrink.bench.tables.distill import ROUNDS, SEEDS, round_amounts
from netshrink.bench.tables.recipes import quantize
from netshrink.bench.tables.report import load_results, markdown
from netshrink.bench.tables.runner import RunContext, run_table
from netshrink.models import load_model

# -- the registered table -----------------------------------------------------------------------


def test_distill_table_has_the_pipeline_rows():
    table = TABLES.get("distill")
    teacher = table.row(table.baseline)
    assert teacher.model == "resnet18_cifar" and not teacher.stages and teacher.teacher is None
    # the prune table's float model, spec for spec: --table all trains it once for both
    assert teacher.record("quick") == TABLES.get("prune").row(teacher.name).record("quick")
    for seed in SEEDS:
        alone, kd = table.row(f"mbs-alone-s{seed}"), table.row(f"mbs-kd-s{seed}")
        assert alone.model == kd.model == "mobilenet_student"
        assert alone.schedule == kd.schedule and alone.seed == kd.seed == seed  # same schedule
        assert alone.teacher is None and not alone.stages
        assert kd.teacher == teacher.name and [s["kind"] for s in kd.stages] == ["distill.kd"]
        assert teacher.name in kd.label
    assert len(set(SEEDS)) == 2
    # three slimming rounds, a chain from the seed-0 distilled student, fine-tuned with KD
    upstream = f"mbs-kd-s{SEEDS[0]}"
    for i in range(1, len(ROUNDS) + 1):
        row = table.row(f"mbs-kd-slim{i}")
        assert row.upstream == upstream and row.teacher == teacher.name
        assert [s["kind"] for s in row.stages] == ["prune.channels", "prune.slimming",
                                                   "distill.kd"]
        assert row.schedule.epochs["quick"] >= 1 and teacher.name in row.label
        upstream = row.name
    assert len(ROUNDS) == 3 and list(ROUNDS) == sorted(set(ROUNDS))  # increasing rates
    # then the final student's weights in 8 and 16 bits, every layer, no training
    storage = [r for r in table.rows if r.upstream == upstream]
    configs = {r.name: r.stages[0]["config"] for r in storage}
    assert [(c["w"], c.get("scheme", "dorefa")) for c in configs.values()] == [
        (8, "uint8_minmax"), (16, "dorefa")]
    assert all(c["first"] == c["last"] == "same" and c["a"] == 32 for c in configs.values())
    assert all(r.schedule.epochs["quick"] == 0 for r in storage)


def test_round_amounts_remove_the_cumulative_fractions():
    amounts = round_amounts((0.25, 0.5, 0.7))
    kept = 1.0
    for amount, removed in zip(amounts, (0.25, 0.5, 0.7), strict=True):
        kept *= 1.0 - amount
        assert kept == pytest.approx(1.0 - removed, abs=1e-6)
    assert amounts == pytest.approx([0.25, 1 / 3, 0.4], abs=1e-6)
    with pytest.raises(ValueError, match="must increase"):
        round_amounts((0.5, 0.25))


# -- Row.teacher and Row.seed --------------------------------------------------------------------


def test_teacher_and_seed_are_validated_and_left_out_of_old_rows_records():
    plain = Row("a", "a")
    assert "teacher" not in plain.record("quick") and "seed" not in plain.record("quick")
    assert Row("b", "b", teacher="a", seed=1).record("quick")["teacher"] == "a"
    assert Row("b", "b", seed=1).record("quick")["seed"] == 1
    with pytest.raises(ValueError, match="teacher 'later'"):
        Table(name="t", title="t", baseline="a", rows=(
            Row("a", "a", teacher="later"), Row("later", "later")))
    with pytest.raises(ValueError, match="own teacher"):
        Row("a", "a", teacher="a")
    with pytest.raises(ValueError, match="seed"):
        Row("a", "a", seed=-1)
    table = Table(name="t", title="t", baseline="t0", rows=(
        Row("t0", "t0"), Row("x", "x"), Row("s", "s", teacher="t0", upstream="x"),
        Row("d", "d", upstream="s")))
    assert [r.name for r in table.closure(["d"])] == ["t0", "x", "s", "d"]


ONE = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=0.05, batch_size=32)
KD = {"kind": "distill.kd", "config": {"alpha": 0.9, "temperature": 4.0}}
NIN = {"width": 0.4}


def _toy(teacher_width: float = 0.4) -> Table:
    return Table(name="kdtoy", title="KD toy", baseline="teacher", dataset="synthetic", rows=(
        Row("teacher", "teacher", model="nin", model_kwargs={"width": teacher_width},
            schedule=ONE),
        Row("alone", "student alone", model="nin", model_kwargs=NIN, schedule=ONE),
        Row("alone-s1", "student alone, seed 1", model="nin", model_kwargs=NIN, schedule=ONE,
            seed=1),
        Row("kd", "student distilled", model="nin", model_kwargs=NIN, stages=(KD,),
            schedule=ONE, teacher="teacher"),
        Row("kd-more", "student distilled, one more epoch alone", upstream="kd",
            schedule=ONE),
        # the micronet proposal: binary weights fine-tuned from the float model, which teaches
        Row("wbin-kd", "W binary, distilled from its float model", upstream="teacher",
            teacher="teacher", stages=(quantize("binary", 32, bn_momentum=0.01), KD),
            schedule=ONE),
    ))


TRAIN = synthetic("train", 128, num_classes=4, size=16)
TEST = synthetic("test", 64, num_classes=4, size=16)


def _ctx(root: Path, table: Table) -> RunContext:
    return RunContext(table=table, profile=PROFILE_SETTINGS["smoke"], env=DistEnv(),
                      results_dir=root / "res", runs_dir=root / "runs", train_data=TRAIN,
                      test_data=TEST, show_progress=False)


def test_a_teacher_row_teaches_records_its_accuracy_and_reruns_its_students(tmp_path: Path):
    table = _toy()
    seen: list[tuple[str, str]] = []
    results = {r["row"]: r for r in run_table(_ctx(tmp_path, table), list(table.rows),
                                              on_row=lambda r, s: seen.append((r.name, s)))}
    teacher_acc = results["teacher"]["metrics"]["accuracy"]
    # the distilled row learnt from the teacher row's model, and says so
    assert results["kd"]["teacher"] == {"row": "teacher", "label": "teacher",
                                        "accuracy": teacher_acc}
    assert results["kd"]["metrics"]["teacher_accuracy"] == teacher_acc
    stage = results["kd"]["recipe"][-1]
    assert stage["kind"] == "distill.kd"
    assert stage["teacher"]["checkpoint"].endswith("runs/kdtoy/teacher/final.safetensors")
    assert results["kd-more"]["teacher"] == results["kd"]["teacher"]  # downstream inherits it
    assert [s["kind"] for s in results["wbin-kd"]["recipe"]] == ["quant.quantize", "distill.kd"]
    assert results["wbin-kd"]["teacher"]["row"] == "teacher"
    assert "teacher" not in results["alone"] and "teacher_accuracy" not in \
        results["alone"]["metrics"]
    # the distilled student differs from the one trained alone (same seed, same schedule)
    assert results["kd"]["history"][0]["test_loss"] != results["alone"]["history"][0]["test_loss"]
    # its model loads without the teacher
    student = load_model(tmp_path / "runs" / "kdtoy" / "kd" / "final.safetensors")
    assert not any("teacher" in k for k in student.state_dict())
    # seed 1: another initialisation and data order
    assert results["alone-s1"]["seed"] == 1 and results["alone"]["seed"] == 0
    a = load_model(tmp_path / "runs" / "kdtoy" / "alone" / "final.safetensors").state_dict()
    b = load_model(tmp_path / "runs" / "kdtoy" / "alone-s1" / "final.safetensors").state_dict()
    assert not torch.equal(a["features.conv1.weight"], b["features.conv1.weight"])
    # the report's teacher column
    text = markdown(load_results(tmp_path / "res", table), table)
    assert "teacher (%)" in text.splitlines()[2]
    line = next(x for x in text.splitlines() if x.startswith("| student distilled |"))
    assert line.rstrip(" |").endswith(f"{100 * teacher_acc:.2f}")
    line = next(x for x in text.splitlines() if x.startswith("| student alone |"))
    assert line.rstrip().endswith("| - |")
    # a changed teacher reruns the rows it taught (its hash is part of theirs), not the others
    seen.clear()
    changed = _toy(teacher_width=0.3)
    run_table(_ctx(tmp_path, changed), changed.closure(["kd", "alone"]),
              on_row=lambda r, s: seen.append((r.name, s)))
    assert seen == [("teacher", "running"), ("alone", "cached"), ("kd", "running")]


def test_a_teacher_without_a_stage_to_take_it_is_an_error(tmp_path: Path):
    table = Table(name="kdbad", title="t", baseline="teacher", dataset="synthetic", rows=(
        Row("teacher", "teacher", model="nin", model_kwargs=NIN, schedule=ONE),
        Row("student", "student", model="nin", model_kwargs=NIN, schedule=ONE,
            teacher="teacher"),
    ))
    with pytest.raises(ValueError, match="none of its stages takes a teacher"):
        run_table(_ctx(tmp_path, table), list(table.rows))
