"""CI's smoke table: a few rows of the others at a tiny schedule and reduced width."""

from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

TINY = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=0.05)

SMOKE = register_table(Table(
    name="smoke",
    title="Smoke (CI): float baseline",
    baseline="nin-float",
    ci_only=True,
    rows=(
        Row("nin-float", "nin, float", model="nin", schedule=TINY),
    ),
))
