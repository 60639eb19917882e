"""The ``share.code`` Stage: ask packed files to entropy-code the shared layers.

Deep Compression's third step. It changes no weight: every shared layer's ``coding`` (what its
``CodebookForm`` says) becomes ``CodingConfig.coding``, and ``netshrink.quant.save_packed``
(called without ``coding=``) stores it so: ``"huffman"`` codes the indices and the gap
positions of pruned weights, ``"fixed"`` keeps ``bits`` per index and a 1-bit map. As a stage
it goes into a recipe (a table row after the sharing row), and the checkpoint's record
re-applies it on load.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from netshrink.core import CODINGS, Stage, check_choice, register_stage
from netshrink.share.layers import SHARED_LAYERS


@dataclasses.dataclass(frozen=True)
class CodingConfig:
    """``coding``: how packed files store the shared layers, one of ``CODINGS``."""

    coding: str = "huffman"

    def __post_init__(self) -> None:
        check_choice("coding", self.coding, CODINGS)


@register_stage("share.code")
class CodingStage(Stage):
    """Set every shared layer's packed-file coding (see the module docstring)."""

    config_class = CodingConfig

    def __init__(self, config: CodingConfig | None = None) -> None:
        super().__init__(CodingConfig() if config is None else config)

    def apply(self, model: nn.Module) -> nn.Module:
        layers = [m for m in model.modules() if isinstance(m, SHARED_LAYERS)]
        if not layers:
            raise ValueError("share.code: the model has no shared layers; put a share.kmeans "
                             "stage (or row) before it")
        for m in layers:
            m.coding = self.config.coding
        return model
