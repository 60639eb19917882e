"""Pruning criteria compared at one cost: resnet18_cifar pruned to half its MACs by each
criterion (bn_gamma, l1, l2, fpgm, taylor, random), in normal mode and in regular mode (every
pruned layer keeps a multiple of 8 channels), each fine-tuned from the same trained float model,
with measured CPU latency.

Every row uses per-layer scope: each group of tied layers loses its share, so in normal mode all
criteria give the same architecture and differ only in which channels they keep; regular mode
rounds the counts. ``macs_target`` searches the amount that lands just under 50 % of the float
model's MACs. The accuracy right after pruning (before fine-tuning) is reported too: it is where
the criteria differ most.
"""

from __future__ import annotations

from netshrink.bench.tables.recipes import prune
from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 200, "quick": 8, "smoke": 2}, lr=0.1)
FINETUNE = Schedule(epochs={"full": 40, "quick": 2, "smoke": 1}, lr=0.01)
CRITERIA: tuple[str, ...] = ("bn_gamma", "l1", "l2", "fpgm", "taylor", "random")
MACS_TARGET = 0.5


def _row(criterion: str, mode: str) -> Row:
    options = {"mode": mode, "scope": "per_layer", "macs_target": MACS_TARGET}
    if mode == "regular":
        options["round_to"] = 8
    label = f"{criterion}, {'regular (x8)' if mode == 'regular' else 'normal'}"
    return Row(f"r18-{criterion}-{mode}", f"resnet18_cifar 50% MACs, {label}",
               upstream="r18-float", stages=(prune(criterion, **options),),
               schedule=FINETUNE, latency=True)


PRUNE = register_table(Table(
    name="prune",
    title="CIFAR-10, resnet18_cifar pruned to 50% of its MACs: criteria and modes",
    baseline="r18-float",
    before_training=True,
    plot_x="latency",
    rows=(
        Row("r18-float", "resnet18_cifar, float", model="resnet18_cifar", schedule=FLOAT,
            latency=True),
        *(_row(c, m) for m in ("normal", "regular") for c in CRITERIA),
    ),
))
