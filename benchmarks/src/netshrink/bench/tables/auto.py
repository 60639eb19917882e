"""Automatic vs uniform compression at the same budget and the same fine-tuning (issue 15), on
nin and resnet18_cifar, each row fine-tuned from the same trained float model:

* 50 % MACs: uniform per-layer L1 pruning (every group loses the same share) vs ``auto.prune``
  (per-group amounts from the sensitivity curves, netshrink.auto.budget);
* the packed size of uniform W4 (every layer, first and last included; activations float) vs
  ``auto.mixed`` (per-layer 8 / 4 / 2 / ternary / binary weights, an exact knapsack on the
  sensitivity losses, the file's measured size within the W4 file's);
* the packed size of uniform W2, where allocation has room to matter (uniform W4 is nearly
  lossless at this scale, so at the W4 size there is little for the allocator to win): uniform
  W2 vs ``auto.mixed`` within the W2 file's size (it may give sensitive layers 4 or 8 bits and
  others ternary or binary);
* combined: the pruned rows quantized again at their own W4 size, uniform W4 vs mixed.

The search runs inside the stage on 4 training batches (2 to measure accuracy, 2 to re-estimate
BatchNorm statistics); its wall time is in each auto row's recipe (``search_seconds``) and
in the table's "search (s)" column (summed over the row's recipe, so the combined row counts
its upstream's pruning search too). The uniform r18 pruning row is the prune table's
``r18-l1-normal`` (same spec: reused under ``--table all``).
"""

from __future__ import annotations

from typing import Any

from netshrink.bench.tables.recipes import prune, quantize
from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 200, "quick": 8, "smoke": 2}, lr=0.1)  # as the bits / prune
FINETUNE = Schedule(epochs={"full": 40, "quick": 2, "smoke": 1}, lr=0.01)  # as the prune table
QAT = Schedule(epochs={"full": 150, "quick": 2, "smoke": 1}, lr=0.02, recalibrate_bn=20)
MACS_TARGET = 0.5
W4 = quantize(4, 32, first="same", last="same")
W2 = quantize(2, 32, first="same", last="same")


def auto_prune(macs_target: float) -> dict[str, Any]:
    return {"kind": "auto.prune", "config": {"macs_target": macs_target}}


def auto_mixed(size_like: int | str) -> dict[str, Any]:
    return {"kind": "auto.mixed", "config": {"size_like": size_like}}


def _rows(short: str, model: str, uniform_prune_name: str, float_latency: bool
          ) -> tuple[Row, ...]:
    """The float row has the spec of the other tables' (so ``--table all`` trains it once)."""
    name = model
    return (
        Row(f"{short}-float", f"{name}, float", model=model, schedule=FLOAT,
            latency=float_latency),
        Row(uniform_prune_name, f"{name} 50% MACs, uniform (L1 per layer)",
            upstream=f"{short}-float", schedule=FINETUNE, latency=True,
            stages=(prune("l1", mode="normal", scope="per_layer", macs_target=MACS_TARGET),)),
        Row(f"{short}-auto-prune", f"{name} 50% MACs, automatic (sensitivity greedy)",
            upstream=f"{short}-float", schedule=FINETUNE, latency=True,
            stages=(auto_prune(MACS_TARGET),)),
        Row(f"{short}-uniform-w4", f"{name} W4 (all layers) / A float",
            upstream=f"{short}-float", schedule=QAT, stages=(W4,)),
        Row(f"{short}-auto-mixed", f"{name} mixed precision at the W4 size",
            upstream=f"{short}-float", schedule=QAT, stages=(auto_mixed(4),)),
        Row(f"{short}-uniform-w2", f"{name} W2 (all layers) / A float",
            upstream=f"{short}-float", schedule=QAT, stages=(W2,)),
        Row(f"{short}-auto-mixed-w2", f"{name} mixed precision at the W2 size",
            upstream=f"{short}-float", schedule=QAT, stages=(auto_mixed(2),)),
        Row(f"{short}-uniform-prune-w4", f"{name} 50% MACs uniform, then W4",
            upstream=uniform_prune_name, schedule=QAT, stages=(W4,)),
        Row(f"{short}-auto-prune-mixed", f"{name} 50% MACs automatic, then mixed at its W4 size",
            upstream=f"{short}-auto-prune", schedule=QAT, stages=(auto_mixed(4),)),
    )


AUTO = register_table(Table(
    name="auto",
    title="CIFAR-10: automatic vs uniform compression at equal budget and fine-tuning",
    baseline="r18-float",
    baseline_per_chain=True,  # nin rows against nin-float, r18 rows against r18-float
    extra=True,  # quick profile too long for CI's budget: run by name
    before_training=True,
    rows=(*_rows("nin", "nin", "nin-uniform-prune", float_latency=False),
          *_rows("r18", "resnet18_cifar", "r18-l1-normal", float_latency=True)),
))
