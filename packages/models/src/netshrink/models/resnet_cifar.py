"""ResNet-18 for CIFAR: BasicBlocks [2, 2, 2, 2] at 64-128-256-512 channels, a 3x3 stride-1 stem
and no max-pool (32x32 input keeps 32x32 in layer1), global average pooling and a linear head.

11,173,962 parameters (11.2 M) and 555,422,720 MACs (0.56 G) for C = 10 at 32x32.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from netshrink.core import check_int
from netshrink.models._width import check_width, scale_channels
from netshrink.models.registry import register_model

STAGE_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)
STAGE_BLOCKS: tuple[int, ...] = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU.

    The shortcut is the identity, or ``downsample`` (1x1 conv + BN) when the stride or the
    channel count changes. Each ReLU is its own module (``act1``, ``act2``) so passes can swap
    them.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                bn=nn.BatchNorm2d(out_channels),
            ))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + identity)


class ResNetCIFAR(nn.Module):
    """CIFAR ResNet with BasicBlocks: ``stem``, ``layer1``..``layer4``, ``pool``, ``flatten``,
    ``fc``.

    ``width`` multiplies every channel count (rounded half-up, at least 1); the class count is
    never scaled.
    """

    def __init__(self, blocks: tuple[int, ...] = STAGE_BLOCKS, *, num_classes: int = 10,
                 in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        check_int("num_classes", num_classes, min_value=1)
        check_int("in_channels", in_channels, min_value=1)
        check_width(width)
        channels = [scale_channels(c, width) for c in STAGE_CHANNELS]
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(channels[0]),
            act=nn.ReLU(),
        ))
        c = channels[0]
        for i, (out, n) in enumerate(zip(channels, blocks, strict=True), start=1):
            stride = 1 if i == 1 else 2
            layer = [BasicBlock(c, out, stride)] + [BasicBlock(out, out) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            c = out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet18_cifar")
def resnet18_cifar(*, num_classes: int = 10, in_channels: int = 3,
                   width: float = 1.0) -> ResNetCIFAR:
    """ResNet-18 for CIFAR (see ``ResNetCIFAR``)."""
    return ResNetCIFAR(STAGE_BLOCKS, num_classes=num_classes, in_channels=in_channels,
                       width=width)
