"""Non-finite training: the errors, and the checks the Trainer runs.

A run whose loss or weights became NaN or infinite has no result: its accuracy (often chance
level, e.g. "10.16 %") means nothing. The Trainer stops such a run with ``NonFiniteError``
(a ``TrainingError``) instead of saving a checkpoint, a final model or a summary that claims
success. The checks are cheap: the loss is summed on the device every step and looked at when
the trainer already synchronises (the logging interval, the epoch end); the weights are looked
at once per epoch and after loading a checkpoint, with one host sync for all of them.
"""

from __future__ import annotations

import torch
from torch import nn


class TrainingError(RuntimeError):
    """A training run ended without a result that can be trusted."""


class NonFiniteError(TrainingError, ValueError):
    """The loss, a weight or a statistic became NaN or infinite. Also a ValueError (a value
    outside what is allowed, as ``math`` raises for a domain error), so the CLI reports it as
    one ``error:`` line like the other bad values.

    ``epoch`` (1-based, the epoch running when it was seen) and ``step`` (optimizer steps done)
    say where; ``parameter`` names the first non-finite parameter or buffer, if any.
    """

    def __init__(self, message: str, *, epoch: int | None = None, step: int | None = None,
                 parameter: str | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.parameter = parameter


def first_non_finite(model: nn.Module) -> str | None:
    """Name of the first floating parameter or buffer of ``model`` holding NaN/inf, or None.

    One host synchronisation in the common (all finite) case: the per-tensor flags are stacked
    on the device and read once."""
    named = [(n, t) for n, t in (*model.named_parameters(), *model.named_buffers())
             if t.is_floating_point() and t.numel() and t.device.type != "meta"]
    if not named:
        return None
    flags = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
    if bool(flags.all()):
        return None
    bad = int((~flags).nonzero()[0, 0])
    return named[bad][0]


def describe_parameter(name: str | None) -> str:
    """The tail of an error message: which parameter is non-finite (if any)."""
    if name is None:
        return "every parameter and buffer is still finite"
    return f"first non-finite parameter: {name}"
