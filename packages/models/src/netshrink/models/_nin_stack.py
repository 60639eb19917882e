"""The Network-in-Network skeleton shared by NIN and NIN-GC: a plan of convs turned into one flat,
named ``nn.Sequential``, then global average pooling.

Two block orders, with the same convs and the same number of BatchNorms:

* ``cbap`` (conv-BN-act-pool): every conv is followed by ``bn<k>`` and ``act<k>``, including the
  last one (its BN has ``num_classes`` features), then the pool where the plan has one.
* ``bacp`` (BN-act-conv-pool): ``conv1`` is a plain stem on the image; every later conv is
  preceded by ``bn<k-1>``/``act<k-1>`` over the previous conv's output (after its pool); the head
  after the last conv is ``bn<last>`` -> ``act<last>`` -> GAP.

In both orders ``bn<k>`` normalises the output of ``conv<k>``. A channel shuffle, where the plan
asks for one, sits immediately before its conv (``shuffle<k>`` before ``conv<k>``). Convs have no
bias: a BatchNorm always follows (directly, or after a max-pool, which commutes with a
per-channel shift), so a bias would be redundant; BN folding creates one when it needs it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from netshrink.core import check_choice, check_int
from netshrink.models._activations import check_activation, make_activation
from netshrink.models.channel_shuffle import ChannelShuffle

BLOCK_ORDERS: tuple[str, ...] = ("cbap", "bacp")


@dataclass(frozen=True)
class ConvSpec:
    """One conv of the plan: output channels, square kernel (padding k // 2, stride 1), groups,
    the group count of a channel shuffle placed just before it (1 = none), and whether a
    ``MaxPool2d(3, 2, 1)`` follows it."""

    out_channels: int
    kernel_size: int
    groups: int = 1
    shuffle: int = 1
    pool_after: bool = False


def check_nin_options(num_classes: int, in_channels: int, block_order: str, act: str) -> None:
    """Validate the options NIN and NIN-GC share (ValueError naming the field and value)."""
    check_int("num_classes", num_classes, min_value=1)
    check_int("in_channels", in_channels, min_value=1)
    check_choice("block_order", block_order, BLOCK_ORDERS)
    check_activation(act)


class NINStack(nn.Module):
    """``features`` (the flat conv/BN/act/pool/shuffle stack), ``pool`` (GAP), ``flatten``."""

    def __init__(self, plan: Sequence[ConvSpec], *, in_channels: int, block_order: str,
                 act: str) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in, pools, last = in_channels, 0, len(plan)
        for k, spec in enumerate(plan, start=1):
            if block_order == "bacp" and k > 1:
                layers[f"bn{k - 1}"] = nn.BatchNorm2d(c_in)
                layers[f"act{k - 1}"] = make_activation(act)
            if spec.shuffle > 1:
                layers[f"shuffle{k}"] = ChannelShuffle(spec.shuffle)
            layers[f"conv{k}"] = nn.Conv2d(c_in, spec.out_channels, spec.kernel_size,
                                           padding=spec.kernel_size // 2, groups=spec.groups,
                                           bias=False)
            if block_order == "cbap":
                layers[f"bn{k}"] = nn.BatchNorm2d(spec.out_channels)
                layers[f"act{k}"] = make_activation(act)
            if spec.pool_after:
                pools += 1
                layers[f"pool{pools}"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            c_in = spec.out_channels
        if block_order == "bacp":
            layers[f"bn{last}"] = nn.BatchNorm2d(c_in)
            layers[f"act{last}"] = make_activation(act)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.features(x)))
