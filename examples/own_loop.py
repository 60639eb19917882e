"""Compress your own model in your own training loop: a plain PyTorch CIFAR-style loop plus the
five lines marked ``# netshrink``.

The recipe's stages are applied once (``apply_recipe_``); a ``Controller`` then calls every
training hook the stages have (the slimming penalty, gradual pruning schedules, soft filter
pruning at epoch ends, QAT freezes), so the loop does not need to know which stages need what
(binary latent weights are clipped by the quantized layers themselves). netshrink's own
Trainer (``bench train``, the tables, ``bench compress``) drives stages through the same
Controller.

Run it: ``python examples/own_loop.py`` (generated data: 32x32 RGB images whose class is a
colour pattern; a few seconds on a CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netshrink.core import Controller, Stage, apply_recipe_
from netshrink.prune import SlimmingConfig, SlimmingStage
from netshrink.quant import QuantConfig, QuantizeStage


class SmallNet(nn.Module):
    """The user's own model: nothing netshrink-specific in it."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_data(n: int, num_classes: int = 10, seed: int = 0) -> TensorDataset:
    """``n`` generated 3x32x32 images: a coarse per-class colour pattern (the same for every
    ``seed``) plus noise drawn from ``seed``."""
    coarse = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(99))
    patterns = 2 * F.interpolate(coarse, size=(32, 32), mode="nearest")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = patterns[labels] + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    return TensorDataset(images, labels)


def train(model: nn.Module, stages: Sequence[Stage], batches: Callable[[int], Iterable],
          *, epochs: int, steps_per_epoch: int, lr: float = 0.05, momentum: float = 0.9,
          weight_decay: float = 5e-4) -> nn.Module:
    """The user's loop. ``batches(epoch)`` yields the ``(images, labels)`` of one epoch."""
    model = apply_recipe_(model, stages)  # netshrink
    controller = Controller(model, stages, epochs=epochs,  # netshrink
                            steps_per_epoch=steps_per_epoch)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                momentum=momentum, weight_decay=weight_decay,
                                nesterov=momentum > 0)
    for epoch in range(epochs):
        model.train()
        for x, y in batches(epoch):
            outputs = model(x)
            loss = F.cross_entropy(outputs, y)
            loss = controller.loss(x, outputs, y, loss)  # netshrink
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            controller.step()  # netshrink
        controller.epoch_end()  # netshrink
    return model


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    images, labels = data.tensors
    return (model(images).argmax(1) == labels).float().mean().item()


def main(epochs: int = 3, n_train: int = 1024, n_test: int = 256, batch_size: int = 64) -> float:
    """Train SmallNet with a slimming penalty and 4-bit weights and activations; return the
    test accuracy."""
    torch.manual_seed(0)
    train_set, test_set = make_data(n_train, seed=0), make_data(n_test, seed=1)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    stages = [SlimmingStage(SlimmingConfig(s=1e-4)),
              QuantizeStage(QuantConfig(w=4, a=4))]
    model = train(SmallNet(), stages, lambda epoch: loader, epochs=epochs,
                  steps_per_epoch=len(loader))
    acc = accuracy(model, test_set)
    print(f"test accuracy after {epochs} epochs (W4A4, slimming penalty): {100 * acc:.1f}%")
    return acc


if __name__ == "__main__":
    main()
