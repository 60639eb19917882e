"""The CIFAR-10 NIN table every compression user knows (micronet's), measured.

Chains: float -> quantized rows (QAT fine-tuning from the float weights); float -> sparse
training (slimming) -> channel pruning -> fine-tune -> quantized; the bacp-order float model ->
binary-activation rows, each also distilled from the float model (the same row with a
``distill.kd`` stage and the float row as teacher: the table reports both); trained rows ->
BN-fused deployment forms (no training).
"""

import dataclasses

from netshrink.bench.tables.distill import distill
from netshrink.bench.tables.recipes import binary_tricks, fuse, prune, quantize, slimming
from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 200, "quick": 8, "smoke": 2}, lr=0.1)
SPARSE = Schedule(epochs={"full": 100, "quick": 2, "smoke": 1}, lr=0.05)
FINETUNE = Schedule(epochs={"full": 100, "quick": 2, "smoke": 1}, lr=0.02)
# Quantized rows re-estimate BN statistics after training (20 batches): QAT shifts the
# activation statistics, and the low BN momentum of the binary tricks makes the running
# estimates lag far behind in a short schedule (measured: W binary / A float after one epoch,
# 9.8% test accuracy without, 45.9% with).
QAT = Schedule(epochs={"full": 150, "quick": 2, "smoke": 1}, lr=0.02, recalibrate_bn=20)
BINARY_QAT = Schedule(epochs={"full": 200, "quick": 3, "smoke": 1}, lr=1e-3, optimizer="adam",
                      weight_decay=0.0, recalibrate_bn=20)
# The quick profile's epochs go where they buy accuracy: the 8-bit rows (calibrated clips,
# int8 observers) start near float accuracy and get one epoch; the two bacp binary-activation
# rows, the furthest from float and still climbing after 3-4 epochs, get ten at Adam lr 5e-3
# (and so do their distilled twins). Measured (quick profile, seed 0, same machine; float nin
# 60.8 %), W binary / A binary and W ternary no-scale / A binary:
#   lr 1e-3: 37.7 (4 epochs) / 41.1 / 46.2 (10) and 38.5 (3) / 40.2 / 47.9 (10)
#   lr 5e-3: 43.9 (6) / 49.3 (10) and 44.8 (6) / 50.0 (10)
#   distilled from the float nin (alpha 0.9, T 4), lr 5e-3: 45.1 (6) / 51.0 (10) and 49.9 (10);
#   lr 1e-3: 42.3 (6) / 43.7 (10) and 45.5 (6) / 47.6 (10)
# KD helps most in short schedules; single seed, so differences under ~2 points are noise. The
# teacher's forward makes a distilled step ~1.7x as long as a plain one (nin teaching nin).
QAT_SHORT = Schedule(epochs={"full": 150, "quick": 1, "smoke": 1}, lr=0.02, recalibrate_bn=20)
BINARY_QAT_LONG = Schedule(epochs={"full": 200, "quick": 10, "smoke": 1}, lr=5e-3,
                           optimizer="adam", weight_decay=0.0, recalibrate_bn=20)

#: The teacher of the distilled rows: the float nin (cbap order; its logits are all the student
#: sees, so its block order need not match the bacp student's).
KD_TEACHER = "nin-float"
KD_ALPHA, KD_TEMPERATURE = 0.9, 4.0

WBIN_ABIN = Row("nin-wbin-abin", "nin bacp, W binary / A binary", upstream="nin-bacp-float",
                stages=(quantize("binary", "binary", **binary_tricks()),),
                schedule=BINARY_QAT_LONG)
WTERN0_ABIN = Row("nin-wtern0-abin", "nin bacp, W ternary without scale / A binary",
                  upstream="nin-bacp-float",
                  stages=(quantize("ternary", "binary",
                                   **binary_tricks(ternary_scale=False, ternary_gap=0.05)),),
                  schedule=BINARY_QAT_LONG)


