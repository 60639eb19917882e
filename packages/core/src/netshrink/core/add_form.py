"""The integer form of a quantized residual add: the contract between quant and deploy.

A quantized add computes, in eval mode,

    y = out(relu?(a_q(a) + b_q(b)))

where ``a_q`` / ``b_q`` quantize an operand (None: the operand is already on an integer grid,
e.g. the output of another quantized add) and ``out`` quantizes the result
(``ActivationForm``, per tensor). An exporter writes each quantizer as a QuantizeLinear /
DequantizeLinear pair, so a runtime fuses ``DQ, DQ -> Add -> Q`` into an integer add
(ONNX Runtime: QLinearAdd) and the convs on either side end in / start from a Q / DQ
(QLinearConv). Deploy meets quant's ``QuantAdd`` only through ``HasAddForm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from netshrink.core.integer_form import ActivationForm


@dataclass(frozen=True)
class AddForm:
    """Operand and output quantization of an add (``relu``: a ReLU between add and output)."""

    a: ActivationForm | None
    b: ActivationForm | None
    out: ActivationForm
    relu: bool = False

    def __post_init__(self) -> None:
        for name in ("a", "b", "out"):
            value = getattr(self, name)
            if not (isinstance(value, ActivationForm) or (value is None and name != "out")):
                raise ValueError(f"{name}={value!r} must be an ActivationForm"
                                 f"{'' if name == 'out' else ' or None'}")
            if value is not None and value.kind != "affine":
                raise ValueError(f"{name}: kind={value.kind!r}; an add's quantization is "
                                 "'affine'")
        if not isinstance(self.relu, bool):
            raise ValueError(f"relu={self.relu!r} must be a bool")


@runtime_checkable
class HasAddForm(Protocol):
    """A module computing ``forward(a, b)`` as a quantized add that ``AddForm`` describes."""

    def add_form(self) -> AddForm: ...
