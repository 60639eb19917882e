"""`bench fuse-check` on a model whose logits are NaN fails (it used to print "top-1 agreement
100 %": the arg-max of NaN logits agrees with itself)."""

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.models import create_model, save_model


def test_fuse_check_fails_on_nan_logits(tmp_path: Path):
    model = create_model("nin", width=0.1, num_classes=10)
    with torch.no_grad():
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_mean[0] = float("nan")  # every logit becomes NaN
    save_model(tmp_path / "model.safetensors", model)
    args = ["fuse-check", str(tmp_path / "model.safetensors"), "--dataset", "synthetic"]
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 1, text.output
    assert "FAILED: non-finite outputs" in text.output and "100.00%" not in text.output
    as_json = CliRunner().invoke(app, [*args, "--json"])
    assert as_json.exit_code == 1, as_json.output
    record = json.loads(as_json.output, parse_constant=lambda t: 1 / 0)
    assert record["compare"]["ok"] is False and record["compare"]["top1_agreement"] is None
