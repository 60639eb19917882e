"""``bench sensitivity``: JSON and plot beside the model, held-out batches from the training
split, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.cli.sensitivity import held_out
from netshrink.bench.data import synthetic
from netshrink.models import create_model, save_model

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_writes_json_and_plot_beside_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save_model(tmp_path / "model.safetensors", create_model("nin", width=0.1))
    result = runner.invoke(app, ["sensitivity", str(path), "--dataset", "synthetic",
                                 "--ratios", "0.5", "--precisions", "binary", "--batches", "1",
                                 "--bn-batches", "1", "--batch-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads((tmp_path / "sensitivity.json").read_text())
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert len(doc["prune"]) >= 5 and all(set(v) == {"0.5"} for v in doc["prune"].values())
    assert all(set(v) == {"binary"} for v in doc["quant"].values())


def test_held_out_samples_are_disjoint_training_images() -> None:
    train = synthetic("train", 300)
    held, calib = held_out(train, 128, 64, seed=3)
    assert len(held) == 128 and len(calib) == 64
    rows = {tuple(x.flatten().tolist()) for x in torch.cat([held.images, calib.images])}
    assert len(rows) == 192  # no image in both
    with pytest.raises(Exception, match="more than the 300 of synthetic's training split"):
        held_out(train, 256, 64)


def test_bad_values_are_named(tmp_path: Path) -> None:
    path = save_model(tmp_path / "model.safetensors", create_model("nin", width=0.1))
    result = runner.invoke(app, ["sensitivity", str(path), "--dataset", "synthetic",
                                 "--precisions", "5"])
    assert result.exit_code == 2 and "5 is not allowed" in result.output
    result = runner.invoke(app, ["sensitivity", str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 2 and "does not exist" in result.output
