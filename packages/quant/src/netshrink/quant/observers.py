"""Range observers: they watch activations and keep a ``[min_val, max_val]`` range for affine
int8 quantization (QAT and post-training calibration).

* ``minmax``: the smallest and largest value ever seen;
* ``moving_average``: an exponential moving average of each batch's min and max
  (``momentum`` 0.01 by default, the first batch initialises it), robust to rare outliers;
* ``percentile``: each batch's ``100 - p`` and ``p`` percentiles (``p`` = 99.99 by default),
  averaged over batches, which ignores the extreme tail.

The range is kept in persistent buffers, so it travels with checkpoints and packed files.
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.core import Registry, check_float

OBSERVERS: Registry[type[Observer]] = Registry("observer")
#: Percentile observers look at most this many values per batch (an evenly strided sample).
PERCENTILE_SAMPLE = 1 << 20


def list_observers() -> list[str]:
    return OBSERVERS.names()


class Observer(nn.Module):
    """Base class: ``update(x)`` widens or moves the range; ``has_range`` once it saw data."""

    kind = ""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("batches", torch.tensor(0, dtype=torch.int64))

    @property
    def has_range(self) -> bool:
        return bool(self.batches > 0)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget everything seen: no range until the next ``update``."""
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))
        self.batches.zero_()

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        lo, hi = self._batch_range(x.detach())
        self._merge(lo.to(self.min_val.dtype), hi.to(self.max_val.dtype))
        self.batches += 1

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = torch.aminmax(x)
        return lo, hi

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        raise NotImplementedError

    def spec(self) -> dict:
        return {"observer": self.kind}


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The overall min and max of everything seen."""

    kind = "minmax"

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        torch.minimum(self.min_val, lo, out=self.min_val)
        torch.maximum(self.max_val, hi, out=self.max_val)


@OBSERVERS.register("moving_average")
class MovingAverageObserver(Observer):
    """Exponential moving average of each batch's min and max."""

    kind = "moving_average"

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        check_float("momentum", momentum, min_value=0.0, max_value=1.0, min_exclusive=True)
        self.momentum = float(momentum)

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if not self.has_range:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def spec(self) -> dict:
        return {"observer": self.kind, "momentum": self.momentum}


@OBSERVERS.register("percentile")
class PercentileObserver(Observer):
    """Mean over batches of each batch's ``100 - p`` and ``p`` percentiles."""

    kind = "percentile"

    def __init__(self, percentile: float = 99.99) -> None:
        super().__init__()
        check_float("percentile", percentile, min_value=50.0, max_value=100.0)
        self.percentile = float(percentile)

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(-1).float()
        if flat.numel() > PERCENTILE_SAMPLE:
            flat = flat[:: -(-flat.numel() // PERCENTILE_SAMPLE)]
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
        lo, hi = torch.quantile(flat, q.to(flat.device))
        return lo, hi

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        n = float(self.batches)
        if not self.has_range:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            self.min_val.mul_(n / (n + 1)).add_(lo / (n + 1))
            self.max_val.mul_(n / (n + 1)).add_(hi / (n + 1))

    def spec(self) -> dict:
        return {"observer": self.kind, "percentile": self.percentile}


def make_observer(name: str, **options: float) -> Observer:
    """An observer by name (ValueError listing the known ones for an unknown name)."""
    return OBSERVERS.get(name)(**options)
