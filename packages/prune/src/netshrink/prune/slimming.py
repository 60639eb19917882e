"""Network slimming's sparsity training (Liu et al. 2017): an L1 penalty on BatchNorm scales.

``SlimmingStage`` adds ``s * sum(|gamma|)`` over every BatchNorm to the training loss (through
the Stage ``extra_loss`` hook), pushing unimportant channels' scales towards zero so that a
``bn_gamma`` channel prune can remove them afterwards. ``histograms`` gives the current |gamma|
values for the trainer to log (e.g. TensorBoard's ``add_histogram``) once per epoch.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import torch
from torch import nn

from netshrink.core import Stage, check_float, register_stage


@dataclasses.dataclass(frozen=True)
class SlimmingConfig:
    """``s``: the penalty coefficient (e.g. 1e-4 for nin, 1e-3 for nin_gc), >= 0.
    ``ignored_layers``: BatchNorm names or fnmatch patterns left unpenalised."""

    s: float = 1e-4
    ignored_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_float("s", self.s, min_value=0.0)
        layers = self.ignored_layers
        if isinstance(layers, str) or not all(isinstance(x, str) for x in layers):
            raise ValueError(f"ignored_layers={layers!r} must be a list of module names")
        object.__setattr__(self, "ignored_layers", tuple(layers))


def bn_scales(model: nn.Module, ignored: tuple[str, ...] = ()) -> list[torch.Tensor]:
    """The scale (gamma) parameters of every affine BatchNorm not matching ``ignored``."""
    out = []
    for name, m in model.named_modules():
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
                and not any(fnmatch.fnmatchcase(name, p) for p in ignored)):
            out.append(m.weight)
    return out


def slimming_penalty(model: nn.Module, s: float, ignored: tuple[str, ...] = ()) -> torch.Tensor:
    """``s * sum(|gamma|)`` over the BatchNorms (differentiable)."""
    scales = bn_scales(model, ignored)
    if not scales:
        ref = next(iter(model.parameters()), torch.zeros(()))
        return ref.new_zeros(())
    return s * torch.stack([g.abs().sum() for g in scales]).sum()


@register_stage("prune.slimming")
class SlimmingStage(Stage):
    """Sparsity training for network slimming; ``apply`` leaves the model unchanged."""

    config_class = SlimmingConfig

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        return slimming_penalty(model, self.config.s, self.config.ignored_layers)

    def gammas(self, model: nn.Module) -> torch.Tensor:
        """All penalised |gamma| values, concatenated (detached, on the CPU)."""
        scales = bn_scales(model, self.config.ignored_layers)
        if not scales:
            return torch.zeros(0)
        return torch.cat([g.detach().abs().flatten().cpu() for g in scales])

    def histograms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors a trainer may log as histograms: ``{"prune/bn_abs_gamma": |gamma|}``."""
        return {"prune/bn_abs_gamma": self.gammas(model)}
