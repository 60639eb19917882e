"""CPU inference latency of nin channel-pruned by 50% vs. unpruned (netshrink.prune), next to
the MACs ratio.

    .venv/bin/python -m pytest benchmarks/micro/test_prune_latency.py --benchmark-only \
        --benchmark-group-by=group -s

nin (width 1), 32x32 inputs, batch 1 and 64, eval mode under ``torch.inference_mode``. The
pruned model is nin pruned by ``bn_gamma`` at 50% (global, normal mode) after giving the BN
scales a spread (random |gamma|, standing in for sparsity training: the latency depends on
the kept channel counts only). Each case stores params, MACs and the pruned/unpruned MACs
ratio in extra_info. Set NETSHRINK_BENCH_ROUNDS to change the batch-64 rounds (batch 1 runs
ten times as many).
"""

from __future__ import annotations

import os

import pytest
import torch

from netshrink.core import ModelStats
from netshrink.models import create_model
from netshrink.prune import ChannelPruneConfig, prune_channels

ROUNDS = int(os.environ.get("NETSHRINK_BENCH_ROUNDS", "3"))
BATCHES = (1, 64)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, ModelStats]]:
    torch.manual_seed(0)
    model = create_model("nin").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.0, 1.0)
    x = torch.zeros(1, 3, 32, 32)
    pruned = prune_channels(model, x, ChannelPruneConfig(criterion="bn_gamma", amount=0.5))
    return {"unpruned": (model, ModelStats.measure(model, x)),
            "pruned50": (pruned.eval(), ModelStats.measure(pruned, x))}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", ["unpruned", "pruned50"])
def test_inference_latency(benchmark, models, batch: int, variant: str) -> None:
    net, stats = models[variant]
    base = models["unpruned"][1]
    x = torch.randn(batch, 3, 32, 32)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    benchmark.group = f"nin batch {batch}"
    benchmark.extra_info.update({
        "model": "nin", "batch": batch, "variant": variant, "params": stats.params,
        "macs": stats.macs, "macs_ratio": stats.macs / base.macs,
        "params_ratio": stats.params / base.params, "threads": torch.get_num_threads()})
    rounds = ROUNDS * (10 if batch == 1 else 1)
    out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    assert out.shape == (batch, 10)
