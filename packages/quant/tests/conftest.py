"""Small models defined here, so the quant tests need nothing but torch and netshrink-core."""

import pytest
import torch
from torch import nn


def small_cnn(num_classes: int = 10) -> nn.Module:
    """Plain, grouped and depthwise convs, a transposed conv and a Linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 2, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(),
        nn.Linear(24, num_classes),
    )


def wide_cnn() -> nn.Module:
    """About 0.96 M weights (like NIN), for file-size checks."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10),
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one intra-op thread is several times faster than two
    fighting over a busy 2-core machine. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_small_cnn():
    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return small_cnn()
    return make


@pytest.fixture
def make_wide_cnn():
    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return wide_cnn()
    return make
