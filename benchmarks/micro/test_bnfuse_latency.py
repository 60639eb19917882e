"""CPU inference latency of BN-fused vs. unfused models (netshrink.bnfuse).

    .venv/bin/python -m pytest benchmarks/micro/test_bnfuse_latency.py --benchmark-only \
        --benchmark-group-by=group

nin (width 1) and tv:resnet18, 32x32 inputs, batch 1 and 64, eval mode under
``torch.inference_mode``. Rounds are few (the CPU is slow); set NETSHRINK_BENCH_ROUNDS to change
the batch-64 rounds (batch 1 runs ten times as many). Each case stores the fused speed-up
reference in extra_info and checks that the fused logits match.
"""

from __future__ import annotations

import os

import pytest
import torch

from netshrink.bnfuse import compare, fuse
from netshrink.models import create_model

ROUNDS = int(os.environ.get("NETSHRINK_BENCH_ROUNDS", "3"))
MODELS = ("nin", "tv:resnet18")
BATCHES = (1, 64)


@pytest.fixture(scope="module", params=MODELS)
def pair(request) -> tuple[str, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    return request.param, model, fuse(model)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", ["unfused", "fused"])
def test_inference_latency(benchmark, pair, batch: int, variant: str) -> None:
    name, model, fused = pair
    net = fused if variant == "fused" else model
    x = torch.randn(batch, 3, 32, 32)
    if variant == "fused":
        assert compare(model, fused, [x]).max_rel_diff < 1e-5

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    benchmark.group = f"{name} batch {batch}"
    benchmark.extra_info.update({"model": name, "batch": batch, "variant": variant,
                                 "threads": torch.get_num_threads()})
    rounds = ROUNDS * (10 if batch == 1 else 1)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
