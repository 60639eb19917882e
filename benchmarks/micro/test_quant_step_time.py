"""Training-step time of quantization-aware training on NIN, as ratios to the float step.

    .venv/bin/python -m pytest benchmarks/micro/test_quant_step_time.py --benchmark-only -s

Cases: netshrink's DoReFa W8A8 / W4A4 / W2A2, ternary weights with binary activations, binary
weights and activations, the int8 observer mode (``scheme="int8_affine"``, BN folded into the
convs), and PyTorch's own QAT (``prepare_qat_fx`` with the x86 default QAT qconfig mapping).
Each case trains full-width NIN at batch 128 on CPU (32x32 random images) with SGD, alternating
one float step and one quantized step ``NETSHRINK_BENCH_STEPS`` times (default 3, after one
warm-up step of each), so that load from other processes hits both alike; the reported ratio is
the fastest quantized step over the fastest float step. extra_info holds both times and the
ratio; ``-s`` prints them.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.models import create_model
from netshrink.quant import QuantConfig, constrain_latent_weights, quantize

STEPS = int(os.environ.get("NETSHRINK_BENCH_STEPS", "3"))
BATCH = 128

CASES: dict[str, QuantConfig | str] = {
    "W8A8": QuantConfig(w=8, a=8),
    "W4A4": QuantConfig(w=4, a=4),
    "W2A2": QuantConfig(w=2, a=2),
    "Wternary-Abinary": QuantConfig(w="ternary", a="binary"),
    "Wbinary-Abinary": QuantConfig(w="binary", a="binary"),
    "int8-observer": QuantConfig(w=8, a=8, scheme="int8_affine"),
    "pytorch-qat-x86": "pytorch",
}


def _pytorch_qat(model: nn.Module, x: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping("x86"),
                              example_inputs=(x,))


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             binary: bool) -> Callable[[], float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if binary:
            constrain_latent_weights(model)
        return time.perf_counter() - start

    return step


def _paired(float_step: Callable[[], float], quant_step: Callable[[], float]) -> dict:
    float_step(), quant_step()  # warm-up
    floats, quants = [], []
    for _ in range(STEPS):
        floats.append(float_step())
        quants.append(quant_step())
    return {"float_seconds": min(floats), "quant_seconds": min(quants),
            "ratio_to_float": min(quants) / min(floats)}


@pytest.mark.parametrize("case", list(CASES))
def test_step_time_ratio(benchmark, case):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    torch.manual_seed(0)
    float_model = create_model("nin").train()
    torch.manual_seed(0)
    model = create_model("nin").train()
    config = CASES[case]
    model = _pytorch_qat(model, x) if config == "pytorch" else quantize(model, config)
    binary = isinstance(config, QuantConfig) and config.w == "binary"
    result = benchmark.pedantic(
        _paired, args=(_stepper(float_model, x, y, False), _stepper(model, x, y, binary)),
        rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{case}: {result['quant_seconds']:.3f} s/step vs float "
          f"{result['float_seconds']:.3f} s/step: {result['ratio_to_float']:.2f}x")
    assert result["ratio_to_float"] > 0
