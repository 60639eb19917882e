"""netshrink.lowrank: low-rank factorisation of linear and conv layers, as a Stage.

``LowRankStage(LowRankConfig(method="channel", macs_target=0.5))`` replaces layers by two thin
ones (truncated SVD; spatial ``k x 1`` + ``1 x k`` or channel ``k x k`` + ``1 x 1`` for convs)
or, for convs, three (``tucker2``: ``1 x 1`` + ``k x k`` + ``1 x 1`` by HOSVD),
the ranks chosen per layer by retained energy or searched for a MACs target.
"""

from netshrink.lowrank.config import DEFAULT_ENERGY, METHODS, LowRankConfig
from netshrink.lowrank.decompose import (
    SCHEMES,
    build_factorised,
    factorise,
    layer_matrix,
    layer_svd,
    max_rank,
    mode_unfoldings,
    tucker_hosvd,
)
from netshrink.lowrank.plan import LowRankPlan, apply_ranks, low_rank, plan_low_rank
from netshrink.lowrank.ranks import Candidate, TuckerCandidate, energy_rank, search_ranks
from netshrink.lowrank.stage import LowRankStage

__all__ = [
    "DEFAULT_ENERGY", "METHODS", "SCHEMES", "Candidate", "LowRankConfig", "LowRankPlan",
    "LowRankStage", "TuckerCandidate", "apply_ranks", "build_factorised", "energy_rank",
    "factorise", "layer_matrix", "layer_svd", "low_rank", "max_rank", "mode_unfoldings",
    "plan_low_rank", "search_ranks", "tucker_hosvd",
]
