"""``BitConv2d``: a binary-input conv with binary or ternary weights on the packed kernels.

Built from an eval-mode ``netshrink.quant.QuantConv2d`` whose input quantizer is binary
``sign`` and whose weights are binary or ternary (frozen codes from a packed file, or live
latent weights, encoded once). Forward (inference only, float32 on the CPU): pack ``sign(x)``
along channels, XOR / popcount against the weight bit-planes with exact integer accumulation,
multiply by the per-channel weight scale (1 without one), then the layer's own epilogue: the
folded ``out_scale`` and bias, rounded step by step as ``torch.addcmul`` does in the layer.

Exactness: the integer sum is exact, and zero padding is handled per position (a padded tap
adds nothing, as in the float conv). The result equals the fake-quantized layer bit for bit
whenever the float conv of ``sign(x)`` with the decoded weights is itself exact: unscaled
codes (BNN, TWN without scale) and power-of-two scales. With a general per-channel scale
(XNOR ``mean|w|``, TWN's), the float conv rounds its running sum of ``+-scale`` terms while the
kernel rounds once (``count * scale``): they can differ in the last bits. Likewise a conv bias
without a folded ``out_scale`` (torch's conv adds it inside its own accumulation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netshrink.kernels._build import kernel_ops
from netshrink.kernels.weights import BitPlanes, bit_planes

#: The compiled kernels a ``BitConv2d`` can be forced to use (``available_paths()``: this CPU's).
KERNEL_PATHS: dict[str, int] = {"auto": 0, "portable": 1, "avx2": 2, "avx512": 3}


class BitConv2d(nn.Module):
    """A packed-kernel conv: ``sign(x)`` (*) binary / ternary weights, then scale and epilogue."""

    def __init__(self, planes: BitPlanes, *, in_channels: int, out_channels: int,
                 kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], groups: int,
                 weight_scale: torch.Tensor | None, out_scale: torch.Tensor | None,
                 bias: torch.Tensor | None, ternary: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.ternary = ternary
        #: Which compiled kernel runs: "auto" (the best this CPU has), or one of
        #: ``KERNEL_PATHS`` to force it (tests, comparisons).
        self.kernel_path = "auto"
        #: ``(kernel, stride, padding)`` of a max-pool applied to the packed input first (set by
        #: ``absorb_sign_preserving``: max of signs = OR of bits), or None.
        self.pre_pool: tuple[int, int, int] | None = None
        #: With ``pre_pool`` on bits a previous ``BitConv2d`` emitted: int64 words with a bit set
        #: for each channel to AND-pool (min of signs, see ``absorb``), else None.
        self.register_buffer("pool_and", None)
        #: Packed output (set by ``absorb``): bit 1 for output channel c where its exact sum lies
        #: in ``[emit_lo[c], emit_hi[c]]``, laid out for the next binary layer (``emit_groups``,
        #: ``emit_pad``); None: float output.
        self.register_buffer("emit_lo", None)
        self.register_buffer("emit_hi", None)
        self.emit_groups, self.emit_pad = 1, (0, 0)
        for name in ("p", "m", "total", "tap_sum"):
            self.register_buffer(name, getattr(planes, name))
        alpha = (torch.ones(out_channels) if weight_scale is None
                 else weight_scale.detach().reshape(-1).to("cpu", torch.float32))
        self.register_buffer("alpha", alpha.contiguous())
        self.register_buffer("out_scale", None if out_scale is None
                             else out_scale.detach().to("cpu", torch.float32))
        self.register_buffer("bias", None if bias is None
                             else bias.detach().to("cpu", torch.float32))

    @classmethod
    def from_quant_conv(cls, layer: nn.Module) -> BitConv2d:
        """Pack a ``QuantConv2d`` (see ``convertible_reason`` for which ones qualify)."""
        reason = convertible_reason(layer)
        if reason is not None or isinstance(layer, nn.Linear):
            raise ValueError(f"cannot run {type(layer).__name__} on packed kernels: "
                             f"{reason or 'a linear layer is a BitLinear'}")
        t, ternary, params = _weight_values(layer)
        return cls(bit_planes(t, layer.groups, ternary), in_channels=layer.in_channels,
                   out_channels=layer.out_channels, kernel_size=layer.kernel_size,
                   stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                   groups=layer.groups, weight_scale=params.get("scale"),
                   out_scale=layer.out_scale, bias=layer.bias, ternary=ternary)

    def _epilogue(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out_scale, bias)`` as the kernels take them (empty: none)."""
        none = self.alpha.new_empty(0)
        out_scale = none if self.out_scale is None else self.out_scale
        bias = none if self.bias is None else self.bias
        if self.out_scale is not None and self.bias is None:
            bias = torch.zeros_like(self.out_scale)
        return out_scale, bias

    # Every argument of the kernel call but ``x``, built at the first forward and kept (at batch
    # 1 building them took about as long as packing the input): any attribute set, and ``to()``
    # and the like, drop them; a copy starts without.
    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__["_call_args"] = None
        super().__setattr__(name, value)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> BitConv2d:
        self.__dict__["_call_args"] = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_call_args": None}

    def _call(self) -> tuple[Any, ...]:
        args = self.__dict__.get("_call_args")
        if args is None:
            out_scale, bias = self._epilogue()
            none_i64, none_i32 = self.p.new_empty(0), self.total.new_empty(0)
            args = (self.p, self.m, self.total, self.tap_sum, self.alpha, out_scale, bias,
                    list(self.kernel_size), list(self.stride), list(self.dilation),
                    list(self.padding), self.groups, list(self.pre_pool or ()),
                    none_i64 if self.pool_and is None else self.pool_and,
                    none_i32 if self.emit_lo is None else self.emit_lo,
                    none_i32 if self.emit_hi is None else self.emit_hi,
                    self.emit_groups, list(self.emit_pad), KERNEL_PATHS[self.kernel_path])
            self.__dict__["_call_args"] = args
        return args

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.int64:  # bits a previous BitConv2d emitted for this layer
            words = -(-(self.in_channels // self.groups) // 64)
            if x.dim() != 5 or x.shape[1] != self.groups or x.shape[4] != words:
                raise ValueError(f"BitConv2d takes packed bits as (N, {self.groups}, H, W, "
                                 f"{words}) int64, got {tuple(x.shape)}")
        elif x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
            raise ValueError(f"BitConv2d takes a float32 (N, C, H, W) CPU tensor, got "
                             f"{x.dtype} {tuple(x.shape)} on {x.device}")
        elif x.shape[1] != self.in_channels:
            raise ValueError(f"BitConv2d expects {self.in_channels} input channels, got "
                             f"{x.shape[1]}")
        # one call: pack sign(x) unless packed already, pool (pre_pool), the conv, then floats
        # or (emit_lo) packed bits for the next binary layer
        return kernel_ops().bitconv(x, *self._call())

    def emitted_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every exact sum an output channel can have, ``v`` int32 ``[C, K]`` (``-max(total)``
        to ``max(total)``; padding taps can make any of them), and the float output the
        kernel's epilogue gives each (``[C, K]``): what ``absorb`` tabulates packed outputs
        from."""
        top = int(self.total.max()) if self.total.numel() else 0
        v = torch.arange(-top, top + 1, dtype=torch.int32).expand(self.out_channels, -1)
        out_scale, bias = self._epilogue()
        return v, kernel_ops().epilogue(v.contiguous(), self.alpha, out_scale, bias)

    def extra_repr(self) -> str:
        kind = "ternary" if self.ternary else "binary"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, weights={kind}"
                + (f", pre_pool={self.pre_pool}" if self.pre_pool else "")
                + (", packed_output=True" if self.emit_lo is not None else ""))


class BitLinear(BitConv2d):
    """A packed-kernel linear layer, ``sign(x) . w`` for binary / ternary ``w``: a 1x1
    ``BitConv2d`` on a 1x1 image (inputs ``(..., in_features)``), with the same epilogue and
    the same exactness (a bias without a folded ``out_scale``: torch's ``F.linear`` adds it
    inside its own accumulation, so the last bits may differ)."""

    @classmethod
    def from_quant_linear(cls, layer: nn.Module) -> BitLinear:
        """Pack a ``QuantLinear`` with a binary (sign) input and binary / ternary weights."""
        reason = convertible_reason(layer)
        if reason is not None or not isinstance(layer, nn.Linear):
            raise ValueError(f"cannot run {type(layer).__name__} as a BitLinear: "
                             f"{reason or 'not a linear layer'}")
        t, ternary, params = _weight_values(layer)
        t = t.view(layer.out_features, layer.in_features, 1, 1)
        return cls(bit_planes(t, 1, ternary), in_channels=layer.in_features,
                   out_channels=layer.out_features, kernel_size=(1, 1), stride=(1, 1),
                   padding=(0, 0), dilation=(1, 1), groups=1, weight_scale=params.get("scale"),
                   out_scale=layer.out_scale, bias=layer.bias, ternary=ternary)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_channels:
            raise ValueError(f"BitLinear expects (..., {self.in_channels}) inputs, got "
                             f"{tuple(x.shape)}")
        y = super().forward(x.reshape(-1, self.in_channels, 1, 1))
        return y.view(*x.shape[:-1], self.out_channels)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_channels}, out_features={self.out_channels}, "
                f"weights={'ternary' if self.ternary else 'binary'}")


def _weight_values(layer: nn.Module) -> tuple[torch.Tensor, bool, dict[str, torch.Tensor]]:
    """A quantized layer's weights in {-1, 0, +1} (its weight shape), whether they are ternary,
    and the quantizer's parameters (``scale``): frozen codes, or live weights encoded once."""
    wq = layer.weight_quant
    if layer.is_frozen:
        quantizer, codes = wq.quantizer, wq.codes
        params = {name: getattr(wq, name) for name in wq.param_names}
    else:
        quantizer = wq
        constrain = getattr(layer, "constrain_latent", None)
        if constrain is not None:  # a weight changed since its last forward: as the layer sees it
            constrain()
        codes, params = wq.encode(layer._out_major(layer.weight.detach()))
    ternary = quantizer.kind == "ternary"
    t = codes.to(torch.int64) - 1 if ternary else codes.to(torch.int64) * 2 - 1
    return t.view(layer._weight_shape()), ternary, params


def convertible_reason(layer: Any) -> str | None:
    """None when ``layer`` can run on the packed kernels (a ``QuantConv2d`` as ``BitConv2d``,
    a ``QuantLinear`` as ``BitLinear``), else why not."""
    from netshrink.quant import BinaryAct, QuantConv2d, QuantLinear

    if not isinstance(layer, QuantConv2d | QuantLinear):
        return f"it is a {type(layer).__name__}, not a QuantConv2d or QuantLinear"
    if not isinstance(layer.input_quant, BinaryAct):
        return "its input is not binary (sign)"
    wq = layer.weight_quant
    quantizer = getattr(wq, "quantizer", wq)
    kind = getattr(quantizer, "kind", None)
    if kind not in ("binary", "ternary"):
        return f"its weights are {kind or 'float'}, not binary or ternary"
    if isinstance(layer, QuantLinear):
        return None
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return f"padding {layer.padding!r} / mode {layer.padding_mode!r} (need explicit zeros)"
    return None
