"""The deployment table's bit-packed kernel columns (tables/bitpacked.py): which rows they
apply to, the float reference they are timed against, the exactness check, and the rendering."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from netshrink.bench.tables import Row, Table
from netshrink.bench.tables.bitpacked import (
    HEAD,
    cells,
    float_reference,
    kernels_reason,
    measure_bitpacked,
)
from netshrink.bench.tables.deploy import deploy_markdown
from netshrink.quant import QuantConfig, quantize_

FAST = {1: 1, 3: 1}  # batch -> timed rounds: one each, the numbers are not checked


@pytest.fixture
def kernels() -> None:
    """Skip where the C++ kernels do not build (a failure under NETSHRINK_KERNELS_REQUIRED=1,
    as CI sets)."""
    reason = kernels_reason()
    if reason is not None:
        if os.environ.get("NETSHRINK_KERNELS_REQUIRED") == "1":
            pytest.fail(f"NETSHRINK_KERNELS_REQUIRED=1 but: {reason}")
        pytest.skip(f"netshrink.kernels unavailable: {reason}")


def _net(seed: int = 0) -> nn.Module:
    """A tiny classifier whose middle conv (odd channel counts) becomes binary-input binary
    when quantized, with BatchNorms that fold to thresholds before it and after it."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 13, 3, padding=1), nn.BatchNorm2d(13), nn.Hardtanh(),
                        nn.Conv2d(13, 21, 3, padding=1, bias=False), nn.BatchNorm2d(21),
                        nn.Hardtanh(), nn.Conv2d(21, 10, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.0, 1.0)
    return net.eval()


def _binary(**options) -> nn.Module:
    cfg = QuantConfig(w="binary", a="binary", binary_scale=False, **options)
    return quantize_(_net(), cfg).eval()


def test_float_reference_is_the_same_model_with_plain_float_layers():
    from netshrink.quant import QuantConv2d

    model = _binary()
    model[3].fold_affine(torch.linspace(-2.0, 2.0, 21), torch.linspace(-1.0, 1.0, 21))
    ref = float_reference(model)
    assert not any(isinstance(m, QuantConv2d) for m in ref.modules())
    assert type(ref[3]) is nn.Conv2d and ref[3].groups == model[3].groups
    assert isinstance(model[3], QuantConv2d)  # the model itself is untouched
    x = torch.randn(2, 13, 6, 7)
    with torch.no_grad():  # on +-1 inputs the float layer computes what the quantized one does
        torch.testing.assert_close(ref[3](torch.where(x < 0, -1.0, 1.0)), model[3](x))


@pytest.mark.usefixtures("kernels")
def test_a_binary_row_gets_packed_latencies_and_a_bit_exact_check():
    images = torch.randn(40, 3, 8, 8)
    entry = measure_bitpacked(_binary(), images, rounds=FAST)
    assert entry["applies"] and entry["packed_layers"] == 1 and entry["bn_folded"] is True
    assert entry["agreement"] == 1.0 and entry["max_abs_diff"] == 0.0  # BNN weights: exact
    for key in ("latency_ms", "float_latency_ms", "speedup"):
        assert set(entry[key]) == {"batch1", "batch3"} and min(entry[key].values()) > 0
    assert entry["speedup"]["batch1"] == pytest.approx(
        entry["float_latency_ms"]["batch1"] / entry["latency_ms"]["batch1"])
    row = cells(entry)
    assert len(row) == len(HEAD) and row[-1] == "bit-exact" and row[1].startswith("x")


@pytest.mark.usefixtures("kernels")
def test_a_scaled_row_reports_its_agreement_and_largest_difference():
    model = quantize_(_net(), QuantConfig(w="binary", a="binary")).eval()  # XNOR mean|w| scale
    with torch.no_grad():  # a scale that is not a power of two: rounding can differ
        model[3].weight.mul_(torch.linspace(0.3, 1.7, 21).view(-1, 1, 1, 1))
    entry = measure_bitpacked(model, torch.randn(40, 3, 8, 8), rounds=FAST)
    assert entry["applies"] and 0.9 <= entry["agreement"] <= 1.0
    assert entry["max_abs_diff"] < 1e-4
    if entry["max_abs_diff"] > 0:
        assert cells(entry)[-1].endswith(f"max diff {entry['max_abs_diff']:.1e}")


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("cfg", [None, {"w": 8, "a": 8}, {"w": "binary", "a": 32}])
def test_rows_without_binary_input_layers_show_dashes(cfg):
    model = _net() if cfg is None else quantize_(_net(), QuantConfig(**cfg)).eval()
    entry = measure_bitpacked(model, torch.randn(4, 3, 8, 8), rounds=FAST)
    assert entry == {"applies": False, "reason": entry["reason"]} and "binary" in entry["reason"]
    assert cells(entry) == cells(None) == ["-"] * len(HEAD)


def test_the_deploy_table_renders_the_packed_columns():
    packed = {"applies": True, "kernel": "avx2", "threads": 2, "bn_folded": True,
              "packed_layers": 7, "agreement": 1.0, "max_abs_diff": 0.0,
              "latency_ms": {"batch1": 0.5, "batch64": 20.0},
              "float_latency_ms": {"batch1": 2.0, "batch64": 100.0},
              "speedup": {"batch1": 4.0, "batch64": 5.0}}
    ort = {"version": "1.20.0", "accuracy": 0.5, "agreement": 1.0,
           "latency_ms": {"batch1": 1.0, "batch64": 10.0}}

    def result(name: str, bit: dict | None) -> dict:
        deploy = {"file_bytes": 1000, "runtimes": {"onnxruntime": ort}}
        if bit is not None:
            deploy["bitpacked"] = bit
        return {"metrics": {"deploy": deploy}, "dataset": {"name": "cifar10", "test_images": 9},
                "profile": "quick", "date": "2026-12-02T10:00:00"}

    table = Table(name="t", title="T", baseline="f", rows=(Row("f", "f"), Row("b", "b"),
                                                           Row("old", "old")),
                  deploy_rows=("f", "b", "old"))
    text = deploy_markdown({"f": result("f", {"applies": False, "reason": "none"}),
                            "b": result("b", packed), "old": result("old", None)}, table)
    lines = text.splitlines()
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    assert head[-len(HEAD):] == HEAD
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in lines[4:7]}
    assert rows["b"][-len(HEAD):] == ["0.50", "x4.00", "20.00", "x5.00", "bit-exact"]
    for name in ("f", "old"):  # not applicable / measured before the column existed
        assert rows[name][-len(HEAD):] == ["-"] * len(HEAD)
        assert len(rows[name]) == len(head)
