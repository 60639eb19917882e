"""``bench export``: a float, an int8 QAT and a pruned checkpoint export and check against
PyTorch in ONNX Runtime and OpenVINO; --json has the fields; a failed check is exit 1; the
usual mistakes are one ``error:`` line and exit 2; ``--table --runs`` exports every finished
row of a table. The models are NIN at width 0.25 built and saved the way the tables save rows
(``save_model`` with the stages' records); synthetic test images, or a fake CIFAR-10 folder for
the table. Each export takes seconds (torch's dynamo exporter), so there are few of them; the
failure cases reuse one exported file."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import netshrink.deploy
from netshrink.bench.cli import app
from netshrink.bench.cli import export as export_cli
from netshrink.bench.data import write_fake_cifar10
from netshrink.bench.tables.recipes import prune, quantize
from netshrink.core import stage_from_description
from netshrink.deploy import runtime_available
from netshrink.deploy.runtimes import OpenVinoSession
from netshrink.models import create_model, save_model
from netshrink.quant import save_packed

runner = CliRunner()
RUNTIME = "all" if runtime_available("openvino") else "onnxruntime"
RUNTIMES = ["onnxruntime", "openvino"] if RUNTIME == "all" else ["onnxruntime"]
CHECK = ["--dataset", "synthetic", "--images", "96", "--runtime", RUNTIME]


def _nin() -> torch.nn.Module:
    """NIN width 0.25 with BatchNorm statistics of synthetic-like images."""
    torch.manual_seed(0)
    model = create_model("nin", width=0.25, num_classes=10)
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _with_stage(record: dict) -> tuple[torch.nn.Module, list[dict]]:
    """Apply one table stage record to a fresh NIN (and run a few training forwards so an
    int8 model's observers have ranges), as the table runner does."""
    stage = stage_from_description(record)
    model = stage.apply(_nin())
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(9 + seed)))
    return model.eval(), [stage.describe()]


