"""The export-time stand-in for a quantized layer: its ``IntegerForm`` as QDQ.

``QDQLayer`` holds the integer weight codes as an ``int8`` buffer (an int8 initializer in the
ONNX file), the weight scale and zero point, the input's quantization and the float epilogue.
Under ``torch.onnx.export`` (dynamo) it emits, through ``torch.onnx.ops.symbolic``:

    x -> [Clip] -> QuantizeLinear(uint8) -> DequantizeLinear -> Conv / ConvTranspose / MatMul
    codes(int8) -> DequantizeLinear (per channel or per tensor) ---^     -> [Mul] -> [Add]

which ONNX Runtime's graph optimizer turns into integer kernels (QLinearConv, ConvInteger,
MatMulInteger). In eager mode it computes the same values in float (``forward`` is the
reference that ``check_onnx`` compares against, as is the original layer).

Activations always travel as uint8: a signed form (ternary, binary sign) is shifted by 128
(zero point 128), the same real values. A Clip before QuantizeLinear keeps codes inside a
narrower range than uint8's (k-bit activations, ternary); binary activations are
``Where(x >= 0, 1, -1)``, keeping sign(0) = +1 (ONNX's Sign gives 0 there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import ActivationForm, AddForm, IntegerForm

#: ONNX opset the QuantizeLinear / DequantizeLinear nodes are written for.
_QDQ_OPSET = 21


def _symbolic(op: str, args: tuple[torch.Tensor, ...], dtype: torch.dtype,
              shape: torch.Size, attrs: dict[str, int] | None = None) -> torch.Tensor:
    return torch.onnx.ops.symbolic(op, args, attrs=attrs or {}, dtype=dtype, shape=shape,
                                   version=_QDQ_OPSET)


class QDQInput(nn.Module):
    """An ``ActivationForm`` as (Clip) QuantizeLinear DequantizeLinear on uint8 codes."""

    def __init__(self, form: ActivationForm) -> None:
        super().__init__()
        self.form = form
        shift = 128 if form.qmin < 0 else 0
        if form.qmin + shift < 0 or form.qmax + shift > 255:
            raise ValueError(f"input codes {form.qmin}..{form.qmax} do not fit uint8 (shifted "
                             "by at most 128)")
        self.register_buffer("scale", torch.tensor(form.scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(form.zero_point + shift,
                                                        dtype=torch.uint8))
        lo, hi = form.qmin + shift, form.qmax + shift
        #: Clip needed when the form's codes are a strict part of uint8's 0..255
        self.clip = None if (lo, hi) == (0, 255) or form.kind == "sign" else form.clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form.kind == "sign":
            x = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        elif self.clip is not None:
            x = torch.clamp(x, *self.clip)
        if not torch.onnx.is_in_onnx_export():
            return self.form.fake_quantize(x)
        q = _symbolic("QuantizeLinear", (x, self.scale, self.zero_point), torch.uint8, x.shape)
        return _symbolic("DequantizeLinear", (q, self.scale, self.zero_point), x.dtype, x.shape)


class QDQLayer(nn.Module):
    """A conv / transposed conv / linear layer rebuilt from its ``IntegerForm``."""

    def __init__(self, layer: nn.Module, form: IntegerForm) -> None:
        super().__init__()
        if not form.fits(torch.int8):
            lo, hi = form.code_range
            raise ValueError(f"its weight codes span {lo}..{hi} ({form.bits}-bit), beyond "
                             "int8's -128..127")
        if isinstance(layer, nn.ConvTranspose2d):
            self.op = "conv_transpose2d"
        elif isinstance(layer, nn.Conv2d):
            self.op = "conv2d"
        elif isinstance(layer, nn.Linear):
            self.op = "linear"
        else:
            raise ValueError(f"{type(layer).__name__} is not a Conv2d, ConvTranspose2d or "
                             "Linear, the layer kinds with a QDQ export")
        if self.op != "linear":
            if layer.padding_mode != "zeros":
                raise ValueError(f"padding_mode={layer.padding_mode!r}: only 'zeros' exports")
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups
            self.output_padding = getattr(layer, "output_padding", (0, 0))
        self.register_buffer("codes", form.codes.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", form.weight_scale.to(torch.float32).contiguous())
        zero_point = form.weight_zero_point.to(torch.int8)
        if form.per_channel and zero_point.dim() == 0:  # ONNX: per-axis zero points are 1-D
            zero_point = zero_point.expand_as(form.weight_scale)
        self.register_buffer("weight_zero_point", zero_point.contiguous())
        self.axis = form.axis
        self.per_channel = form.per_channel
        self.input_qdq = None if form.input is None else QDQInput(form.input)
        self.register_buffer("output_scale", None if form.output_scale is None else
                             form.output_scale.to(torch.float32))
        self.register_buffer("bias", None if form.bias is None else form.bias.to(torch.float32))

    def weight(self) -> torch.Tensor:
        """The dequantized weight (a DequantizeLinear of the int8 codes when exporting)."""
        if not torch.onnx.is_in_onnx_export():
            shape = [-1 if d == self.axis else 1 for d in range(self.codes.dim())]
            scale, zp = self.weight_scale, self.weight_zero_point
            if self.per_channel:
                scale, zp = scale.view(shape), zp.view(shape)
            return (self.codes.int() - zp.int()).float() * scale
        attrs = {"axis": self.axis} if self.per_channel else {}
        return _symbolic("DequantizeLinear", (self.codes, self.weight_scale,
                                              self.weight_zero_point),
                         torch.float32, self.codes.shape, attrs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_qdq is not None:
            x = self.input_qdq(x)
        w = self.weight()
        bias = self.bias if self.output_scale is None else None
        if self.op == "conv2d":
            y = F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)
        elif self.op == "conv_transpose2d":
            y = F.conv_transpose2d(x, w, bias, self.stride, self.padding, self.output_padding,
                                   self.groups, self.dilation)
        else:
            y = F.linear(x, w, bias)
        if self.output_scale is None:
            return y
        view = (-1,) if self.op == "linear" else (-1, 1, 1)
        y = y * self.output_scale.view(view)
        return y if self.bias is None else y + self.bias.view(view)


class QDQAdd(nn.Module):
    """An ``AddForm`` (a quantized residual add) as QDQ: each quantized operand through
    QuantizeLinear / DequantizeLinear, then ``Add -> [Relu] -> Q -> DQ``. ONNX Runtime fuses
    ``DQ, DQ -> Add -> Q`` into QLinearAdd (the Relu before a zero-point-0 uint8 Q is dropped,
    the Q saturating the same), and each conv feeding an operand ends in that operand's Q
    (QLinearConv)."""

    def __init__(self, form: AddForm) -> None:
        super().__init__()
        self.form = form
        self.a_qdq = None if form.a is None else QDQInput(form.a)
        self.b_qdq = None if form.b is None else QDQInput(form.b)
        self.out_qdq = QDQInput(form.out)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.a_qdq is not None:
            a = self.a_qdq(a)
        if self.b_qdq is not None:
            b = self.b_qdq(b)
        y = a + b
        if self.form.relu:
            y = torch.relu(y)
        return self.out_qdq(y)
