"""The knowledge-distillation loss (Hinton et al. 2015) and its validated configuration.

``kd_loss = alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, targets)``
with ``p = softmax(logits / T)``. The KL runs from the teacher to the student: the teacher's
softened distribution is the target, as in the original paper and in
``F.kl_div(log p_student, log p_teacher)``; it is averaged over the batch ("batchmean", the true
KL per sample). The ``T^2`` factor keeps the soft term's gradients on the same scale as the
hard term's when ``T`` changes (the soft gradients shrink as ``1 / T^2``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """``alpha``: the weight of the distillation term, in [0, 1] (0: plain cross-entropy, 1:
    the teacher alone). ``temperature``: the softmax temperature ``T``, finite and > 0."""

    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        _check_real("alpha", self.alpha, "a number in [0, 1]")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha!r} is not allowed; it must be in [0, 1] (the "
                             "weight of the distillation term)")
        _check_real("temperature", self.temperature, "a finite number > 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature!r} is not allowed; it must be a "
                             "finite number > 0 (the softmax temperature T)")
        # JSON records and CLI values may be ints: keep the fields floats
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "temperature", float(self.temperature))


def _check_real(field: str, value: object, allowed: str) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        raise ValueError(f"{field}={value!r} is not allowed; it must be {allowed}")


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    Computed in float32 from log-probabilities on both sides (``log_target``), so a teacher
    that is very sure of itself gives no ``log(0)``.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (batch, classes) of the "
                         "same shape: the teacher must predict the student's classes")
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return (t * t) * kl


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            alpha: float, temperature: float, *, ce: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, targets)``.

    ``ce``: the hard-label term when the caller has computed it already (the trainer's
    cross-entropy, with its label smoothing); by default plain ``F.cross_entropy``. Bad
    ``alpha`` or ``temperature`` values raise ValueError as ``DistillConfig`` does.
    """
    config = DistillConfig(alpha=alpha, temperature=temperature)
    if ce is None:
        ce = F.cross_entropy(student_logits.float(), targets)
    soft = kd_divergence(student_logits, teacher_logits, config.temperature)
    return config.alpha * soft + (1.0 - config.alpha) * ce
