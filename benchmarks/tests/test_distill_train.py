"""Distillation in the training engine and ``bench train --teacher``."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.data import synthetic
from netshrink.bench.engine import TrainConfig, Trainer
from netshrink.core import load_checkpoint
from netshrink.distill import DistillConfig, DistillStage
from netshrink.models import create_model, load_model, save_model

TRAIN = synthetic("train", 128, num_classes=4, size=16)
TEST = synthetic("test", 64, num_classes=4, size=16)
# label smoothing: the KD stage must reuse the trainer's cross-entropy, not its own
CONFIG = TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=3, label_smoothing=0.1)
runner = CliRunner()


def _teacher() -> torch.nn.Module:
    torch.manual_seed(11)
    return create_model("nin", width=0.1, num_classes=4)


def _trainer(run_dir: Path, stages=(), config: TrainConfig = CONFIG) -> Trainer:
    torch.manual_seed(config.seed)
    model = create_model("nin", width=0.1, num_classes=4)
    return Trainer(model, TRAIN, TEST, config, run_dir, stages=list(stages),
                   show_progress=False, meta={"model": model.netshrink_spec})


def _equal_weights(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_alpha_zero_trains_bit_for_bit_like_plain_cross_entropy(tmp_path: Path):
    plain = _trainer(tmp_path / "plain")
    plain.fit()
    zero = _trainer(tmp_path / "zero", [DistillStage(DistillConfig(0.0, 4.0), _teacher())])
    zero.fit()
    assert _equal_weights(plain, zero)
    assert [r.train_loss for r in zero.history] == [r.train_loss for r in plain.history]
    # and the hook does act: with alpha > 0 the weights differ
    half = _trainer(tmp_path / "half", [DistillStage(DistillConfig(0.5, 4.0), _teacher())])
    half.fit()
    assert not _equal_weights(plain, half)


def test_teacher_gets_no_gradient_stays_unchanged_and_outside_state_dict_and_optimizer(
        tmp_path: Path):
    teacher = _teacher()
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    stage = DistillStage(DistillConfig(0.9, 4.0), teacher)
    trainer = _trainer(tmp_path, [stage])
    result = trainer.fit()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():  # BN running statistics included
        assert torch.equal(value, before[name]), name
    plain_keys = create_model("nin", width=0.1, num_classes=4).state_dict().keys()
    assert trainer.model.state_dict().keys() == plain_keys
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    # the checkpoint holds the student only, records the stage, and loads without the teacher
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt.model_state.keys() == plain_keys
    assert ckpt.meta["recipe"][0]["kind"] == "distill.kd"
    assert ckpt.meta["recipe"][0]["teacher"]["model"]["name"] == "nin"
    loaded = load_model(result.last_checkpoint)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.cpu()), name


def test_two_stages_replacing_the_loss_are_refused_before_training(tmp_path: Path):
    stages = [DistillStage(DistillConfig(), _teacher()), DistillStage(DistillConfig(), _teacher())]
    with pytest.raises(ValueError, match="at most one stage of a recipe may replace"):
        _trainer(tmp_path, stages)


@pytest.mark.slow
def test_resume_with_distillation_equals_the_uninterrupted_run(tmp_path: Path):
    config = dataclasses.replace(CONFIG, epochs=2)
    whole = _trainer(tmp_path / "whole", [DistillStage(DistillConfig(), _teacher())], config)
    whole.fit()
    _trainer(tmp_path / "part", [DistillStage(DistillConfig(), _teacher())],
             config).fit(stop_after=1)
    resumed = _trainer(tmp_path / "part", [DistillStage(DistillConfig(), _teacher())], config)
    resumed.fit(resume=True)
    assert _equal_weights(whole, resumed)


# -- bench train --teacher ---------------------------------------------------------------
STUDENT_ARGS = ["train", "--model", "nin", "--width", "0.1", "--dataset", "synthetic",
                "--epochs", "1", "--batch-size", "256", "--device", "cpu", "--no-progress"]


def _save_teacher(path: Path, classes: int = 10) -> Path:
    torch.manual_seed(5)
    save_model(path, create_model("nin", width=0.1, num_classes=classes))
    return path


@pytest.mark.slow  # 2,048 synthetic images through student and teacher: ~5 s on 2 free cores
def test_bench_train_with_a_teacher_end_to_end(tmp_path: Path):
    teacher = _save_teacher(tmp_path / "teacher.safetensors")
    out = tmp_path / "run"
    result = runner.invoke(app, [*STUDENT_ARGS, "--out", str(out), "--teacher", str(teacher),
                                 "--kd-alpha", "0.8", "--kd-temperature", "3"])
    assert result.exit_code == 0, result.output
    assert "teacher" in result.stdout and "test accuracy" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    record = summary["teacher"]
    assert record["checkpoint"] == str(teacher.resolve())
    assert record["model"]["name"] == "nin" and (record["alpha"], record["temperature"]) == (
        0.8, 3.0)
    assert 0.0 <= record["test_accuracy"] <= 1.0
    meta = load_checkpoint(out / "checkpoints" / "epoch-0001.safetensors").meta
    assert meta["teacher"]["checkpoint"] == str(teacher.resolve())
    assert meta["train"]["stages"][0]["kind"] == "distill.kd"
    assert meta["train"]["stages"][0]["config"] == {"alpha": 0.8, "temperature": 3.0}
    student = load_model(out / "model.safetensors")  # no teacher needed
    assert load_checkpoint(out / "model.safetensors").meta["teacher"]["checkpoint"] == str(
        teacher.resolve())
    assert sum(p.numel() for p in student.parameters()) == summary["stats"]["params"]
    teacher.unlink()  # the student does not depend on the teacher's file
    load_model(out / "model.safetensors")


def test_bench_train_refuses_a_teacher_of_another_number_of_classes(tmp_path: Path):
    teacher = _save_teacher(tmp_path / "five.safetensors", classes=5)
    out = tmp_path / "run"
    result = runner.invoke(app, [*STUDENT_ARGS, "--out", str(out), "--teacher", str(teacher)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --teacher") and "predicts 5 classes" in lines[0]
    assert "synthetic has 10" in lines[0]
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--kd-alpha", "1.5"], "--kd-alpha 1.5 is not allowed; it must be between 0 and 1"),
    (["--kd-alpha", "nan"], "--kd-alpha nan is not allowed"),
    (["--kd-temperature", "0"], "--kd-temperature 0.0 is not allowed; it must be a number > 0"),
    (["--kd-temperature", "-2"], "--kd-temperature -2.0 is not allowed"),
])
def test_bad_distillation_options_are_one_error_line(tmp_path: Path, extra, message):
    teacher = tmp_path / "missing.safetensors"  # checked after the numbers: never read
    result = runner.invoke(app, [*STUDENT_ARGS, "--out", str(tmp_path / "run"), "--teacher",
                                 str(teacher), *extra])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")


def test_kd_options_need_a_teacher_and_the_teacher_must_be_a_checkpoint(tmp_path: Path):
    result = runner.invoke(app, [*STUDENT_ARGS, "--out", str(tmp_path / "a"), "--kd-alpha",
                                 "0.5"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --kd-alpha needs --teacher CHECKPOINT (the model "
                                     "to distil from)")
    both = runner.invoke(app, [*STUDENT_ARGS, "--out", str(tmp_path / "a"), "--kd-alpha", "0.5",
                               "--kd-temperature", "2"])
    assert both.exit_code == 2 and "--kd-alpha and --kd-temperature need --teacher" in both.stderr
    missing = runner.invoke(app, [*STUDENT_ARGS, "--out", str(tmp_path / "b"), "--teacher",
                                  str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    bad = runner.invoke(app, [*STUDENT_ARGS, "--out", str(tmp_path / "c"), "--teacher",
                              str(junk)])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: ")


@pytest.mark.ddp
@pytest.mark.slow
def test_bench_train_with_a_teacher_under_torchrun(tmp_path: Path):
    """Two gloo ranks, each with its own teacher on its own shard; the teacher's accuracy is
    summed over both shards (every rank must take part in its evaluation, or this hangs)."""
    import os
    import subprocess
    import sys

    teacher = _save_teacher(tmp_path / "teacher.safetensors")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "netshrink.bench", *STUDENT_ARGS, "--batch-size", "64", "--out", str(out),
            "--teacher", str(teacher)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone prints
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["history"][0]["images"] == 2048
    single = load_model(teacher)
    from netshrink.bench.data import DeviceLoader, load_dataset
    from netshrink.bench.engine import evaluate

    test = load_dataset("synthetic", "test", tmp_path)
    _, accuracy = evaluate(single, DeviceLoader(test, 64, device="cpu", train=False))
    # one flipped argmax at most (other batch shapes round differently): 1 of 512 images
    assert summary["teacher"]["test_accuracy"] == pytest.approx(accuracy, abs=1.01 / 512)
