"""CI's smoke table: a float, a pruned, a k-bit, a binary and a fused row at a tiny schedule
and reduced width (the ``smoke`` profile: width 0.25, 2,048 training images). The binary row
re-estimates its BN statistics after training: 32 steps are too few for the low BN momentum
of the binary tricks to move the running estimates."""

from netshrink.bench.tables.recipes import binary_tricks, fuse, prune, quantize
from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 30, "quick": 4, "smoke": 4}, lr=0.1)
TUNE = Schedule(epochs={"full": 10, "quick": 2, "smoke": 2}, lr=0.02)
BINARY = Schedule(epochs={"full": 10, "quick": 2, "smoke": 2}, lr=1e-3, optimizer="adam",
                  weight_decay=0.0, recalibrate_bn=16)

SMOKE = register_table(Table(
    name="smoke",
    title="Smoke (CI): one row of each kind",
    baseline="nin-float",
    ci_only=True,
    rows=(
        Row("nin-float", "nin, float", model="nin", schedule=FLOAT),
        Row("nin-pruned50", "nin, 50% channels pruned (L1), fine-tuned", upstream="nin-float",
            stages=(prune("l1", 0.5, scope="per_layer"),), schedule=TUNE),
        Row("nin-w4a4", "nin, DoReFa W4A4", upstream="nin-float", stages=(quantize(4, 4),),
            schedule=TUNE),
        Row("nin-wbin-abin", "nin, W binary / A binary", upstream="nin-float",
            stages=(quantize("binary", "binary", **binary_tricks()),), schedule=BINARY),
        Row("nin-wbin-abin-fused", "nin W binary / A binary, BN fused",
            upstream="nin-wbin-abin", stages=(fuse(),)),
    ),
))
