"""The Deep Compression pipeline (Han et al., ICLR 2016) on our CIFAR models, and low rank
beside channel pruning at the same MACs.

Tables ``deep`` (resnet18_cifar) and ``deep_nin`` (nin; a table has one float baseline, which
accuracy loss and compression are measured against, hence two tables): magnitude pruning to
95 % sparsity (nin: 90 %) with the AGP schedule while training -> per-layer k-means weight
sharing with 4-bit codebooks (``share.kmeans``: pruned weights stay zero, centroids
fine-tuned) -> Huffman coding of the indices and sparse positions (``share.code``; no
training, only the file changes). Each step is a row, so the report gives the compression
after each step, measured from the packed file. ``deep`` also has two low-rank rows
(``lowrank.factorise`` at 50 % of the MACs: the channel scheme, an SVD of the reshaped kernel,
and Tucker-2 by HOSVD) next to L1 channel pruning at 50 % of the MACs, each fine-tuned from the
same float model, with CPU latency.

Why 95 %: the goal is a file at least 40x smaller than float at most 1 point less accurate. At
90 % the quick profile's coded file was 85.8 KB, 32.8x (loss 0.00): 61.9 KB of coded indices
and gap positions (~7.1 bits per kept weight), 20.6 KB of float32 (BatchNorm weights, biases
and running statistics, 4 x 1200 channels, are ~19 KB of it; the 21 codebooks 1.3 KB) and
2.8 KB of structure. Only the coded part shrinks with the sparsity: at 95 % it is 32.3 KB
(35 k kept weights, 3.3 bits of index and 4.1 of position each), the file 56 KB (50x), and the
quick profile's accuracy was 0.3 points above the float model's. The first and last layers
are shared and pruned like the others (as float32 they would add ~7 KB).
"""

from __future__ import annotations

from typing import Any

from netshrink.bench.tables.recipes import prune
from netshrink.bench.tables.spec import NO_TRAINING, Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 200, "quick": 8, "smoke": 2}, lr=0.1)
SPARSE = Schedule(epochs={"full": 60, "quick": 3, "smoke": 1}, lr=0.02)
SHARE = Schedule(epochs={"full": 20, "quick": 1, "smoke": 1}, lr=0.005)
FINETUNE = Schedule(epochs={"full": 40, "quick": 2, "smoke": 1}, lr=0.01)
SPARSITY = 0.95  # resnet18_cifar (see the module doc)
NIN_SPARSITY = 0.9  # nin: not yet produced, left at the first recipe's 90 %
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


def low_rank(macs_target: float, method: str = "channel") -> dict[str, Any]:
    """netshrink.lowrank factorisation (``method``: channel SVD or Tucker-2) to
    ``macs_target`` of the MACs."""
    return {"kind": "lowrank.factorise",
            "config": {"method": method, "macs_target": macs_target}}


def _pipeline(prefix: str, model: str, sparsity: float) -> tuple[Row, ...]:
    pct = round(sparsity * 100)
    return (
        Row(f"{prefix}-float", f"{model}, float", model=model, schedule=FLOAT, latency=True),
        Row(f"{prefix}-pruned", f"{model}, magnitude pruned to {pct}% (AGP)",
            upstream=f"{prefix}-float", stages=(magnitude_agp(sparsity),), schedule=SPARSE),
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
        *_pipeline("r18", "resnet18_cifar", SPARSITY),
        Row("r18-lowrank50", "resnet18_cifar, low rank (channel, SVD) at 50% MACs",
            upstream="r18-float", stages=(low_rank(MACS_TARGET),), schedule=FINETUNE,
            latency=True),
        Row("r18-tucker50", "resnet18_cifar, low rank (Tucker-2, HOSVD) at 50% MACs",
            upstream="r18-float", stages=(low_rank(MACS_TARGET, "tucker2"),),
            schedule=FINETUNE, latency=True),
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
    rows=_pipeline("nin", "nin", NIN_SPARSITY),
))
