"""The Deep Compression pipeline (Han et al., ICLR 2016) on our CIFAR models, and low rank
beside channel pruning at the same MACs.

Tables ``deep`` (resnet18_cifar) and ``deep_nin`` (nin; a table has one float baseline, which
accuracy loss and compression are measured against, hence two tables): magnitude pruning to
90 % sparsity with the AGP schedule while training -> per-layer k-means weight sharing with
4-bit codebooks (``share.kmeans``: pruned weights stay zero, centroids fine-tuned) -> Huffman
coding of the indices and sparse positions (``share.code``; no training, only the file
changes). Each step is a row, so the report gives the compression after each step, measured
from the packed file. ``deep`` also has a low-rank row (``lowrank.factorise``, channel scheme,
50 % of the MACs) next to L1 channel pruning at 50 % of the MACs, each fine-tuned from the
same float model, with CPU latency.
"""

from __future__ import annotations

from typing import Any

from netshrink.bench.tables.recipes import prune
from netshrink.bench.tables.spec import NO_TRAINING, Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 200, "quick": 8, "smoke": 2}, lr=0.1)
SPARSE = Schedule(epochs={"full": 60, "quick": 3, "smoke": 1}, lr=0.02)
SHARE = Schedule(epochs={"full": 20, "quick": 1, "smoke": 1}, lr=0.005)
FINETUNE = Schedule(epochs={"full": 40, "quick": 2, "smoke": 1}, lr=0.01)
SPARSITY = 0.9
BITS = 4
MACS_TARGET = 0.5


def magnitude_agp(amount: float) -> dict[str, Any]:
    """netshrink.prune unstructured magnitude pruning, AGP from 0 to ``amount`` over the first
    70 % of the training steps (global scope)."""
    return {"kind": "prune.magnitude",
            "config": {"amount": amount, "schedule": "agp", "start": 0.0, "end": 0.7}}


def share(bits: int) -> dict[str, Any]:
    """netshrink.share k-means weight sharing, ``2**bits`` centroids per layer."""
    return {"kind": "share.kmeans", "config": {"bits": bits}}


def code() -> dict[str, Any]:
    """netshrink.share: packed files Huffman-code the shared layers."""
    return {"kind": "share.code", "config": {"coding": "huffman"}}


def low_rank(macs_target: float) -> dict[str, Any]:
    """netshrink.lowrank channel factorisation to ``macs_target`` of the MACs."""
    return {"kind": "lowrank.factorise",
            "config": {"method": "channel", "macs_target": macs_target}}


def _pipeline(prefix: str, model: str) -> tuple[Row, ...]:
    pct = int(SPARSITY * 100)
    return (
        Row(f"{prefix}-float", f"{model}, float", model=model, schedule=FLOAT, latency=True),
        Row(f"{prefix}-pruned", f"{model}, magnitude pruned to {pct}% (AGP)",
            upstream=f"{prefix}-float", stages=(magnitude_agp(SPARSITY),), schedule=SPARSE),
        Row(f"{prefix}-shared", f"{model}, pruned {pct}% + {BITS}-bit k-means weight sharing",
            upstream=f"{prefix}-pruned", stages=(share(BITS),), schedule=SHARE),
        Row(f"{prefix}-coded", f"{model}, pruned {pct}% + {BITS}-bit sharing + Huffman coding",
            upstream=f"{prefix}-shared", stages=(code(),), schedule=NO_TRAINING),
    )


DEEP = register_table(Table(
    name="deep",
    title="CIFAR-10, resnet18_cifar: pruning -> weight sharing -> Huffman coding; low rank "
          "vs channel pruning at 50% MACs",
    extra=True,  # quick profile too long for CI's budget: run by name
    baseline="r18-float",
    rows=(
        *_pipeline("r18", "resnet18_cifar"),
        Row("r18-lowrank50", "resnet18_cifar, low rank (channel, SVD) at 50% MACs",
            upstream="r18-float", stages=(low_rank(MACS_TARGET),), schedule=FINETUNE,
            latency=True),
        Row("r18-channels50", "resnet18_cifar, L1 channel pruning at 50% MACs",
            upstream="r18-float",
            stages=(prune("l1", scope="per_layer", macs_target=MACS_TARGET),),
            schedule=FINETUNE, latency=True),
    ),
))

DEEP_NIN = register_table(Table(
    name="deep_nin",
    title="CIFAR-10, nin: pruning -> weight sharing -> Huffman coding",
    extra=True,  # quick profile too long for CI's budget: run by name
    baseline="nin-float",
    rows=_pipeline("nin", "nin"),
))
