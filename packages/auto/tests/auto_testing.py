"""Test helpers (a unique module name, found through the root pytest pythonpath): a small CNN
with a planted 2-channel bottleneck, trained on generated data, and its held-out accuracy."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 4


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 3x8x8 images: a fixed smooth pattern per class plus noise (patterns from seed 0)."""
    g = torch.Generator().manual_seed(0)
    patterns = F.interpolate(torch.randn(CLASSES, 3, 2, 2, generator=g), size=(8, 8),
                             mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = patterns[y] * 2 + 0.5 * torch.randn(n, 3, 8, 8, generator=g)
    return x, y


def make_model() -> nn.Module:
    """conv(3->16) -> conv(16->2, the bottleneck) -> conv(2->16) -> linear(16->4)."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), *block(16, 2), *block(2, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES))


@functools.cache
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = make_model()
    x, y = data(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for step in range(120):
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_model() -> nn.Module:
    """A fresh copy of the trained model, in eval mode (training is done once per session)."""
    model = make_model()
    model.load_state_dict(_trained_state())
    return model.eval()


HELD_OUT = data(256, seed=2)


@torch.no_grad()
def accuracy(model: nn.Module) -> float:
    x, y = HELD_OUT
    return float((model.eval()(x).argmax(1) == y).float().mean())


@torch.no_grad()
def recalibrate(model: nn.Module) -> None:
    """BatchNorm statistics re-estimated on training data (no weight changes)."""
    x, _ = data(256, seed=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    model(x)
    model.eval()

