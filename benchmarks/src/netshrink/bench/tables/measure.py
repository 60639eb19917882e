"""Measurements a table row reports beyond ModelStats: the size of the packed file on disk and
CPU latency."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn


def packed_size(model: nn.Module, run_dir: Path) -> tuple[int, str]:
    """Write the deployable file with ``netshrink.quant.save_packed`` (every quantized weight
    at its real bit width, float models as float) and return (its size in bytes, its name)."""
    from netshrink.quant import save_packed

    path = run_dir / "packed.safetensors"
    save_packed(model, path)
    return path.stat().st_size, path.name


@torch.no_grad()
def measure_latency(model: nn.Module, image_shape: tuple[int, ...],
                    batch_sizes: tuple[int, ...] = (1, 64), min_run_time: float = 1.0
                    ) -> dict[str, float]:
    """Median CPU forward latency in milliseconds per batch size (torch.utils.benchmark)."""
    from torch.utils import benchmark  # imported here: it loads the C++ extension machinery

    net = copy.deepcopy(model).cpu().eval()
    out = {}
    for b in batch_sizes:
        x = torch.randn(b, *image_shape)
        net(x)  # warm-up
        timer = benchmark.Timer(stmt="net(x)", globals={"net": net, "x": x})
        out[f"batch{b}"] = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
    return out
