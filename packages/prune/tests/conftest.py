"""Shared helpers for the prune tests: random BatchNorm statistics, zeroing removed channels."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from netshrink.prune import ChannelPlan


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN scales, shifts and running statistics, so zeroing a channel matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.9 + 0.1)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def _zeroed(model: nn.Module, plan: ChannelPlan, bn_only: bool = False) -> nn.Module:
    """A copy of ``model`` whose removed channels output exactly zero: the BN scale and shift
    of every removed channel are zeroed (and, unless ``bn_only``, the removed filters)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, idx in plan.removed.items():
            m = out.get_submodule(name)
            index = torch.tensor(idx, dtype=torch.long)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight[index] = 0
                m.bias[index] = 0
            elif not bn_only:
                m.weight[index] = 0
                if m.bias is not None:
                    m.bias[index] = 0
    return out


@pytest.fixture
def randomize_bn() -> Callable[..., nn.Module]:
    return _randomize_bn


@pytest.fixture
def zeroed() -> Callable[..., nn.Module]:
    return _zeroed
