"""Controller: everything a recipe's stages need from a training loop, behind three calls.

Stages that act during training have hooks (``Stage.training_loss``, ``extra_loss``,
``after_step``, ``after_epoch``): distillation replaces the loss, the slimming penalty adds to
it, AGP raises its sparsity on schedule, soft filter pruning zeroes filters each epoch and
removes them after the last one, QAT freezes BN statistics / observers at a given epoch. A
loop that forgets one of them trains something else than the recipe says, silently. The
controller calls every hook of every stage, in order, so a user's own loop needs exactly::

    controller = Controller(model, stages, epochs=epochs, steps_per_epoch=len(loader))
    for epoch in range(epochs):
        for x, y in loader:
            out = model(x)
            loss = controller.loss(x, out, y, F.cross_entropy(out, y))
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            controller.step()
        controller.epoch_end()

netshrink's own Trainer drives its stages through the same class (one code path), so a user
loop and ``bench train`` / the tables apply a recipe identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from netshrink.core.stage import Stage, loss_stage
from netshrink.core.validation import check_int

__all__ = ["Controller"]


class Controller:
    """Calls the training hooks of ``stages`` on ``model`` (the model the stages were applied
    to, unwrapped: not a DDP or ``torch.compile`` wrapper) for a run of ``epochs`` epochs of
    ``steps_per_epoch`` optimizer steps each (gradual schedules need the length of the run).

    Two stages that both replace the training loss are a ValueError here, before any step.
    """

    def __init__(self, model: nn.Module, stages: Sequence[Stage], *, epochs: int,
                 steps_per_epoch: int) -> None:
        check_int("epochs", epochs, min_value=1)
        check_int("steps_per_epoch", steps_per_epoch, min_value=0)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        # Stage objects, or stage-like objects with the same hook methods
        self.stages = list(stages)
        owner = loss_stage(self.stages)
        self._loss_hook = owner.training_loss if owner is not None else None
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.steps_done = 0
        self.epochs_done = 0

    def loss(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor,
             base_loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: ``base_loss`` (your task loss on ``outputs``), or what
        the recipe's one loss-replacing stage makes of it (distillation), plus every stage's
        extra term (the slimming penalty).

        Call it where you compute ``base_loss`` (under your autocast, if any: a teacher runs
        there too); the extra terms are computed with autocast disabled, in full precision.
        """
        total = base_loss
        if self._loss_hook is not None:
            replaced = self._loss_hook(inputs, outputs, targets, base_loss)
            if replaced is not None:
                total = replaced
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            for stage in self.stages:
                extra = stage.extra_loss(self.model)
                if extra is not None:
                    total = total + extra
        return total

    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-applies masks, advances gradual pruning
        schedules. (Binary latent weights need nothing here: the quantized layers clip them.)"""
        for stage in self.stages:
            stage.after_step(self.model, self.steps_done, self.total_steps)
        self.steps_done += 1

    def epoch_end(self) -> None:
        """Call after every epoch's last step: soft filter pruning (and its final removal
        after the last epoch), QAT's BN-statistics / observer freezes."""
        for stage in self.stages:
            stage.after_epoch(self.model, self.epochs_done, self.epochs)
        self.epochs_done += 1

    def restore(self, *, steps_done: int, epochs_done: int) -> None:
        """Continue a resumed run: the counters of the steps and epochs already done."""
        check_int("steps_done", steps_done, min_value=0)
        check_int("epochs_done", epochs_done, min_value=0)
        self.steps_done = steps_done
        self.epochs_done = epochs_done

    def histograms(self) -> dict[str, torch.Tensor]:
        """Every stage's tensors to log as histograms (tag -> values)."""
        out: dict[str, torch.Tensor] = {}
        for stage in self.stages:
            out.update(stage.histograms(self.model))
        return out
