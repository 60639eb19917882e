"""The micronet table's distilled rows: each binary-activation row has a twin distilled from the
float row (issue 14: "report with and without"), which differs from it in the loss only, and
whose teacher and upstream are rows --table all trains once and reuses."""

from pathlib import Path

from netshrink.bench.data import synthetic
from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import PROFILE_SETTINGS, TABLES, Row, Schedule, Table
from netshrink.bench.tables.micronet import KD_PAIRS, KD_TEACHER, MICRONET
from netshrink.bench.tables.runner import RunContext, run_table


def test_each_distilled_row_is_its_plain_twin_plus_kd_from_the_float_row():
    assert set(KD_PAIRS.values()) == {"nin-wbin-abin", "nin-wtern0-abin"}
    assert KD_TEACHER == MICRONET.baseline == "nin-float"
    names = [r.name for r in MICRONET.rows]
    for kd_name, plain_name in KD_PAIRS.items():
        kd, plain = MICRONET.row(kd_name), MICRONET.row(plain_name)
        assert names.index(kd_name) == names.index(plain_name) + 1  # reported side by side
        assert kd.teacher == KD_TEACHER and plain.teacher is None
        assert KD_TEACHER in kd.label and kd.label.startswith(plain.label)
        # only the loss differs: same start, same quantizer, same schedule, same seed
        assert (kd.upstream, kd.model, kd.model_kwargs, kd.schedule, kd.seed) == (
            plain.upstream, plain.model, plain.model_kwargs, plain.schedule, plain.seed)
        assert kd.stages[:-1] == plain.stages
        assert kd.stages[-1]["kind"] == "distill.kd"
        config = kd.stages[-1]["config"]
        assert 0.0 < config["alpha"] < 1.0 and config["temperature"] > 1.0
        assert "a" in plain.stages[0]["config"] and plain.stages[0]["config"]["a"] == "binary"
        assert kd.record("quick")["teacher"] == KD_TEACHER  # part of the row's hash


def test_the_teacher_and_the_shared_rows_are_other_tables_rows_spec_for_spec():
    # the teacher and the students' upstream are the bits table's float rows (trained once per
    # --table all, reused here), and the deploy table's binary row is micronet's own
    bits, deploy = TABLES.get("bits"), TABLES.get("deploy")
    for name in (KD_TEACHER, "nin-bacp-float"):
        assert bits.row(name).record("quick") == MICRONET.row(name).record("quick"), name
    assert deploy.row("nin-wbin-abin") == MICRONET.row("nin-wbin-abin")
    assert not any(r.name in KD_PAIRS for r in (*bits.rows, *deploy.rows))


ONE = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=1e-3, optimizer="adam",
               weight_decay=0.0, batch_size=32)
TRAIN = synthetic("train", 64, num_classes=4, size=16)
TEST = synthetic("test", 16, num_classes=4, size=16)


def test_the_micronet_binary_recipes_train_with_and_without_the_teacher(tmp_path: Path):
    # the table's own stage records (binary activations + distill.kd) on a toy nin
    rows: list[Row] = [
        Row("nin-float", "float", model="nin", model_kwargs={"width": 0.2}, schedule=ONE),
        Row("nin-bacp-float", "bacp float", model="nin",
            model_kwargs={"width": 0.2, "block_order": "bacp"}, schedule=ONE),
    ]
    for kd_name, plain_name in KD_PAIRS.items():
        for name in (plain_name, kd_name):
            spec = MICRONET.row(name)
            rows.append(Row(name, spec.label, upstream=spec.upstream, stages=spec.stages,
                            teacher=spec.teacher, schedule=ONE))
    table = Table(name="kdmicro", title="t", baseline="nin-float", dataset="synthetic",
                  rows=tuple(rows))
    ctx = RunContext(table=table, profile=PROFILE_SETTINGS["smoke"], env=DistEnv(),
                     results_dir=tmp_path / "res", runs_dir=tmp_path / "runs",
                     train_data=TRAIN, test_data=TEST, show_progress=False)
    results = {r["row"]: r for r in run_table(ctx, list(table.rows))}
    for kd_name, plain_name in KD_PAIRS.items():
        kd, plain = results[kd_name], results[plain_name]
        assert [s["kind"] for s in kd["recipe"][-2:]] == ["quant.quantize", "distill.kd"]
        assert kd["teacher"]["row"] == KD_TEACHER and "teacher" not in plain
        assert kd["metrics"]["teacher_accuracy"] == results[KD_TEACHER]["metrics"]["accuracy"]
        # the same seed and data order: the teacher's loss alone makes them differ
        assert kd["history"][0]["train_loss"] != plain["history"][0]["train_loss"]
