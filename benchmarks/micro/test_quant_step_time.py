"""Training-step time of quantization-aware training on NIN, as ratios to the float step.

    .venv/bin/python -m pytest benchmarks/micro/test_quant_step_time.py --benchmark-only -s

Cases: netshrink's DoReFa W8A8 / W4A4 / W2A2, W4A4 with learned activation clipping (PACT,
LSQ), ternary weights with binary activations, binary weights and activations, the int8 observer
mode (``scheme="int8_affine"``, BN folded into the convs), and PyTorch's own QAT
(``prepare_qat_fx`` with the x86 default QAT qconfig mapping). Each case trains full-width NIN at
batch 128 on CPU (32x32 random images) with SGD, alternating one float step and one quantized
step ``NETSHRINK_BENCH_STEPS`` times (default 3, after one warm-up step of each), so that load
from other processes hits both alike; the reported ratio is the fastest quantized step over the
fastest float step, with the median ratio of adjacent (float, quantized) pairs beside it.
extra_info holds both times and the ratios; ``-s`` prints them.

``test_layer_time_ratio`` does the same for single NIN layers (forward and backward of
BN output -> ReLU -> conv against the quantized conv with its input quantizer, no ReLU), plus
the weight and activation quantizers alone: less noisy than whole steps on a busy machine.
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
from netshrink.quant import (
    BinaryAct,
    BinaryWeight,
    QuantConfig,
    QuantConv2d,
    TernaryWeight,
    constrain_latent_weights_,
    quantize_,
)

STEPS = int(os.environ.get("NETSHRINK_BENCH_STEPS", "3"))
BATCH = 128

CASES: dict[str, QuantConfig | str] = {
    "W8A8": QuantConfig(w=8, a=8),
    "W4A4": QuantConfig(w=4, a=4),
    "W2A2": QuantConfig(w=2, a=2),
    "W4A4-pact": QuantConfig(w=4, a=4, a_quantizer="pact"),
    "W4A4-lsq": QuantConfig(w=4, a=4, a_quantizer="lsq"),
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
            constrain_latent_weights_(model)
        return time.perf_counter() - start

    return step


def _paired(float_step: Callable[[], float], quant_step: Callable[[], float]) -> dict:
    float_step(), quant_step()  # warm-up
    floats, quants = [], []
    for _ in range(STEPS):
        floats.append(float_step())
        quants.append(quant_step())
    pairs = sorted(q / f for q, f in zip(quants, floats, strict=True))
    return {"float_seconds": min(floats), "quant_seconds": min(quants),
            "ratio_to_float": min(quants) / min(floats),
            "median_paired_ratio": pairs[len(pairs) // 2]}


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
    model = _pytorch_qat(model, x) if config == "pytorch" else quantize_(model, config)
    binary = isinstance(config, QuantConfig) and config.w == "binary"
    result = benchmark.pedantic(
        _paired, args=(_stepper(float_model, x, y, False), _stepper(model, x, y, binary)),
        rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{case}: {result['quant_seconds']:.3f} s/step vs float "
          f"{result['float_seconds']:.3f} s/step: {result['ratio_to_float']:.2f}x (median of "
          f"paired steps {result['median_paired_ratio']:.2f}x)")
    assert result["ratio_to_float"] > 0


#: NIN layers (full width, batch 128): (in, out, kernel, resolution).
LAYERS = {"conv2-1x1-32px": (192, 160, 1, 32), "conv4-5x5-16px": (96, 192, 5, 16),
          "conv7-3x3-8px": (192, 192, 3, 8)}
WEIGHTS = {"ternary": TernaryWeight, "binary": BinaryWeight}


def _best(fns: dict[str, Callable[[], None]], rounds: int,
          reset: Callable[[], None]) -> dict[str, float]:
    """Fastest of ``rounds`` interleaved runs of each function (after one warm-up each);
    ``reset`` (untimed) runs before each, e.g. to free the previous run's gradients."""
    for fn in fns.values():
        reset()
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            reset()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_time_ratio(benchmark, layer, weights):
    c_in, c_out, k, px = LAYERS[layer]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, c_in, px, px, generator=g).requires_grad_(True)
    grad = torch.randn(BATCH, c_out, px, px, generator=g)
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    wq, aq = WEIGHTS[weights](), BinaryAct()
    quant = QuantConv2d.from_float(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), wq, aq)
    w2d = quant.weight.detach().view(c_out, -1).clone().requires_grad_(True)
    w_grad = torch.randn(w2d.shape, generator=g)

    def run(fn: Callable[[], torch.Tensor], out_grad: torch.Tensor) -> Callable[[], None]:
        return lambda: fn().backward(out_grad)

    def reset() -> None:
        x.grad = w2d.grad = None
        conv.zero_grad(set_to_none=True)
        quant.zero_grad(set_to_none=True)

    fns = {"float": run(lambda: conv(F.relu(x)), grad), "quant": run(lambda: quant(x), grad),
           "relu": run(lambda: F.relu(x), x), "act_quant": run(lambda: aq(x), x),
           "weight_quant": run(lambda: wq(w2d), w_grad)}
    best = benchmark.pedantic(_best, args=(fns, max(STEPS, 5), reset), rounds=1, iterations=1)
    result = {f"{name}_seconds": t for name, t in best.items()}
    result["ratio_to_float"] = best["quant"] / best["float"]
    benchmark.extra_info.update(result)
    print(f"\n{layer} W {weights} / A binary: {best['quant'] * 1e3:.1f} ms vs float "
          f"{best['float'] * 1e3:.1f} ms: {result['ratio_to_float']:.2f}x (activation "
          f"{best['act_quant'] * 1e3:.1f} ms vs ReLU {best['relu'] * 1e3:.1f} ms, weight "
          f"quantizer {best['weight_quant'] * 1e3:.2f} ms)")
    assert result["ratio_to_float"] > 0