class _Files:
    """The model files, each built on first use (a test needing only the float checkpoint
    does not pay for the quantized and pruned ones)."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self._built: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._built:
            self._built[name] = getattr(self, "_" + name.replace(".", "_"))()
        return self._built[name]

    def _float(self) -> Path:
        return save_model(self.dir / "float.safetensors", _nin())

    def _int8(self) -> Path:
        model, recipe = _with_stage(quantize(8, 8, scheme="int8_affine"))
        save_packed(model, self.dir / "int8.packed.safetensors")
        return save_model(self.dir / "int8.safetensors", model, recipe=recipe)

    def _int8_all(self) -> Path:
        model, recipe = _with_stage(quantize(8, 8, scheme="int8_affine", first="same",
                                             last="same"))
        return save_model(self.dir / "int8_all.safetensors", model, recipe=recipe)

    def _int8_packed(self) -> Path:
        self["int8"]  # writes both files
        return self.dir / "int8.packed.safetensors"

    def _pruned(self) -> Path:
        model, recipe = _with_stage(prune("l1", 0.5, scope="per_layer"))
        return save_model(self.dir / "pruned.safetensors", model, recipe=recipe)

    def _notes(self) -> Path:
        (self.dir / "notes.safetensors").write_text("my holiday notes\n")
        return self.dir / "notes.safetensors"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> _Files:
    return _Files(tmp_path_factory.mktemp("export"))


def _json(result) -> dict:
    assert result.exit_code in (0, 1), result.output + result.stderr
    return json.loads(result.stdout)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def float_export(files) -> tuple[Path, dict]:
    """The float checkpoint, exported and checked once (--json, every installed runtime)."""
    out = files.dir / "float.onnx"
    result = runner.invoke(app, ["export", str(files["float"]), "--out", str(out), *CHECK,
                                 "--no-latency", "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    return out, _json(result)


@pytest.mark.slow
def test_float_checkpoint_exports_and_agrees_in_every_runtime(float_export):
    out, r = float_export
    assert out.is_file() and r["file"] == str(out) and r["file_bytes"] == out.stat().st_size
    assert r["ok"] is True and r["failures"] == []
    assert r["images"] == 96 and r["input_shape"] == [3, 32, 32]
    assert 0.0 <= r["torch_accuracy"] <= 1.0
    assert list(r["runtimes"]) == RUNTIMES
    for name, e in r["runtimes"].items():
        assert e["agreement"] == 1.0, name
        assert e["accuracy"] == r["torch_accuracy"], name
        assert e["max_rel_logit_diff"] < 1e-4, name
        assert e["finite"] is True and e["integer_layers"] == {}, name
        assert "latency_ms" not in e  # --no-latency


@pytest.mark.slow
def test_int8_checkpoint_runs_integer_kernels_with_latency(files, float_export, tmp_path):
    out = tmp_path / "int8.onnx"
    r = _json(runner.invoke(app, ["export", str(files["int8"]), "--out", str(out), *CHECK,
                                  "--json", "--repeats", "2", "--threads", "1",
                                  "--threads", "0"]))
    assert r["ok"] is True, r["failures"]
    ort = r["runtimes"]["onnxruntime"]
    assert ort["integer_layers"].get("QLinearConv", 0) >= 5
    assert ort["agreement"] >= 0.99
    assert set(ort["latency_ms"]) == {"1", "default"}
    assert set(ort["latency_ms"]["1"]) == {"batch1", "batch64"}
    if "openvino" in r["runtimes"]:
        ov = r["runtimes"]["openvino"]
        assert ov["agreement"] >= 0.99 and ov["finite"]
        assert ov["integer_layers"].get("Convolution", 0) >= 5  # run in u8
        assert ov["layer_precisions"]["Convolution"].get("u8", 0) >= 5
    # the file holds int8 weights: far smaller than the float export of the same net
    assert r["file_bytes"] < 0.6 * float_export[1]["file_bytes"]  # first, last conv float


@pytest.mark.slow
def test_no_align_writes_the_graph_as_exported(files, tmp_path):
    """Every conv int8: the default export pads the RGB input to 4 channels and unrolls the
    stem's rows (netshrink.deploy.align); --no-align leaves both out; both agree with PyTorch."""
    nodes = {}
    for flag in ("--align", "--no-align"):
        out = tmp_path / f"{flag}.onnx"
        r = _json(runner.invoke(app, ["export", str(files["int8_all"]), "--out", str(out),
                                      *CHECK, "--no-latency", "--json", flag]))
        assert r["ok"] is True and r["align"] is (flag == "--align"), r
        assert r["runtimes"]["onnxruntime"]["integer_layers"].get("QLinearConv", 0) >= 8
        nodes[flag] = [n.op_type for n in onnx.load(out).graph.node]
    assert nodes["--align"].count("Pad") == 1 and nodes["--align"].count("Slice") == 5
    assert "Pad" not in nodes["--no-align"] and "Slice" not in nodes["--no-align"]


@pytest.mark.slow
def test_pruned_checkpoint_and_packed_file_export_and_check(files, tmp_path):
    pruned = runner.invoke(app, ["export", str(files["pruned"]), "--out",
                                 str(tmp_path / "pruned.onnx"), *CHECK, "--no-latency"])
    assert pruned.exit_code == 0, pruned.output + pruned.stderr
    assert "top-1 agreement with PyTorch" in pruned.stdout and "100.00%" in pruned.stdout
    packed = _json(runner.invoke(app, ["export", str(files["int8.packed"]), "--out",
                                       str(tmp_path / "packed.onnx"), *CHECK, "--no-latency",
                                       "--json"]))
    assert packed["ok"] is True, packed["failures"]
    assert packed["runtimes"]["onnxruntime"]["integer_layers"].get("QLinearConv", 0) >= 5


def _fast_export(monkeypatch) -> None:
    """Export with torch's TorchScript exporter (under a second, where the dynamo exporter
    takes seconds): these tests are about the check, and a float model exports either way."""

    def export(model, example, out, **_options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.cat([example, example]),), str(out), dynamo=False,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        return Path(out)

    monkeypatch.setattr(netshrink.deploy, "export_onnx", export)  # the CLI imports it lazily


