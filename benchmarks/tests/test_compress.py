"""``bench compress``: a table row written as a recipe file by ``bench recipe`` reproduces the
row bit for bit, and a user's own model factory compresses end to end (prune, quantize, fuse),
resumably."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.engine import DistEnv
from netshrink.bench.recipefile import row_recipe
from netshrink.bench.tables import PROFILE_SETTINGS, PROFILES, TABLES
from netshrink.bench.tables.runner import FINAL, RunContext, load_table_data, run_table
from netshrink.models import MODELS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TRAIN_IMAGES, TEST_IMAGES = 128, 32  # one batch of 128: one step per epoch


def _compress(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["compress", *args, "--dataset", "synthetic",
                                      "--device", "cpu", "--no-progress"])
    return result.exit_code, result.output


@pytest.mark.slow  # trains the two rows twice: ~25 s of CPU
def test_recipe_file_reproduces_the_smoke_table_row_bit_for_bit(tmp_path: Path):
    """``bench recipe`` writes the row as a recipe; ``bench compress`` runs it. (The
    hand-written recipes/smoke_w4a4.toml says the same: test_recipe_export.py checks it.)"""
    smoke = dataclasses.replace(TABLES.get("smoke"), dataset="synthetic")
    profile = dataclasses.replace(PROFILE_SETTINGS["smoke"], train_limit=TRAIN_IMAGES,
                                  test_limit=TEST_IMAGES)
    train, test = load_table_data(smoke, profile, tmp_path / "data")
    ctx = RunContext(table=smoke, profile=profile, env=DistEnv(), results_dir=tmp_path / "res",
                     runs_dir=tmp_path / "runs", train_data=train, test_data=test,
                     show_progress=False)
    row = run_table(ctx, smoke.closure(["nin-w4a4"]))[-1]
    assert row["row"] == "nin-w4a4"

    recipe = tmp_path / "nin-w4a4.toml"
    result = CliRunner().invoke(app, ["recipe", "--table", "smoke", "--row", "nin-w4a4",
                                      "--profile", "smoke", "--out", str(recipe)])
    assert result.exit_code == 0, result.output
    code, output = _compress("--model", "nin", "--recipe", str(recipe),
                             "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"),
                             "--train-limit", str(TRAIN_IMAGES),
                             "--test-limit", str(TEST_IMAGES))
    assert code == 0, output
    assert "before (nin-float) -> after (nin-w4a4)" in output
    ours = load_file(tmp_path / "out" / "runs" / "compress" / "nin-w4a4" / FINAL)
    table = load_file(tmp_path / "runs" / "smoke" / "nin-w4a4" / FINAL)
    assert sorted(ours) == sorted(table)
    for name in table:
        assert torch.equal(ours[name], table[name]), name
    summary = json.loads((tmp_path / "out" / "compress.json").read_text())
    for key in ("accuracy", "macs", "params", "size_bytes"):
        assert summary["after"][key] == row["metrics"][key], key
    # the float step is the float row, too
    float_row = json.loads((tmp_path / "res" / "smoke" / "nin-float.json").read_text())
    assert summary["before"]["accuracy"] == float_row["metrics"]["accuracy"]


USER_MODULE = '''
from torch import nn


class UserNet(nn.Module):
    """Nothing netshrink-specific: a model a user brings."""

    def __init__(self, num_classes, channels=16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def build(num_classes, channels=16):
    return UserNet(num_classes, channels)
'''

USER_RECIPE = '''
title = "user model: prune, W4A4, fuse"
model_kwargs = { channels = 16 }

[[step]]
name = "float"
train = { epochs = 1, lr = 0.05, batch_size = 32 }

[[step]]
name = "pruned"
train = { epochs = 1, lr = 0.02, batch_size = 32 }
[[step.stage]]
kind = "prune.channels"
prune = { criterion = "l1", amount = 0.5 }

[[step]]
name = "w4a4"
train = { epochs = 1, lr = 0.02, batch_size = 32 }
[[step.stage]]
kind = "quant.quantize"
w = 4
a = 4

[[step]]
name = "fused"
[[step.stage]]
kind = "bnfuse.fuse"
'''


def test_user_factory_model_compresses_end_to_end_and_resumes(tmp_path: Path, monkeypatch):
    package = tmp_path / "code" / "ns_test_userzoo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(USER_RECIPE)
    spec = "ns_test_userzoo.nets:build"
    args = ["--model", spec, "--recipe", str(recipe), "--out", str(tmp_path / "out"),
            "--data-dir", str(tmp_path / "data"), "--train-limit", "64", "--test-limit", "32"]
    try:
        code, output = _compress(*args)
        assert code == 0, output
        summary = json.loads((tmp_path / "out" / "compress.json").read_text())
        before, after = summary["before"], summary["after"]
        assert [s["step"] for s in summary["steps"]] == ["float", "pruned", "w4a4", "fused"]
        assert after["params"] < before["params"]
        assert after["macs"] < before["macs"]
        assert after["size_bytes"] < before["size_bytes"] / 2  # half the channels, 4 bits
        assert "before (float) -> after (fused)" in output
        runs = tmp_path / "out" / "runs" / "compress"
        assert (runs / "fused" / FINAL).is_file()
        assert any((runs / "w4a4" / "tensorboard").iterdir())
        assert any((runs / "w4a4" / "checkpoints").iterdir())

        code, again = _compress(*args)  # the same command resumes: every step is reused
        assert code == 0, again
        assert again.count(": cached") == 4, again
    finally:
        if spec in MODELS:
            MODELS.unregister(spec)


def test_bad_model_names_fail_before_any_work(tmp_path: Path):
    recipe = str(RECIPES / "smoke_w4a4.toml")
    for model, message in (("nosuch", "is not a model"),
                           ("ns_no_such_module.x:build", "cannot import"),
                           ("json:no_such_function", "has no function"),
                           ("a b:c", "is not 'package.module:function'")):
        code, output = _compress("--model", model, "--recipe", recipe,
                                 "--out", str(tmp_path / "out"))
        assert code == 2 and message in output, output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # trains a teacher and a student twice: ~15 s of CPU
def test_a_row_with_a_teacher_from_another_model_reproduces_bit_for_bit(tmp_path: Path):
    """The distill table's seed-1 student (a fresh mobilenet_student step beside the
    resnet18_cifar teacher's, the row's seed) through ``bench recipe`` and ``bench compress``."""
    one = {p: 1 for p in PROFILES}
    distill = TABLES.get("distill")
    rows = tuple(dataclasses.replace(r, schedule=dataclasses.replace(r.schedule, epochs=one))
                 for r in distill.closure(["mbs-kd-s1"]))
    table = dataclasses.replace(distill, dataset="synthetic", rows=rows)
    assert [(r.name, r.model, r.teacher, r.seed) for r in rows] == [
        ("r18-float", "resnet18_cifar", None, 0),
        ("mbs-kd-s1", "mobilenet_student", "r18-float", 1)]
    profile = dataclasses.replace(PROFILE_SETTINGS["smoke"], train_limit=TRAIN_IMAGES,
                                  test_limit=TEST_IMAGES)
    train, test = load_table_data(table, profile, tmp_path / "data")
    ctx = RunContext(table=table, profile=profile, env=DistEnv(), results_dir=tmp_path / "res",
                     runs_dir=tmp_path / "runs", train_data=train, test_data=test,
                     show_progress=False)
    run_table(ctx, list(rows))

    recipe = tmp_path / "kd.toml"
    recipe.write_text(row_recipe(table, "mbs-kd-s1", "smoke"))
    code, output = _compress("--model", "resnet18_cifar", "--recipe", str(recipe),
                             "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"),
                             "--train-limit", str(TRAIN_IMAGES),
                             "--test-limit", str(TEST_IMAGES))
    assert code == 0, output
    for name in ("r18-float", "mbs-kd-s1"):
        ours = load_file(tmp_path / "out" / "runs" / "compress" / name / FINAL)
        theirs = load_file(tmp_path / "runs" / "distill" / name / FINAL)
        assert sorted(ours) == sorted(theirs), name
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (name, key)


TRAIN_RECIPE = '''
model_kwargs = { channels = 8 }

[[step]]
name = "float"
train = { epochs = 1, lr = 0.05 }

[[step]]
name = "w4a4"
[[step.stage]]
kind = "quant.quantize"
w = 4
a = 4
'''


def test_bench_train_runs_a_recipe_with_the_compress_engine(tmp_path: Path, monkeypatch):
    package = tmp_path / "code" / "ns_test_trainzoo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TRAIN_RECIPE)
    spec = "ns_test_trainzoo.nets:build"
    args = ["train", "--model", spec, "--recipe", str(recipe), "--out", str(tmp_path / "out"),
            "--dataset", "synthetic", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
            "--no-progress", "--seed", "3"]
    try:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "before (float) -> after (w4a4)" in result.output
        summary = json.loads((tmp_path / "out" / "compress.json").read_text())
        assert [s["step"] for s in summary["steps"]] == ["float", "w4a4"]
        assert summary["after"]["size_bytes"] < summary["before"]["size_bytes"]
        step = json.loads((tmp_path / "out" / "results" / "compress" / "float.json").read_text())
        assert step["seed"] == 3  # --seed reached the engine
        assert (tmp_path / "out" / "runs" / "compress" / "w4a4" / FINAL).is_file()
    finally:
        if spec in MODELS:
            MODELS.unregister(spec)


def test_bench_train_refuses_options_a_recipe_sets_before_any_work(tmp_path: Path):
    out = tmp_path / "out"
    base = ["train", "--recipe", str(RECIPES / "smoke_w4a4.toml"), "--out", str(out),
            "--dataset", "synthetic", "--device", "cpu"]
    for extra, named in ((["--epochs", "2"], "--epochs"),  # the default value, given: refused
                         (["--lr", "0.3", "--width", "0.5"], "--lr, --width"),
                         (["--teacher", "t.safetensors"], "--teacher")):
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert f"{named} cannot be combined with --recipe" in text, text
    assert not out.exists()
