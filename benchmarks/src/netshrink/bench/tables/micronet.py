"""The CIFAR-10 NIN table every compression user knows (micronet's), measured.

Chains: float -> quantized rows (QAT fine-tuning from the float weights); float -> sparse
training (slimming) -> channel pruning -> fine-tune -> quantized; the bacp-order float model ->
binary-activation rows; trained rows -> BN-fused deployment forms (no training).
"""

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
# The quick profile's epochs go where they buy accuracy, its total unchanged: the 8-bit rows
# (calibrated clips, int8 observers) start near float accuracy and get one epoch; W binary /
# A binary, the furthest from float, gets four.
QAT_SHORT = Schedule(epochs={"full": 150, "quick": 1, "smoke": 1}, lr=0.02, recalibrate_bn=20)
BINARY_QAT_LONG = Schedule(epochs={"full": 200, "quick": 4, "smoke": 1}, lr=1e-3,
                           optimizer="adam", weight_decay=0.0, recalibrate_bn=20)

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
        Row("nin-wbin-abin", "nin bacp, W binary / A binary", upstream="nin-bacp-float",
            stages=(quantize("binary", "binary", **binary_tricks()),),
            schedule=BINARY_QAT_LONG),
        Row("nin-wtern0-abin", "nin bacp, W ternary without scale / A binary",
            upstream="nin-bacp-float",
            stages=(quantize("ternary", "binary", **binary_tricks(ternary_scale=False,
                                                                  ternary_gap=0.05)),),
            schedule=BINARY_QAT),
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
