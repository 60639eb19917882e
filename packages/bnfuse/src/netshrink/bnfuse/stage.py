"""The ``bnfuse.fuse`` stage: BatchNorm folding as one step of a recipe."""

from __future__ import annotations

from typing import Any

from torch import nn

from netshrink.bnfuse.fusion import FuseConfig, fuse, fuse_report
from netshrink.bnfuse.report import FuseReport
from netshrink.core import Stage, register_stage


@register_stage("bnfuse.fuse")
class FuseStage(Stage):
    """Fold BatchNorms (see ``fuse``); ``report`` holds the last apply's FuseReport.

    Which BNs fold can depend on their values (a threshold fold through a max-pool needs
    non-negative scales), so after ``apply`` ``describe()`` records the folded BN names in
    ``only``; ``rebuild`` then folds exactly those on a fresh model, giving the structure
    the saved weights need.
    """

    config_class = FuseConfig

    def __init__(self, config: FuseConfig | None = None) -> None:
        super().__init__(config if config is not None else FuseConfig())
        self.report: FuseReport | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        fused = fuse(model, self.config)
        self.report = fuse_report(fused)
        return fused

    def rebuild(self, model: nn.Module) -> nn.Module:
        fused = fuse(model, self.config)
        report = fuse_report(fused)
        if self.config.only is not None:
            missing = [b for b in report.left if b.bn in self.config.only]
            if missing:
                raise ValueError("cannot rebuild the fused structure; these BatchNorms no "
                                 "longer fold: " + "; ".join(str(b) for b in missing))
        return fused

    def describe(self) -> dict[str, Any]:
        record = super().describe()
        if self.report is not None and self.config.only is None:
            record["config"]["only"] = list(self.report.folded_names)
        return record
