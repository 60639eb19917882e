"""ONNX Runtime CPU latency: float NIN, our int8 QAT export (QDQ, netshrink.deploy), and ONNX
Runtime's own static QDQ int8 (``quantize_static``) of the same float NIN, side by side.

    .venv/bin/python -m pytest benchmarks/micro/test_onnx_latency.py -s

NIN at width 1, 32x32 inputs, batch 1 and 64, ONNX Runtime's default threads and optimization
level. Random weights (BatchNorm statistics set from random images); the int8 QAT model's
observers see the same images, and ``quantize_static`` calibrates on them too. Prints a table
of median latencies and ratios to float (no assertion on time); checks that each int8 model
runs QLinearConv (its top-1 agreement with PyTorch is printed: random weights on random
images give near-tied logits, so it is no accuracy figure). NETSHRINK_BENCH_ROUNDS sets
the batch-64 rounds (batch 1 runs ten times as many).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from netshrink.deploy import check_onnx, export_onnx
from netshrink.models import create_model
from netshrink.quant import QuantConfig, quantize

ROUNDS = int(os.environ.get("NETSHRINK_BENCH_ROUNDS", "10"))
BATCHES = (1, 64)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[torch.Tensor]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"input": batch.numpy()}


def _latency_ms(session: ort.InferenceSession, x: np.ndarray, rounds: int) -> float:
    session.run(None, {"input": x})  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _files(folder: Path) -> tuple[dict[str, Path], float]:
    torch.manual_seed(0)
    calib = [_images(64, seed) for seed in range(4)]
    model = create_model("nin")
    model.train()
    with torch.no_grad():  # BatchNorm statistics of the data, as after training
        for x in calib:
            model(x)
    model.eval()
    files = {"ort float": export_onnx(model, calib[0][:1], folder / "float.onnx")}
    quantize_static(str(files["ort float"]), str(folder / "ort_int8.onnx"), _Reader(calib),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    files["ort quantize_static int8"] = folder / "ort_int8.onnx"
    qat = quantize(model, QuantConfig(w=8, a=8, scheme="int8_affine"))
    qat.train()
    with torch.no_grad():
        for x in calib:
            qat(x)
    qat.eval()
    files["netshrink int8 QAT"] = export_onnx(qat, calib[0][:1], folder / "qat_int8.onnx")
    report = check_onnx(files["netshrink int8 QAT"], qat, _images(256, 99))
    assert "QLinearConv" in report.integer_ops
    return files, report.agreement


@pytest.mark.slow
def test_onnx_int8_latency(tmp_path, capsys) -> None:
    files, agreement = _files(tmp_path)
    rows = []
    for batch in BATCHES:
        x = _images(batch, 7).numpy()
        rounds = ROUNDS * (10 if batch == 1 else 1)
        latencies = {}
        for name, path in files.items():
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            latencies[name] = _latency_ms(session, x, rounds)
        base = latencies["ort float"]
        rows += [(batch, name, ms, base / ms) for name, ms in latencies.items()]
    with capsys.disabled():
        print(f"\nONNX Runtime {ort.__version__}, NIN width 1, CPU threads default "
              f"({os.cpu_count()} cores); int8 QAT top-1 agreement with PyTorch on 256 random "
              f"images: {agreement:.3f} (random weights: near-tied logits)")
        print(f"{'batch':>5}  {'model':<26} {'median ms':>10} {'speed-up vs float':>18}")
        for batch, name, ms, ratio in rows:
            print(f"{batch:>5}  {name:<26} {ms:>10.2f} {ratio:>17.2f}x")
