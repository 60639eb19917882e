"""A deterministic synthetic image dataset for unit tests: learnable, tiny, no files needed.

Each class has a fixed smooth random pattern (drawn from ``seed`` alone, so train and test
share it); each sample is its class pattern plus Gaussian pixel noise drawn from a generator
seeded by (seed, split), so the splits hold different samples of the same classes. The patterns
are smooth (upsampled from a coarse grid), so random crops and flips keep them recognisable.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from netshrink.bench.data._seed import derive_seed
from netshrink.bench.data.dataset import SPLITS, ImageData, LoadOptions, register_dataset
from netshrink.core import check_choice, check_int

DEFAULT_SIZES = {"train": 2048, "test": 512}  # used by load_dataset("synthetic", ...)
NOISE_STD = 24.0  # pixel noise, in 0..255 units
_LOW, _HIGH = 48.0, 208.0  # range of the coarse pattern values


def _patterns(num_classes: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """(num_classes, C, size, size) float class patterns in 0..255, a function of seed only."""
    g = torch.Generator().manual_seed(derive_seed("synthetic-patterns", seed))
    coarse = max(2, size // 8)
    low = torch.rand(num_classes, channels, coarse, coarse, generator=g) * (_HIGH - _LOW) + _LOW
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def synthetic(split: str, n: int, num_classes: int = 10, size: int = 32, channels: int = 3,
              seed: int = 0) -> ImageData:
    """``n`` images (uint8 (n, channels, size, size)) with balanced labels, deterministic in
    all arguments; mean/std are the per-channel values of the generating distribution
    (ignoring clipping), the same for both splits."""
    check_choice("split", split, SPLITS)
    check_int("n", n, min_value=1)
    check_int("num_classes", num_classes, min_value=2)
    check_int("size", size, min_value=4)
    check_int("channels", channels, min_value=1)
    check_int("seed", seed)
    patterns = _patterns(num_classes, channels, size, seed)
    g = torch.Generator().manual_seed(derive_seed("synthetic-samples", seed, split))
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    noise = torch.randn(n, channels, size, size, generator=g) * NOISE_STD
    images = (patterns[labels] + noise).round_().clamp_(0, 255).to(torch.uint8)
    per_channel = patterns.transpose(0, 1).reshape(channels, -1)
    mean = tuple(float(m) / 255 for m in per_channel.mean(1))
    std = tuple(float((v + NOISE_STD**2).sqrt()) / 255 for v in per_channel.var(1))
    return ImageData(name="synthetic", images=images, labels=labels, num_classes=num_classes,
                     mean=mean, std=std, classes=tuple(f"class{i}" for i in range(num_classes)))


@register_dataset("synthetic")
def _load_registered(split: str, root: Path, options: LoadOptions) -> ImageData:
    return synthetic(split, DEFAULT_SIZES[split])
