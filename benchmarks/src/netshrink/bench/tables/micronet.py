"""The CIFAR-10 NIN table every compression user knows (micronet's), measured."""

from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 100, "quick": 4, "smoke": 1}, lr=0.1)

MICRONET = register_table(Table(
    name="micronet",
    title="CIFAR-10, Network-in-Network: compression recipes",
    baseline="nin-float",
    rows=(
        Row("nin-float", "nin, float", model="nin", schedule=FLOAT),
        Row("nin_gc-float", "nin_gc (grouped + shuffle), float", model="nin_gc",
            schedule=FLOAT),
    ),
))
