"""Bit-packed binary kernels (netshrink.kernels) against torch's float conv on the same CPU.

    .venv/bin/python -m pytest benchmarks/micro/test_binary_kernels.py --benchmark-only -s

Cases, each at batch 1 and 64, eval mode under ``torch.inference_mode``:

* ``layer``: one binary 3x3 conv of nin's size, 192 -> 192 channels at 16x16, padding 1
  (binary weights, ``sign`` input) as ``BitConv2d``, against ``nn.Conv2d`` in float;
* ``nin``: the whole nin (bacp order, hardtanh; W binary / A binary, BNN weights, BN folded to
  thresholds by netshrink.bnfuse, binary-input layers on the kernels; first / last conv float)
  against the float nin in the same order, BN-folded too (its own deployment form); consecutive
  binary layers hand each other packed bits (``packed_outputs``: how many of them emit bits).

Float and packed runs alternate ``NETSHRINK_BENCH_ROUNDS`` times (default 3; batch 1 ten times
as many) after one warm-up each, so that load from other processes hits both alike. Reported:
``speedup`` = fastest float / fastest packed run (wall clock), the median of adjacent pairs'
ratios, and ``cpu_speedup``, the same from process CPU time (all threads: the work done, less
sensitive to other processes on a shared machine); extra_info holds them; ``-s`` prints them.
Each case first checks that the packed outputs equal the fake-quantized model's bit for bit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from netshrink.bnfuse import fuse
from netshrink.kernels import accelerate, bit_layers, kernels_available, simd_path
from netshrink.models import create_model
from netshrink.quant import QuantConfig, quantize_

ROUNDS = int(os.environ.get("NETSHRINK_BENCH_ROUNDS", "3"))
BATCHES = (1, 64)

pytestmark = pytest.mark.skipif(not kernels_available(),
                                reason="netshrink.kernels: the C++ kernels did not build here")


def _randomize_bn(model: nn.Module) -> nn.Module:
    """BN statistics away from the identity, so the folded thresholds are not all zero."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.0, 1.0)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def _layer() -> tuple[nn.Module, nn.Module, nn.Module]:
    """(float conv, fake-quantized conv, packed conv) of the same shape."""
    net = nn.Sequential(nn.Conv2d(3, 192, 1), nn.Conv2d(192, 192, 3, padding=1, bias=False),
                        nn.Conv2d(192, 10, 1))
    floating = nn.Conv2d(192, 192, 3, padding=1, bias=False).eval()
    floating.weight.data.copy_(net[1].weight.data)
    quant = quantize_(net, QuantConfig(w="binary", a="binary", binary_scale=False)).eval()
    return floating, quant[1], accelerate(quant)[1]


def _nin() -> tuple[nn.Module, nn.Module, nn.Module]:
    """(float nin BN-folded, binary nin BN-folded, the same on the packed kernels)."""
    model = _randomize_bn(create_model("nin", block_order="bacp", act="hardtanh")).eval()
    floating = fuse(model)
    cfg = QuantConfig(w="binary", a="binary", binary_scale=False)
    binary = fuse(quantize_(model, cfg).eval())
    return floating, binary, accelerate(binary)


BUILDERS: dict[str, Callable[[], tuple[nn.Module, nn.Module, nn.Module]]] = {
    "layer": _layer, "nin": _nin}


def _paired(float_fn: Callable[[], None], bit_fn: Callable[[], None], rounds: int) -> dict:
    float_fn()
    bit_fn()
    floats, bits, float_cpu, bit_cpu = [], [], [], []
    for _ in range(rounds):
        for fn, times, cpu in ((float_fn, floats, float_cpu), (bit_fn, bits, bit_cpu)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    pairs = sorted(f / b for f, b in zip(floats, bits, strict=True))
    return {"float_seconds": min(floats), "bitpacked_seconds": min(bits),
            "speedup": min(floats) / min(bits), "median_paired_speedup": pairs[len(pairs) // 2],
            "cpu_speedup": min(float_cpu) / min(bit_cpu)}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(BUILDERS))
def test_bitpacked_speedup(benchmark, case: str, batch: int) -> None:
    torch.manual_seed(0)
    floating, fake, packed = BUILDERS[case]()
    x = torch.randn(batch, 192 if case == "layer" else 3, 16 if case == "layer" else 32,
                    16 if case == "layer" else 32)
    with torch.inference_mode():
        assert torch.equal(packed(x), fake(x)), "packed outputs differ from the fake-quantized"

    def run(net: nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                net(x)
        return call

    rounds = ROUNDS * (10 if batch == 1 else 1)
    result = benchmark.pedantic(_paired, args=(run(floating), run(packed), rounds), rounds=1,
                                iterations=1)
    result.update({"case": case, "batch": batch, "threads": torch.get_num_threads(),
                   "kernel": simd_path(), "packed_layers": len(bit_layers(packed)),
                   "packed_outputs": sum(getattr(m, "emit_lo", None) is not None
                                         for m in packed.modules())})
    benchmark.extra_info.update(result)
    print(f"\n{case} batch {batch} ({result['kernel']}, {result['threads']} threads): float "
          f"{result['float_seconds'] * 1e3:.2f} ms, packed "
          f"{result['bitpacked_seconds'] * 1e3:.2f} ms: x{result['speedup']:.2f} (median of "
          f"paired runs x{result['median_paired_speedup']:.2f}; CPU time "
          f"x{result['cpu_speedup']:.2f})")
    assert result["speedup"] > 0
