"""One eval-mode forward pass that records something about every plain Conv2d / Linear.

The budget searches need per-layer facts only a forward pass shows (a layer's input, its output
positions); a layer called more than once (shared weights) is left out, so that callers count
or time each layer exactly once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def record_layers(model: nn.Module, example_input: torch.Tensor,
                  record: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]
                  ) -> dict[str, tuple[nn.Module, Any]]:
    """``{name: (module, record(module, input, output))}`` for every ``nn.Conv2d`` /
    ``nn.Linear`` (exact types) called exactly once by ``model(example_input)`` in eval mode;
    the model's training flag is restored afterwards."""
    seen: dict[str, list[Any]] = {}
    modules = {n: m for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    hooks = [m.register_forward_hook(
        lambda mod, args, out, name=n: seen.setdefault(name, []).append(record(mod, args[0], out)))
        for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {n: (modules[n], values[0]) for n, values in seen.items() if len(values) == 1}
