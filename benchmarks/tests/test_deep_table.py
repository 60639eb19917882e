"""The deep tables: Deep Compression's chain of rows, and low rank beside channel pruning."""

from netshrink.bench.tables import TABLES
from netshrink.core import stage_from_description


def test_deep_tables_chain_prune_share_code_and_their_stages_build() -> None:
    for name, prefix in (("deep", "r18"), ("deep_nin", "nin")):
        table = TABLES.get(name)
        chain = [table.row(f"{prefix}-{step}") for step in ("float", "pruned", "shared", "coded")]
        assert table.baseline == chain[0].name
        for before, row in zip(chain, chain[1:], strict=False):
            assert row.upstream == before.name
        kinds = [[stage_from_description(s).kind for s in row.stages] for row in chain]
        assert kinds == [[], ["prune.magnitude"], ["share.kmeans"], ["share.code"]]
        assert chain[3].schedule.epochs == {"full": 0, "quick": 0, "smoke": 0}
        assert stage_from_description(chain[1].stages[0]).config.schedule == "agp"
    deep = TABLES.get("deep")
    low, channels = deep.row("r18-lowrank50"), deep.row("r18-channels50")
    tucker = deep.row("r18-tucker50")
    assert low.upstream == channels.upstream == tucker.upstream == "r18-float"
    assert low.latency and channels.latency and tucker.latency
    for row, method in ((low, "channel"), (tucker, "tucker2")):
        config = stage_from_description(row.stages[0]).config
        assert config.macs_target == 0.5 and config.method == method
        assert row.schedule == channels.schedule
    assert stage_from_description(channels.stages[0]).kind == "prune.channels"
