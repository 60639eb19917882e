"""``DistillStage``: train a student against a frozen teacher (the ``distill.kd`` stage kind).

Distillation changes training, not structure: ``apply`` returns the student unchanged and
``rebuild`` is a no-op, so a checkpoint of a distilled student loads without the teacher. The
stage replaces the trainer's cross-entropy with ``kd_loss`` through the Stage
``training_loss`` hook, which the engine calls under the training autocast with the batch's
inputs and the student's logits.

The teacher is held by the stage, never registered as a submodule of the student: it is not in
the student's ``state_dict``, not in its optimizer, and not wrapped by DDP (each rank runs its
own copy on its own shard). It is frozen (``requires_grad`` False, eval mode, forward under
``torch.no_grad``) and moved to the training device (and memory format) on first use.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from netshrink.core import SPEC_ATTR, Stage, register_stage
from netshrink.distill.loss import DistillConfig, kd_loss


def teacher_record(teacher: nn.Module, path: str | os.PathLike[str] | None = None
                   ) -> dict[str, Any]:
    """The teacher's identity as JSON: its model spec (``netshrink_spec``) when it has one,
    else its class; the checkpoint it came from, if any; its parameter count."""
    spec = getattr(teacher, SPEC_ATTR, None)
    record: dict[str, Any] = {
        "model": spec if isinstance(spec, dict) else None,
        "class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        "checkpoint": None if path is None else os.fspath(path),
        "params": sum(p.numel() for p in teacher.parameters()),
    }
    return record


@register_stage("distill.kd")
class DistillStage(Stage):
    """Knowledge distillation from ``teacher`` (any ``nn.Module`` giving logits over the
    student's classes); ``teacher_path`` is recorded by ``describe`` when given.

    A stage rebuilt from a checkpoint's record has no teacher: it can rebuild the student's
    structure (nothing to do) but not train; ``training_loss`` then says so.
    """

    config_class = DistillConfig

    def __init__(self, config: DistillConfig | None = None, teacher: nn.Module | None = None,
                 *, teacher_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(config if config is not None else DistillConfig())
        self._teacher: nn.Module | None = None
        self._record: dict[str, Any] | None = None
        self._placed: tuple[torch.device, bool] | None = None  # (device, channels_last)
        if teacher is not None:
            self.set_teacher(teacher, teacher_path)
        elif teacher_path is not None:
            raise ValueError("teacher_path is given without a teacher; load the checkpoint "
                             "(e.g. netshrink.models.load_model) and pass the module too")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher

    def set_teacher(self, teacher: nn.Module,
                    path: str | os.PathLike[str] | None = None) -> None:
        """Hold ``teacher`` frozen: eval mode, no parameter requires a gradient."""
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"the teacher must be an nn.Module, got {type(teacher).__name__}")
        teacher.eval()
        teacher.requires_grad_(False)
        self._teacher = teacher
        self._record = teacher_record(teacher, path)
        self._placed = None

    # -- the Stage interface ---------------------------------------------------------------
    def apply(self, model: nn.Module) -> nn.Module:
        """The student, unchanged; refuses a teacher that shares parameters with it (freezing
        the teacher would freeze the student)."""
        if self._teacher is not None:
            student = {id(p) for p in model.parameters()}
            if model is self._teacher or any(id(p) in student
                                             for p in self._teacher.parameters()):
                raise ValueError("the teacher shares parameters with the student; distil from "
                                 "a separate model (e.g. copy.deepcopy(student) or a checkpoint)")
        return model

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Nothing to rebuild: distillation leaves the structure alone."""
        return model

    def describe(self) -> dict[str, Any]:
        """``{"kind", "config", "teacher"}``; ``teacher`` is ``teacher_record`` (None for a
        stage rebuilt from a record). Loading ignores it: only ``kind`` and ``config`` count."""
        record = super().describe()
        record["teacher"] = self._record
        return record

    def training_loss(self, inputs: torch.Tensor, outputs: torch.Tensor,
                      targets: torch.Tensor, base_loss: torch.Tensor) -> torch.Tensor:
        """``kd_loss`` with the trainer's cross-entropy ``base_loss`` as the hard term."""
        teacher_logits = self.teacher_logits(inputs)
        return kd_loss(outputs, teacher_logits, targets, self.config.alpha,
                       self.config.temperature, ce=base_loss)

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs``, without gradients, under whatever autocast
        the caller runs in (the trainer calls the hook inside its own)."""
        teacher = self._ready(inputs)
        with torch.no_grad():
            logits = teacher(inputs)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the teacher ({type(teacher).__name__}) returned "
                            f"{type(logits).__name__}, not a tensor of logits")
        return logits

    def _ready(self, inputs: torch.Tensor) -> nn.Module:
        teacher = self._teacher
        if teacher is None:
            raise RuntimeError("this DistillStage has no teacher (it was rebuilt from a "
                               "checkpoint record); give one with set_teacher() to train")
        channels_last = inputs.dim() == 4 and inputs.is_contiguous(
            memory_format=torch.channels_last) and not inputs.is_contiguous()
        where = (inputs.device, channels_last)
        if self._placed != where:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            teacher.to(device=inputs.device, memory_format=fmt)
            self._placed = where
        if teacher.training:  # someone called .train() on it: BN statistics must not move
            teacher.eval()
        return teacher
