"""ONNX Runtime CPU accuracy and latency of a TRAINED NIN: ORT float, ORT's own static QDQ int8
(``quantize_static``) of the same float model, and our exports (netshrink.deploy): int8 QAT,
DoReFa W4A4, binary, and NIN pruned 50 % (float, and + int8 QAT), side by side in one run.

    .venv/bin/python -m pytest benchmarks/micro/test_onnx_latency.py -s

The benchmark trains itself (nothing is cached): a float NIN (width NETSHRINK_BENCH_WIDTH,
default 0.25) for NETSHRINK_BENCH_EPOCHS epochs (default 3) on the CIFAR-10 subset at
NETSHRINK_DATA (default ``../shared/datasets`` from the project root; the synthetic dataset
when it is missing, which the header says), then fine-tunes copies of it with quantization
for NETSHRINK_BENCH_QAT_EPOCHS epochs (default 1): int8 QAT (``scheme="int8_affine"``, every
conv quantized, as ``quantize_static`` does), W4A4 (first and last layer float, the
``QuantConfig`` default) and binary weights and activations. The pruned rows: 50 % of every
layer's channels removed (L1 norm, per layer, the smoke table's recipe), fine-tuned as long,
then (a copy) int8 QAT as above, exported twice: with the default channel alignment
(``netshrink.deploy.align``) and with ``align=None``. ``quantize_static`` (QDQ,
per-channel int8 weights, uint8 activations) calibrates on 512 training images. Accuracy is
ONNX Runtime's on the test images; latency at batch 1 and 64 with ORT's default threads and
optimization level, every file timed in the same interleaved rounds
(``netshrink.deploy.measure_paired``: batch 1 2 x NETSHRINK_BENCH_ROUNDS rounds of 5 runs,
batch 64 NETSHRINK_BENCH_ROUNDS rounds of 2), the speed-ups the medians of the ratios
within each round (steady to a few percent on a shared machine, where two medians taken one
after the other moved by +-20 %). Prints one table with ratios to ORT float; asserts no time,
only that the int8 exports run QLinearConv and agree with PyTorch on >= 99 % of the test images.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from torch import nn

from netshrink.bench.data.dataset import load_dataset
from netshrink.bench.data.synthetic import synthetic
from netshrink.core import stage_from_description
from netshrink.deploy import check_onnx, export_onnx, measure_paired, opener_for_timing
from netshrink.models import create_model
from netshrink.quant import QuantConfig, quantize_

ROUNDS = int(os.environ.get("NETSHRINK_BENCH_ROUNDS", "10"))
WIDTH = float(os.environ.get("NETSHRINK_BENCH_WIDTH", "0.25"))
EPOCHS = int(os.environ.get("NETSHRINK_BENCH_EPOCHS", "3"))
QAT_EPOCHS = int(os.environ.get("NETSHRINK_BENCH_QAT_EPOCHS", "1"))
BATCHES = (1, 64)
ROOT = Path(__file__).resolve().parents[2]


def _data() -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, train images, train labels, test images, test labels), images normalised."""
    root = Path(os.environ.get("NETSHRINK_DATA", ROOT.parent / "shared" / "datasets"))
    if (root / "cifar-10-batches-py").is_dir():
        train, test = load_dataset("cifar10", "train", root), load_dataset("cifar10", "test", root)
        source = f"CIFAR-10 subset at {root}"
    else:
        train, test = synthetic("train", 5120), synthetic("test", 1024)
        source = "synthetic dataset (no CIFAR-10 at NETSHRINK_DATA)"
    mean = torch.tensor(train.mean).view(1, -1, 1, 1)
    std = torch.tensor(train.std).view(1, -1, 1, 1)

    def norm(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - mean) / std).contiguous()

    return source, norm(train.images), train.labels, norm(test.images), test.labels


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    """SGD with momentum, cosine learning rate, random horizontal flips, batch 128."""
    g = torch.Generator().manual_seed(0)
    steps = epochs * -(-len(x) // 128)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 128):
            idx = order[start:start + 128]
            batch = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
            loss = F.cross_entropy(model(batch), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[torch.Tensor]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"input": batch.numpy()}


def _ort_accuracy(path: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hits = 0
    for start in range(0, len(x), 256):
        out = session.run(None, {"input": x[start:start + 256].numpy()})[0]
        hits += int((out.argmax(1) == y[start:start + 256].numpy()).sum())
    return hits / len(x)


@pytest.mark.slow
def test_onnx_trained_nin_qat_vs_ort_ptq(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    source, x_train, y_train, x_test, y_test = _data()
    t0 = time.perf_counter()
    model = create_model("nin", width=WIDTH)
    _train(model, x_train, y_train, EPOCHS, lr=0.05)
    t_float = time.perf_counter() - t0
    example = x_test[:1]
    files = {"ORT float": export_onnx(model, example, tmp_path / "float.onnx")}
    calib = [x_train[i:i + 64] for i in range(0, 512, 64)]
    quantize_static(str(files["ORT float"]), str(tmp_path / "ort_int8.onnx"), _Reader(calib),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    files["ORT quantize_static int8"] = tmp_path / "ort_int8.onnx"
    t0 = time.perf_counter()
    pruned = stage_from_description({"kind": "prune.channels", "config": {"prune": {
        "criterion": "l1", "amount": 0.5, "scope": "per_layer"}}}).apply(copy.deepcopy(model))
    _train(pruned, x_train, y_train, QAT_EPOCHS, lr=0.01)
    files["netshrink pruned 50% (float)"] = export_onnx(pruned, example, tmp_path / "pruned.onnx")
    int8 = QuantConfig(w=8, a=8, scheme="int8_affine", first="same", last="same")
    configs = {
        "netshrink int8 QAT": (model, int8, 0.01),
        "netshrink W4A4 (DoReFa)": (model, QuantConfig(w=4, a=4), 0.01),
        "netshrink binary W1A1": (model, QuantConfig(w="binary", a="binary"), 0.01),
        "netshrink pruned 50% + int8": (pruned, int8, 0.01),
    }
    torch_acc, checks = {}, {}
    for name, (start, config, lr) in configs.items():
        qmodel = quantize_(copy.deepcopy(start), config)
        _train(qmodel, x_train, y_train, QAT_EPOCHS, lr=lr)
        path = export_onnx(qmodel, example, tmp_path / f"{len(files)}.onnx")
        files[name] = path
        checks[name] = check_onnx(path, qmodel, x_test, y_test)
        torch_acc[name] = checks[name].torch_accuracy
        if name == "netshrink pruned 50% + int8":  # the same model, channels as pruned
            plain = f"{name} (align=None)"
            files[plain] = export_onnx(qmodel, example, tmp_path / "plain.onnx", align=None)
            checks[plain] = check_onnx(files[plain], qmodel, x_test, y_test)
            torch_acc[plain] = checks[plain].torch_accuracy
    t_qat = time.perf_counter() - t0
    with torch.no_grad():
        torch_acc["ORT float"] = float((model(x_test).argmax(1) == y_test).float().mean())
        torch_acc["netshrink pruned 50% (float)"] = float(
            (pruned(x_test).argmax(1) == y_test).float().mean())
    for name in ("netshrink int8 QAT", "netshrink pruned 50% + int8"):
        check = checks[name]
        assert check.integer_ops.get("QLinearConv", 0) >= 7 and check.agreement >= 0.99, name

    rows = {name: {"acc": _ort_accuracy(path, x_test, y_test),
                   "MB": path.stat().st_size / 2**20} for name, path in files.items()}
    # channel alignment computes the same function
    assert rows["netshrink pruned 50% + int8"]["acc"] == \
        rows["netshrink pruned 50% + int8 (align=None)"]["acc"]
    # every file timed in the same rounds (alternating order), ratios within each round
    sessions = {name: opener_for_timing("onnxruntime", path) for name, path in files.items()}
    paired = measure_paired(sessions, tuple(x_test.shape[1:]), BATCHES,
                            rounds={1: (2 * ROUNDS, 5), 64: (ROUNDS, 2)})
    for name in files:
        for batch in BATCHES:
            rows[name][batch] = paired.ms[name][f"batch{batch}"]
            rows[name][f"x{batch}"] = paired.speedup[name][f"batch{batch}"]
            rows[name][f"spread{batch}"] = paired.spread[name][f"batch{batch}"]
    with capsys.disabled():
        print(f"\nONNX Runtime {ort.__version__}, NIN width {WIDTH}, {source}: "
              f"{len(x_train)} train / {len(x_test)} test images; float {EPOCHS} epochs "
              f"({t_float:.0f} s), each QAT {QAT_EPOCHS} epochs ({t_qat:.0f} s for all); "
              f"CPU threads default ({os.cpu_count()} cores)")
        print(f"latency: the median of round medians, every file timed in the same rounds "
              f"(batch 1: {paired.rounds['batch1']} rounds of {paired.per_round['batch1']} "
              f"runs, batch 64: {paired.rounds['batch64']} of {paired.per_round['batch64']}); "
              "x: the median of the per-round ratios to ORT float, +-: their interquartile "
              "range / median")
        print(f"{'model':<40} {'ORT acc':>8} {'torch acc':>9} {'agree':>6} {'MB':>6} "
              f"{'b1 ms':>8} {'x':>6} {'+-':>5} {'b64 ms':>8} {'x':>6} {'+-':>5}  "
              "integer kernels")
        for name, r in rows.items():
            c = checks.get(name)
            t_acc = torch_acc.get(name)
            print(f"{name:<40} {r['acc']:>8.4f} "
                  f"{'-' if t_acc is None else f'{t_acc:.4f}':>9} "
                  f"{'-' if c is None else f'{c.agreement:.3f}':>6} {r['MB']:>6.3f} "
                  f"{r[1]:>8.2f} {r['x1']:>5.2f}x {r['spread1']:>5.2f} "
                  f"{r[64]:>8.2f} {r['x64']:>5.2f}x {r['spread64']:>5.2f}"
                  f"  {'' if c is None else c.integer_ops}")
        ptq = rows["ORT quantize_static int8"]
        ours = rows["netshrink int8 QAT"]
        print(f"int8 QAT vs ORT PTQ: accuracy {ours['acc'] - ptq['acc']:+.4f}, speed-up "
              f"b1 x{ours['x1']:.2f} vs x{ptq['x1']:.2f}, "
              f"b64 x{ours['x64']:.2f} vs x{ptq['x64']:.2f}")
        both = rows["netshrink pruned 50% + int8"]
        print(f"pruned 50% + int8 vs ORT float: b1 x{both['x1']:.2f}, b64 "
              f"x{both['x64']:.2f} (goal: x3 at batch 64)")
