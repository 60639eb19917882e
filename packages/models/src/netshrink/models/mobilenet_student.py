"""A small MobileNet-v1-style CIFAR student: depthwise-separable blocks, BN + ReLU after every
conv, global average pooling and a linear head.

Channel plan (at ``width=1``, 32x32 input); each block is depthwise 3x3 (stride s) + pointwise
1x1:

=========  ======================  ======  ==========
stage      layer: out channels      stride  resolution
=========  ======================  ======  ==========
stem       conv 3x3: 32             1       32
block1     dw-sep: 64               1       32
block2-3   dw-sep: 128, 128         2, 1    16
block4-5   dw-sep: 256, 256         2, 1    8
block6-9   dw-sep: 512 x 4          2,1,1,1 4
head       GAP, linear: C
=========  ======================  ======  ==========

It is MobileNet-v1 for CIFAR without the two 1024-channel blocks and with two fewer 512 blocks:
1,080,650 parameters (1.08 M) and 31,466,496 MACs (0.03 G) for C = 10, a cheap distillation
student.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from netshrink.core import check_int
from netshrink.models._width import check_width, scale_channels
from netshrink.models.registry import register_model

STEM_CHANNELS = 32
BLOCKS: tuple[tuple[int, int], ...] = (  # (out channels, stride of the depthwise conv)
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
)
CHANNEL_MULTIPLE = 8


class ConvBNReLU(nn.Sequential):
    """``conv`` (no bias) -> ``bn`` -> ``act`` (a ReLU module)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                           padding=kernel_size // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            act=nn.ReLU(),
        ))


class DepthwiseSeparable(nn.Sequential):
    """``depthwise`` 3x3 (groups = channels, carries the stride) -> ``pointwise`` 1x1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(OrderedDict(
            depthwise=ConvBNReLU(in_channels, in_channels, 3, stride=stride, groups=in_channels),
            pointwise=ConvBNReLU(in_channels, out_channels, 1),
        ))


class MobileNetStudent(nn.Module):
    """MobileNet-v1-style CIFAR student: ``stem``, ``features`` (block1..block9), ``pool``,
    ``flatten``, ``classifier``.

    ``width`` multiplies every channel count, rounded half-up to a multiple of 8 (at least 8),
    the usual MobileNet rule; the class count is never scaled.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0) -> None:
        super().__init__()
        check_int("num_classes", num_classes, min_value=1)
        check_int("in_channels", in_channels, min_value=1)
        check_width(width)
        c = scale_channels(STEM_CHANNELS, width, multiple=CHANNEL_MULTIPLE)
        self.stem = ConvBNReLU(in_channels, c, 3)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (out, stride) in enumerate(BLOCKS, start=1):
            out = scale_channels(out, width, multiple=CHANNEL_MULTIPLE)
            blocks[f"block{i}"] = DepthwiseSeparable(c, out, stride)
            c = out
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(self.stem(x)))))


@register_model("mobilenet_student")
def mobilenet_student(*, num_classes: int = 10, in_channels: int = 3,
                      width: float = 1.0) -> MobileNetStudent:
    """MobileNet-v1-style CIFAR student (see ``MobileNetStudent``)."""
    return MobileNetStudent(num_classes=num_classes, in_channels=in_channels, width=width)
