"""Evaluation and BatchNorm re-estimation: the model-only passes the Trainer runs after
training (and the tables runner runs on finished models)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from netshrink.bench.data import DeviceLoader
from netshrink.bench.engine.distributed import DistEnv


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: DeviceLoader, batches: int,
                   autocast: contextlib.AbstractContextManager | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average
    over ``batches`` training batches (momentum None), without touching any weight. A
    BatchNorm those forward passes do not update (unused, or frozen, as quant's folded conv-BN
    after ``freeze_bn_stats``) keeps its statistics. Returns the number recalibrated."""
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    saved = [{k: v.clone() for k, v in m.state_dict().items() if k.startswith(("running_",
                                                                               "num_batches"))}
             for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            with autocast or contextlib.nullcontext():
                model(x)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    untouched = [(m, old) for m, old in zip(bns, saved, strict=True)
                 if int(m.num_batches_tracked) == 0]
    for m, old in untouched:
        m.load_state_dict(old, strict=False)
    return len(bns) - len(untouched)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, env: DistEnv | None = None,
             autocast: contextlib.AbstractContextManager | None = None) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) of ``model`` in eval mode over ``loader``, summed
    over all DDP ranks (each rank evaluates its own shard)."""
    env = env or DistEnv()
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros((), dtype=torch.int64, device=env.device)
    count = 0
    for x, y in loader:
        with autocast or contextlib.nullcontext():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += y.numel()
    model.train(was_training)
    loss_total, correct_total, n = env.all_reduce_sum(
        [loss_sum.item(), float(correct.item()), float(count)])
    return loss_total / max(n, 1), correct_total / max(n, 1)
