"""Activation modules by name.

Activations are always ``nn.Module`` instances (never functional calls) so a quantization pass
can find and swap them; they are never in-place, so forward hooks on the preceding BatchNorm see
its real output.
"""

from __future__ import annotations

from torch import nn

from netshrink.core import check_choice

ACTIVATIONS: tuple[str, ...] = ("relu", "hardtanh", "identity")


def check_activation(act: str) -> None:
    """Reject an unknown activation name (ValueError naming it and the allowed ones)."""
    check_choice("act", act, ACTIVATIONS)


def make_activation(act: str) -> nn.Module:
    """A fresh activation module: ReLU, Hardtanh(-1, 1) or Identity."""
    check_activation(act)
    if act == "relu":
        return nn.ReLU()
    if act == "hardtanh":
        return nn.Hardtanh(-1.0, 1.0)
    return nn.Identity()
