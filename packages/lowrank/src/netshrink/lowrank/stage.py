"""The ``lowrank.factorise`` Stage: low-rank factorisation inside a recipe.

``apply`` plans (``plan_low_rank``) and factorises in place; the chosen layers, schemes and ranks
go into ``describe()``'s ``config.ranks``, so ``rebuild`` recreates the factorised structure on
a freshly built model (no SVD, meta-device safe) before ``netshrink.models.load_model`` loads the
weights. The record also says which layers were left alone and why (grouped and depthwise
convs always are), and the MACs before and after.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netshrink.core import Stage, count_macs, count_params, register_stage
from netshrink.lowrank.config import LowRankConfig
from netshrink.lowrank.plan import (
    GROUPED_NOTE,
    LowRankPlan,
    apply_ranks,
    example_input,
    plan_low_rank,
)


@register_stage("lowrank.factorise")
class LowRankStage(Stage):
    """Factorise a model's linear and conv layers (see ``LowRankConfig``)."""

    config_class = LowRankConfig

    def __init__(self, config: LowRankConfig | None = None) -> None:
        super().__init__(LowRankConfig() if config is None else config)
        self.ranks = self.config.ranks
        self.plan: LowRankPlan | None = None
        self.report: dict[str, Any] = {}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Choose the ranks and factorise ``model`` in place (returned)."""
        example = example_input(model, self.config.input_shape)
        params_before = count_params(model)
        self.plan = plan = plan_low_rank(model, self.config, example)
        apply_ranks(model, plan.ranks, plan.candidates)
        for c in plan.candidates.values():  # keep the singular values, free U and V
            c.release()
        macs_after = count_macs(model, example)
        if macs_after != plan.macs_after:
            raise RuntimeError(f"low rank: the factorised model has {macs_after} MACs, the plan "
                               f"predicted {plan.macs_after}; a layer's MACs were miscounted")
        self.ranks = plan.ranks
        self.report = {"macs_before": plan.macs_before, "macs_after": macs_after,
                       "params_before": params_before, "params_after": count_params(model),
                       "left_alone": dict(plan.left_alone)}
        return model

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Give a fresh model the recorded factorised structure (weights load afterwards)."""
        return apply_ranks(model, self.ranks, weights=False)

    def describe(self) -> dict[str, Any]:
        record = super().describe()
        record["config"]["ranks"] = {
            name: {"scheme": scheme, "rank": list(rank) if isinstance(rank, tuple) else rank}
            for name, scheme, rank in self.ranks}
        record["note"] = GROUPED_NOTE
        if self.report:
            record["report"] = self.report
        return record
