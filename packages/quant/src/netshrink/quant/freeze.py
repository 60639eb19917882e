"""Late-training freezes for int8 affine QAT (Jacob et al. 2018; PyTorch's QAT practice).

* ``freeze_bn_stats_(model)``: every ``QuantConvBn2d`` computes with its BatchNorm's running
  statistics from now on, in training mode too, and stops updating them, so the last epochs
  train exactly the folded conv that gets deployed. (Like ``torch.ao``'s ``freeze_bn_stats``,
  only the BatchNorms folded into a conv; others, e.g. after a float first layer, are left
  alone.)
* ``freeze_observers_(model)``: every affine activation quantizer keeps its current range
  (scale and zero point) instead of updating it on training forwards.

Both are idempotent, return how many modules they froze, and persist in the model's state
(buffers), so checkpoints resume frozen. ``QuantConfig.freeze_bn_after`` /
``freeze_observers_after`` make the ``"quant.quantize"`` stage call them after a given epoch;
call them yourself in your own training loop.
"""

from __future__ import annotations

from torch import nn

from netshrink.core import deprecated_alias
from netshrink.quant.conv_bn import QuantConvBn2d
from netshrink.quant.quantizers import AffineAct


def freeze_bn_stats_(model: nn.Module) -> int:
    """Make every folded conv-BN use (and keep) its running statistics; returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, QuantConvBn2d):
            m.freeze_bn_stats()
            count += 1
    return count


def freeze_observers_(model: nn.Module) -> int:
    """Stop every activation range observer (int8 affine) from updating; returns how many.
    Typical QAT practice: freeze after a few epochs so the last ones train on fixed ranges."""
    count = 0
    for m in model.modules():
        if isinstance(m, AffineAct):
            m.freeze()
            count += 1
    return count


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
freeze_bn_stats = deprecated_alias(freeze_bn_stats_, "freeze_bn_stats")
freeze_observers = deprecated_alias(freeze_observers_, "freeze_observers")
