import json
from pathlib import Path

from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.core import load_checkpoint
from netshrink.models import load_model

runner = CliRunner()


def test_stats_json_reports_measured_numbers():
    result = runner.invoke(app, ["stats", "--model", "nin", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["params"] == 968404
    assert record["macs"] == 222486528
    assert record["float_bytes"] > 4 * record["params"]  # plus BN running statistics


def test_stats_table_and_models_list():
    result = runner.invoke(app, ["stats", "--model", "nin_gc"])
    assert result.exit_code == 0 and "0.587" in result.output and "0.1577" in result.output
    listed = runner.invoke(app, ["models"]).output.split()
    assert listed == ["mobilenet_student", "nin", "nin_gc", "resnet18_cifar"]


def test_train_then_resume_a_finished_run(tmp_path: Path):
    args = ["train", "--model", "nin", "--width", "0.1", "--dataset", "synthetic", "--epochs",
            "1", "--batch-size", "256", "--device", "cpu", "--no-progress", "--out",
            str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["history"][0]["step"] == 2048 // 256
    saved = load_model(tmp_path / "model.safetensors")
    assert sum(p.numel() for p in saved.parameters()) == summary["stats"]["params"]
    assert load_checkpoint(tmp_path / "checkpoints" / "epoch-0001.safetensors").meta["train"][
        "epochs_done"] == 1
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "pass --resume" in again.stderr
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] == summary[
        "test_accuracy"]


def test_bad_option_values_are_named(tmp_path: Path):
    result = runner.invoke(app, ["train", "--optimizer", "rmsprop", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "optimizer='rmsprop' is not allowed" in result.output
    result = runner.invoke(app, ["stats", "--model", "tv:resnet18", "--width", "0.5"])
    assert result.exit_code == 2 and "--width 0.5 applies to netshrink's own models" in \
        result.output


def test_fuse_check_reports_folds_and_agreement(tmp_path: Path):
    args = ["train", "--model", "nin", "--width", "0.1", "--dataset", "synthetic", "--epochs",
            "1", "--batch-size", "256", "--device", "cpu", "--no-progress", "--out",
            str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["fuse-check", str(tmp_path / "model.safetensors"), "--dataset",
                                 "synthetic", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["compare"]["top1_agreement"] == 1.0
    assert record["compare"]["max_rel_diff"] < 1e-5
    assert len(record["fuse"]["folded"]) == 9 and record["fuse"]["left"] == []
