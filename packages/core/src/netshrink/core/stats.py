"""Model statistics measured, not estimated: parameters, MACs, float and packed sizes.

MACs come from ``torch.utils.flop_counter`` (convolutions and matrix products; one MAC = two
FLOPs). Sizes are counted over the model's ``state_dict`` (parameters and buffers such as BN
running statistics). A module may declare that some of its tensors are stored at fewer bits by
carrying a ``packed_bits`` dict (local tensor name -> bits per element, e.g. ``{"weight": 2}``);
the packed size uses those widths and each tensor's dtype width elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PACKED_BITS_ATTR = "packed_bits"


@dataclasses.dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int
    float_bytes: int
    packed_bytes: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def compression(self) -> float:
        """float_bytes / packed_bytes."""
        return self.float_bytes / max(self.packed_bytes, 1)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def measure(cls, model: nn.Module, example_input: torch.Tensor) -> ModelStats:
        """Count parameters, MACs (one forward of ``example_input``, in eval mode) and sizes."""
        return cls(params=count_params(model), macs=count_macs(model, example_input),
                   float_bytes=state_bytes(model, packed=False),
                   packed_bytes=state_bytes(model, packed=True))


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, per batch of ``example_input``."""
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(example_input)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def state_bytes(model: nn.Module, *, packed: bool) -> int:
    """Bytes of the state dict: at dtype width, or at each tensor's declared packed width."""
    total_bits = 0
    for module in model.modules():
        declared: dict[str, float] = getattr(module, PACKED_BITS_ATTR, {}) if packed else {}
        local = dict(module.named_parameters(recurse=False))
        local.update((n, b) for n, b in module.named_buffers(recurse=False)
                     if n not in module._non_persistent_buffers_set)
        for name, tensor in local.items():
            if tensor is None:
                continue
            bits = declared.get(name, tensor.element_size() * 8)
            total_bits += math.ceil(tensor.numel() * bits)
    return math.ceil(total_bits / 8)
