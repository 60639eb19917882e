"""The ``share.kmeans`` Stage: per-layer k-means weight sharing inside a recipe.

``apply`` clusters every chosen layer's weights (``kmeans.kmeans_1d``: linear initialisation,
deterministic) and replaces the layer by a ``SharedConv2d`` / ``SharedLinear`` in place. A layer
that magnitude pruning masked (or that holds exact zeros) keeps them as a mask: the codebook
covers the kept weights only, and the zeros stay zero through fine-tuning. The chosen layers,
bits and masks go into ``describe()``'s ``config.layers``, so ``rebuild`` recreates the shared
structure on a freshly built model (no clustering, meta-device safe) before
``netshrink.models.load_model`` loads centroids, indices and masks.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from netshrink.core import Stage, register_stage
from netshrink.share.config import ShareConfig
from netshrink.share.kmeans import kmeans_1d
from netshrink.share.layers import SHARED_TYPES, empty_shared


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def share_layer(layer: nn.Module, bits: int, iterations: int = 50) -> nn.Module:
    """``layer`` (an ``nn.Conv2d`` or ``nn.Linear``) as a shared layer: k-means of its nonzero
    weights into ``2**bits`` centroids; its zeros (pruned weights) become the mask."""
    weight = layer.weight.detach()
    kept = weight != 0
    sparse = bool(getattr(layer, "_netshrink_masked", False)) or not bool(kept.all())
    centroids, indices = kmeans_1d(weight[kept] if sparse else weight, 2 ** bits, iterations)
    full = torch.zeros(weight.shape, dtype=torch.uint8)
    if sparse:
        full[kept.cpu()] = indices.to(torch.uint8)
    else:
        full = indices.to(torch.uint8)
    shared = empty_shared(layer, bits, sparse)
    shared.set_codebook(centroids.to(shared.centroids), full.to(weight.device),
                        kept if sparse else None)
    return shared


@register_stage("share.kmeans")
class ShareStage(Stage):
    """Share each conv / linear layer's weights through a k-means codebook (``ShareConfig``)."""

    config_class = ShareConfig

    def __init__(self, config: ShareConfig | None = None) -> None:
        super().__init__(ShareConfig() if config is None else config)
        self.layers = self.config.layers
        self.report: dict[str, Any] = {}

    def _bits(self, layer: nn.Module) -> int:
        if isinstance(layer, nn.Linear) and self.config.linear_bits is not None:
            return self.config.linear_bits
        return self.config.bits

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Cluster and replace every chosen layer of ``model`` in place (returned)."""
        chosen = [(name, m) for name, m in model.named_modules()
                  if type(m) in SHARED_TYPES
                  and not any(fnmatch.fnmatchcase(name, p) for p in self.config.skip)]
        layers, used = [], {}
        for name, layer in chosen:
            shared = share_layer(layer, self._bits(layer), self.config.iterations)
            _replace(model, name, shared)
            layers.append((name, shared.bits, shared.mask is not None))
            kept = shared.indices if shared.mask is None else shared.indices[shared.mask]
            used[name] = int(torch.unique(kept).numel())
        self.layers = tuple(layers)
        self.report = {"clusters_used": used}
        return model

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Give a fresh model the recorded shared structure (weights load afterwards)."""
        for name, bits, sparse in self.layers:
            layer = model.get_submodule(name)
            if type(layer) not in SHARED_TYPES:
                raise ValueError(f"layer {name!r} is a {type(layer).__name__}; weight sharing "
                                 "was recorded for an nn.Conv2d or nn.Linear there")
            _replace(model, name, empty_shared(layer, bits, sparse))
        return model

    def describe(self) -> dict[str, Any]:
        record = super().describe()
        record["config"]["layers"] = {name: {"bits": bits, "sparse": sparse}
                                      for name, bits, sparse in self.layers}
        if self.report:
            record["report"] = self.report
        return record