def distilled(row: Row, teacher: str = KD_TEACHER) -> Row:
    """``row`` (name + ``-kd``) trained by knowledge distillation from row ``teacher``: the
    same upstream, stages and schedule plus a ``distill.kd`` stage, so that the two rows differ
    only in the loss (``alpha T^2 KL(teacher || student) + (1 - alpha) CE``)."""
    return dataclasses.replace(
        row, name=f"{row.name}-kd",
        label=f"{row.label}, distilled from {teacher} (alpha {KD_ALPHA:g}, T {KD_TEMPERATURE:g})",
        stages=(*row.stages, distill(KD_ALPHA, KD_TEMPERATURE)), teacher=teacher)


#: Each distilled row -> the row it is the distilled twin of.
KD_PAIRS: dict[str, str] = {f"{r.name}-kd": r.name for r in (WBIN_ABIN, WTERN0_ABIN)}

MICRONET = register_table(Table(
    name="micronet",
    title="CIFAR-10, Network-in-Network: compression recipes",
    baseline="nin-float",
    rows=(
        Row("nin-float", "nin, float", model="nin", schedule=FLOAT),
        Row("nin_gc-float", "nin_gc (grouped + shuffle), float", model="nin_gc",
            schedule=FLOAT),
        Row("nin-sparse", "nin, slimming sparse training (s=1e-4)", upstream="nin-float",
            stages=(slimming(1e-4),), schedule=SPARSE),
        Row("nin-pruned50-raw", "nin, 50% channels pruned (slimming), before fine-tuning",
            upstream="nin-sparse", stages=(prune("bn_gamma", 0.5),)),
        Row("nin-pruned50", "nin, 50% channels pruned (slimming), fine-tuned",
            upstream="nin-pruned50-raw", schedule=FINETUNE),
        Row("nin-wbin", "nin, W binary (XNOR scale) / A float", upstream="nin-float",
            stages=(quantize("binary", 32, bn_momentum=0.01),), schedule=QAT),
        Row("nin-wtern", "nin, W ternary (TWN, gap 0.05) / A float", upstream="nin-float",
            stages=(quantize("ternary", 32, ternary_gap=0.05, bn_momentum=0.01),),
            schedule=QAT),
        Row("nin-bacp-float", "nin bacp order, float", model="nin",
            model_kwargs={"block_order": "bacp"}, schedule=FLOAT),
        WBIN_ABIN,
        distilled(WBIN_ABIN),
        WTERN0_ABIN,
        distilled(WTERN0_ABIN),
        Row("nin-w8a8", "nin, DoReFa W8A8 (activation clip calibrated, 99.99th pct)",
            upstream="nin-float", stages=(quantize(8, 8, a_calibrate=99.99),),
            schedule=QAT_SHORT),
        Row("nin-int8", "nin, int8 per-channel symmetric, BN folded in training",
            upstream="nin-float", stages=(quantize(8, 8, scheme="int8_affine"),),
            schedule=QAT_SHORT),
        Row("nin-pruned50-wtern-abin", "nin pruned 50% + W ternary / A binary",
            upstream="nin-pruned50",
            stages=(quantize("ternary", "binary", **binary_tricks(ternary_gap=0.05)),),
            schedule=BINARY_QAT),
        Row("nin_gc-sparse", "nin_gc, slimming sparse training (s=1e-3)",
            upstream="nin_gc-float", stages=(slimming(1e-3),), schedule=SPARSE),
        Row("nin_gc-pruned-group", "nin_gc, 50% pruned (group mode), fine-tuned",
            upstream="nin_gc-sparse", stages=(prune("bn_gamma", 0.5, mode="group"),),
            schedule=FINETUNE),
        Row("nin_gc-pruned-wtern-abin", "nin_gc pruned (group) + W ternary / A binary",
            upstream="nin_gc-pruned-group",
            stages=(quantize("ternary", "binary", **binary_tricks(ternary_gap=0.05)),),
            schedule=BINARY_QAT),
        Row("nin-wbin-abin-fused", "nin W binary / A binary, BN fused (threshold)",
            upstream="nin-wbin-abin", stages=(fuse(),)),
        Row("nin-int8-fused", "nin int8, BN fused", upstream="nin-int8", stages=(fuse(),)),
    ),
))