def test_agreement_below_the_threshold_is_exit_1(files, monkeypatch, tmp_path):
    _fast_export(monkeypatch)
    real = netshrink.deploy.torch_logits

    def rolled(model, x, batch_size):  # PyTorch's logits, classes shifted by one
        return np.roll(real(model, x, batch_size), 1, axis=1)

    monkeypatch.setattr(netshrink.deploy, "torch_logits", rolled)
    args = ["export", str(files["float"]), "--out", str(tmp_path / "f.onnx"), *CHECK,
            "--no-latency"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1
    r = _json(result)
    assert r["ok"] is False
    assert r["runtimes"]["onnxruntime"]["agreement"] < 0.99
    assert {f.split(":")[0] for f in r["failures"]} == set(RUNTIMES)
    assert any(f.startswith("onnxruntime: top-1 agreement") for f in r["failures"])
    # the threshold decides: at 0 the same outputs pass
    args[args.index(RUNTIME)] = "onnxruntime"
    assert runner.invoke(app, [*args, "--min-agreement", "0"]).exit_code == 0
    human = runner.invoke(app, args)
    assert human.exit_code == 1 and "check failed" in human.stdout


def test_non_finite_outputs_are_exit_1(files, monkeypatch, tmp_path):
    _fast_export(monkeypatch)
    real = netshrink.deploy.torch_logits

    def poisoned(model, x, batch_size):
        out = real(model, x, batch_size)
        out[0, 0] = np.nan
        return out

    monkeypatch.setattr(netshrink.deploy, "torch_logits", poisoned)
    result = runner.invoke(app, ["export", str(files["float"]), "--out",
                                 str(tmp_path / "f.onnx"), *CHECK, "--no-latency", "--json",
                                 "--min-agreement", "0"])
    assert result.exit_code == 1
    r = _json(result)  # standard JSON: no NaN in it
    e = r["runtimes"]["onnxruntime"]
    assert e["finite"] is False and e["max_rel_logit_diff"] is None
    assert r["torch_accuracy"] is None
    assert "onnxruntime: non-finite outputs" in r["failures"]


def test_mistakes_are_one_error_line(files, monkeypatch, tmp_path):
    out = ["--out", str(tmp_path / "x.onnx")]
    line = _one_error_line(runner.invoke(app, ["export", str(files["notes"]), *out, *CHECK]))
    assert str(files["notes"]) in line
    line = _one_error_line(runner.invoke(app, ["export", str(tmp_path / "absent"), *out]))
    assert "does not exist" in line
    line = _one_error_line(runner.invoke(app, ["export", str(files["float"]), *out,
                                               "--runtime", "tensorrt"]))
    assert "onnxruntime, openvino, all" in line
    line = _one_error_line(runner.invoke(app, ["export", "--table", "smoke"]))
    assert "--runs" in line
    line = _one_error_line(runner.invoke(app, ["export", "--table", "smoke", "--runs",
                                               str(tmp_path)]))
    assert "no finished row" in line
    line = _one_error_line(runner.invoke(app, ["export", str(files["float"]), *out,
                                               "--input-size", "28"]))
    assert "synthetic" in line
    monkeypatch.setattr(OpenVinoSession, "package", "netshrink_no_such_runtime_pkg")
    line = _one_error_line(runner.invoke(app, ["export", str(files["float"]), *out,
                                               "--runtime", "openvino"]))
    assert "netshrink-deploy[openvino]" in line
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_table_rows_export_and_check_from_their_run_folders(files, tmp_path):
    """Two finished smoke rows (a float and an int8 model in their run folders), three not
    run: one line per row, the finished ones checked on (fake) CIFAR-10 test images."""
    data = tmp_path / "data"
    write_fake_cifar10(data, per_train_batch=2, test=64)
    runs = tmp_path / "runs"
    for row, source in (("nin-float", "float"), ("nin-wbin-abin-fused", "int8")):
        (runs / "smoke" / row).mkdir(parents=True)
        shutil.copyfile(files[source], runs / "smoke" / row / "final.safetensors")
    result = runner.invoke(app, ["export", "--table", "smoke", "--runs", str(runs),
                                 "--data-dir", str(data), "--no-latency"])
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "smoke/nin-float", "smoke/nin-pruned50", "smoke/nin-w4a4", "smoke/nin-wbin-abin",
        "smoke/nin-wbin-abin-fused"]
    assert lines[0].startswith("smoke/nin-float: ok, ") and "agreement 100.00%" in lines[0]
    assert lines[1] == "smoke/nin-pruned50: skipped (no final.safetensors)"
    assert "QLinearConv x" in lines[4] and lines[4].startswith("smoke/nin-wbin-abin-fused: ok")
    for row in ("nin-float", "nin-wbin-abin-fused"):
        assert (runs / "smoke" / row / export_cli.ROW_FILE).is_file()
