"""netshrink.distill: knowledge distillation as a Stage usable in any recipe.

``kd_loss`` is the loss; ``DistillStage`` (kind ``distill.kd``) trains a student against a
frozen teacher through the Stage ``training_loss`` hook. Depends on netshrink-core and torch
only.
"""

from netshrink.distill.loss import DistillConfig, kd_divergence, kd_loss
from netshrink.distill.stage import DistillStage, teacher_record

__all__ = ["DistillConfig", "DistillStage", "kd_divergence", "kd_loss", "teacher_record"]
