"""Small contracts between packages that must not import each other.

quant, prune and bnfuse meet only here: a quantized layer says how it absorbs a folded
BatchNorm without touching its integer weight codes, and which of its tensors are stored at
fewer bits; bnfuse and ModelStats use those promises without knowing the quant package.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

#: Attribute a layer sets to True when it applies sign() to its input (binary activations);
#: a BatchNorm directly before it can then be folded into a per-channel threshold.
INPUT_SIGN_ATTR = "netshrink_input_sign"


@runtime_checkable
class FoldsAffine(Protocol):
    """A layer that absorbs ``y -> y * scale + shift`` (per output channel) into its own
    per-channel scale and bias, leaving its stored weight codes unchanged. Quantized conv and
    linear layers implement it so that a fused quantized model is still a packed low-bit model.
    ``scale`` may be negative or zero."""

    def fold_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None: ...


def applies_sign_to_input(module: torch.nn.Module) -> bool:
    return bool(getattr(module, INPUT_SIGN_ATTR, False))
