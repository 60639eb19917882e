"""Quantized layers: ``QuantConv2d`` (plain, grouped, depthwise), ``QuantConvTranspose2d`` and
``QuantLinear``.

Each is a subclass of the torch layer it replaces and shares that layer's ``weight`` and
``bias`` Parameters (an optimizer built before ``quantize_`` keeps working). On every forward it
fake-quantizes its input with ``input_quant`` and its latent float weight with
``weight_quant``, then runs the usual convolution / matrix product.

* ``packed_bits`` (read by ``netshrink.core.ModelStats``) declares the weight's real width.
* ``netshrink_input_sign`` is True when the input quantizer is binary ``sign``.
* ``fold_affine(scale, shift)`` absorbs a per-output-channel ``y * scale + shift`` (a folded
  BatchNorm) into a per-channel output scale ``out_scale`` and the bias, leaving the weight
  codes untouched: ``y = conv(x_q, w_q) * out_scale + bias``. ``scale`` may be negative or 0.
* ``constrain_latent()`` keeps the latent weight where the weight quantizer trains it (binary:
  centred and clipped to ``[-1, 1]``): applied in place whenever the weight changed in place
  (an optimizer step), before the layer quantizes, saves or packs it, so a training loop needs
  no call of its own.
* ``freeze_weight()`` replaces the latent weight by its codes (``FrozenWeight``): what a
  model loaded from a packed file holds.
* ``integer_form()`` (``netshrink.core.HasIntegerForm``) describes the eval-mode layer as
  integer weight codes with scale and zero point, the input's quantization, and the float
  epilogue (``out_scale``, bias), for exporters such as ``netshrink.deploy``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import INPUT_SIGN_ATTR, PACKED_BITS_ATTR, IntegerForm
from netshrink.quant.quantizers import (
    ActQuantizer,
    AffineAct,
    AffineWeight,
    BinaryAct,
    WeightQuantizer,
    integer_bias,
)


class FrozenWeight(nn.Module):
    """A layer weight held as codes plus float parameters, decoded on every forward."""

    def __init__(self, quantizer: WeightQuantizer, codes: torch.Tensor,
                 params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.register_buffer("codes", codes)
        self.param_names = tuple(sorted(params))
        for name in self.param_names:
            self.register_buffer(name, params[name])
        self.packed_bits = {"codes": quantizer.bits}

    def forward(self) -> torch.Tensor:
        params = {name: getattr(self, name) for name in self.param_names}
        return self.quantizer.decode(self.codes, params)


class _QuantLayer:
    """What the three quantized layers share; they mix it into their torch base class."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    weight_quant: WeightQuantizer | FrozenWeight | None
    input_quant: ActQuantizer | None
    out_scale: torch.Tensor | None

    def _setup_quant(self, weight_quant: WeightQuantizer | None,
                     input_quant: ActQuantizer | None) -> None:
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.register_buffer("out_scale", None)
        setattr(self, PACKED_BITS_ATTR,
                {"weight": weight_quant.bits} if weight_quant is not None else {})
        setattr(self, INPUT_SIGN_ATTR, isinstance(input_quant, BinaryAct))

    # the latent weight's constraint (binary: centred and clipped) -------------------------
    #: (the weight, its storage, its version counter) when last constrained or adopted
    _latent_mark: tuple[weakref.ref, int, int] | None = None

    def constrain_latent(self, force: bool = False) -> bool:
        """Move ``weight`` in place into the set its quantizer trains it in
        (``WeightQuantizer.constrain_latent``: binary weights are centred and clipped to
        ``[-1, 1]``) if it changed in place since the last time; True when it did.

        Idempotent, so the layer calls it itself before it quantizes the weight (``forward``)
        and before ``state_dict``, ``freeze_weight``, ``deploy_state`` and ``integer_form``:
        after an optimizer step the next of these applies it once, which gives exactly the
        values of the old explicit call after every step, ``w_{k+1} = C(w_k - update_k)``.
        A change is seen by the weight's version counter, bumped by every in-place operation
        (optimizer steps, masks, ``load_state_dict``, which takes the loaded values as they
        are). A weight seen for the first time, or another tensor than the last one seen (a
        deep copy, ``.to(device)``), is taken as it is (``quantize_`` constrains every new layer
        once, with ``force=True``). Writes through ``weight.data`` bump no version:
        ``force=True`` applies the constraint regardless. A no-op for quantizers without a
        constraint, a frozen weight, and while tracing (``torch.jit.trace``, ``torch.fx``)."""
        # straight from the module's dicts: this runs before every forward
        wq = self._modules.get("weight_quant")
        if not getattr(wq, "constrains_latent", False):
            return False
        w = self._parameters.get("weight")
        if not isinstance(w, torch.Tensor) or torch.jit.is_tracing():
            return False
        mark = self._latent_mark
        if not force:
            if mark is None or mark[0]() is not w or mark[1] != w.data_ptr():
                self._mark_latent(w)  # first seen, or a copy: taken as it is
                return False
            if mark[2] == w._version:
                return False
        with torch.no_grad():
            positions = w.shape[2:].numel()  # kernel positions (1 for Linear)
            w.copy_(self._from_out_major(wq.constrain_latent(self._out_major(w), positions)))
        self._mark_latent(w)
        return True

    def _mark_latent(self, w: torch.Tensor) -> None:
        self._latent_mark = (weakref.ref(w), w.data_ptr(), w._version)

    def __getstate__(self) -> dict[str, Any]:
        # a copy (copy.deepcopy: accelerate, export, fuse) takes the weight as the next forward
        # would use it: a change since the last forward (the last optimizer step) is
        # constrained first, since the copy cannot tell it from its own first sight
        self.constrain_latent()
        return super().__getstate__()

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        self.constrain_latent()  # a checkpoint holds the weight as the next forward uses it
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        w = self.weight
        if getattr(self.weight_quant, "constrains_latent", False) and isinstance(w, torch.Tensor):
            self._mark_latent(w)  # the loaded values are taken as they are (as saved)

    # out-major view: one row per output channel ----------------------------------------
    def _out_major(self, w: torch.Tensor) -> torch.Tensor:
        return w.reshape(w.shape[0], -1)

    def _from_out_major(self, w2d: torch.Tensor) -> torch.Tensor:
        return w2d.view(self._weight_shape())

    def _weight_shape(self) -> torch.Size:
        raise NotImplementedError

    @property
    def num_out_channels(self) -> int:
        raise NotImplementedError

    # the two quantized inputs of the layer ------------------------------------------------
    @property
    def is_frozen(self) -> bool:
        return isinstance(self.weight_quant, FrozenWeight)

    def quantized_weight(self) -> torch.Tensor:
        """The weight the layer computes with (fake-quantized, or decoded when frozen)."""
        if self.weight_quant is None:
            return self.weight
        if isinstance(self.weight_quant, FrozenWeight):
            return self._from_out_major(self.weight_quant())
        self.constrain_latent()
        # Under no_grad, a view of a Parameter still says requires_grad but has no grad_fn,
        # which breaks module hooks such as FlopCounterMode's tracker: detach it instead.
        w = self.weight if torch.is_grad_enabled() else self.weight.detach()
        return self._from_out_major(self.weight_quant(self._out_major(w)))

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quant is None else self.input_quant(x)

    # the bias as integer kernels add it ----------------------------------------------------
    def link_input_grid(self, quantizer: ActQuantizer | None) -> None:
        """Record the quantizer whose grid this layer's input already lies on, for a layer
        without an input quantizer of its own (``netshrink.quant.quant_add`` drops it where the
        input is a ``QuantAdd``'s output). Kept outside the submodules (no state-dict entry;
        a deep copy of the model links the copies)."""
        self._input_grid_link = None if quantizer is None else (quantizer,)

    def input_grid(self) -> ActQuantizer | None:
        """The quantizer whose grid the conv's input lies on: its own input quantizer, else
        the linked one (``link_input_grid``), else None."""
        if self.input_quant is not None:
            return self.input_quant
        link = self.__dict__.get("_input_grid_link")
        return None if link is None else link[0]

    def _integer_bias(self, bias: torch.Tensor | None,
                      latent: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """``bias`` as an integer kernel adds it (``integer_bias``: int32 codes at scale
        ``s_in * s_w``) for a conv with affine integer weights whose input lies on an affine
        grid with a range (int8 QAT, PTQ); any other layer's bias unchanged. ``latent``: the
        float weight the weight quantizer sees (its per-channel scale is ``s_w``)."""
        if bias is None or self.out_scale is not None or not isinstance(self, nn.Conv2d):
            return bias
        grid = self.input_grid()
        if not isinstance(grid, AffineAct) or not grid.observer.has_range:
            return bias
        wq = self.weight_quant
        if isinstance(wq, FrozenWeight) and isinstance(wq.quantizer, AffineWeight):
            scale = wq.scale
        elif isinstance(wq, AffineWeight):
            scale, _ = wq._params(self._out_major(latent().detach()))
        else:
            return bias
        return integer_bias(bias, grid.params()[0], scale)

    def _finish(self, y: torch.Tensor, channel_view: tuple[int, ...]) -> torch.Tensor:
        """Apply the folded per-channel output scale and the bias (only after a fold)."""
        return torch.addcmul(self.bias.view(channel_view), y, self.out_scale.view(channel_view))

    # contracts with other packages ----------------------------------------------------------
    @torch.no_grad()
    def fold_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Absorb ``y -> y * scale + shift`` (per output channel); weight codes unchanged."""
        n = self.num_out_channels
        for name, t in (("scale", scale), ("shift", shift)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"fold_affine: {name} must be a tensor of shape ({n},) (one "
                                 f"value per output channel), got {got}")
        ref = self.bias if self.bias is not None else self.out_scale
        if ref is None:
            ref = (self.weight if self.weight is not None else self.weight_quant.codes)
        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
        device = ref.device
        scale = scale.detach().to(device=device, dtype=dtype)
        shift = shift.detach().to(device=device, dtype=dtype)
        old_scale = self.out_scale if self.out_scale is not None else torch.ones_like(scale)
        self.out_scale = old_scale * scale
        if self.bias is None:
            self.bias = nn.Parameter(shift.clone())
        else:  # in place: an optimizer holding the bias keeps training it
            self.bias.mul_(scale).add_(shift)

    @torch.no_grad()
    def freeze_weight(self) -> None:
        """Replace the latent weight by its codes and parameters (a ``FrozenWeight``)."""
        if self.weight_quant is None or self.is_frozen:
            return
        self.constrain_latent()
        codes, params = self.weight_quant.encode(self._out_major(self.weight))
        self._install_frozen(FrozenWeight(self.weight_quant, codes, params))

    def _install_frozen(self, frozen: FrozenWeight) -> None:
        self.weight = None
        self.weight_quant = frozen
        setattr(self, PACKED_BITS_ATTR, {})

    @torch.no_grad()
    def integer_form(self) -> IntegerForm | None:
        """The eval-mode layer as integer weights (``netshrink.core.IntegerForm``): codes whose
        dequantized value equals ``quantized_weight()`` exactly. None when the weight or the
        input is not on an integer grid (float, float16); ValueError (saying why) when the
        layer cannot be described (a grouped transposed conv with per-channel scales, an
        affine input quantizer that has seen no data)."""
        wq = self.weight_quant
        if wq is None:
            return None
        if isinstance(wq, FrozenWeight):
            quantizer = wq.quantizer
            codes, params = wq.codes, {name: getattr(wq, name) for name in wq.param_names}
        else:
            quantizer = wq
            codes, params = wq.encode(self._out_major(self._latent_weight()))
        grid = quantizer.integer_grid(codes, params)
        if grid is None:
            return None
        act = None
        if self.input_quant is not None:
            act = self.input_quant.activation_form()
            if act is None:
                return None
        q2d, scale, zero_point = grid
        axis = self._channel_axis()
        if scale.dim() == 1 and axis is None:
            raise ValueError(f"{type(self).__name__} with groups={self.groups} has per-channel "
                             "weight scales, but its output channels do not lie along one axis "
                             "of the weight")
        q = self._from_out_major(q2d.contiguous())
        lo = min(int(q.min()), int(zero_point.min()))
        hi = max(int(q.max()), int(zero_point.max()))
        narrow = torch.int8 if lo >= -128 and hi <= 127 else torch.int16
        out_scale, bias = self._epilogue()
        return IntegerForm(
            codes=q.to(narrow), weight_scale=scale, weight_zero_point=zero_point.to(narrow),
            axis=axis or 0, bits=int(-(-quantizer.bits // 1)), input=act,
            output_scale=out_scale, bias=bias)

    def _latent_weight(self) -> torch.Tensor:
        """The float weight the weight quantizer sees."""
        self.constrain_latent()
        return self.weight.detach()

    def _epilogue(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(out_scale, bias)`` applied after the conv / product (eval mode; the bias as
        the forward adds it: on the int32 grid for int8 affine convs)."""
        bias = None if self.bias is None else self.bias.detach()
        return (None if self.out_scale is None else self.out_scale.detach().clone(),
                None if bias is None else self._integer_bias(bias, self._latent_weight).clone())

    def _channel_axis(self) -> int | None:
        """The weight axis of the output channels (None: they do not lie along one axis)."""
        return 0

    def deploy_state(self) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """What a packed file stores for this layer: the float weight its codes encode
        (None when frozen) and the other tensors, by their names in the deployed layer."""
        state = self.state_dict()  # constrains the latent weight first
        if self.weight_quant is None or self.is_frozen:
            return None, dict(state)
        rest = {k: v for k, v in state.items()
                if k != "weight" and not k.startswith("weight_quant.")}
        return self.weight, rest

    def deploy_args(self) -> dict[str, Any]:
        """Constructor arguments of the deployed layer (``deploy_type``)."""
        return _conv_args(self) if hasattr(self, "out_channels") else {
            "in_features": self.in_features, "out_features": self.out_features,
            "bias": self.bias is not None}

    @property
    def deploy_type(self) -> type[nn.Module]:
        """The class a packed file rebuilds this layer as (its own class by default)."""
        return type(self)

    def quant_spec(self) -> dict[str, Any]:
        """JSON-able description of the quantization (for packed files)."""
        wq = self.weight_quant.quantizer if self.is_frozen else self.weight_quant
        return {"weight_quant": None if wq is None else wq.spec(),
                "input_quant": None if self.input_quant is None else self.input_quant.spec(),
                "folded": self.out_scale is not None}

    @classmethod
    def _adopt(cls, layer: nn.Module, new: nn.Module) -> nn.Module:
        new.weight = layer.weight
        new.bias = layer.bias
        device = layer.weight.device
        if new.weight_quant is not None:
            new.weight_quant.to(device)
        if new.input_quant is not None:
            new.input_quant.to(device)
        return new.train(layer.training)


def _conv_args(conv: nn.Conv2d | nn.ConvTranspose2d) -> dict[str, Any]:
    args = {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
            "kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
            "dilation": conv.dilation, "groups": conv.groups, "bias": conv.bias is not None,
            "padding_mode": conv.padding_mode}
    if isinstance(conv, nn.ConvTranspose2d):
        args["output_padding"] = conv.output_padding
    return args


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """``nn.Conv2d`` with quantized input and weight (plain, grouped or depthwise)."""

    def __init__(self, *args: Any, weight_quant: WeightQuantizer | None = None,
                 input_quant: ActQuantizer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_quant(weight_quant, input_quant)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant: WeightQuantizer | None,
                   input_quant: ActQuantizer | None) -> QuantConv2d:
        """A quantized layer sharing ``conv``'s weight and bias Parameters."""
        new = cls(**_conv_args(conv), device="meta", weight_quant=weight_quant,
                  input_quant=input_quant)
        return cls._adopt(conv, new)

    def _weight_shape(self) -> torch.Size:
        return torch.Size((self.out_channels, self.in_channels // self.groups,
                           *self.kernel_size))

    @property
    def num_out_channels(self) -> int:
        return self.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantized_input(x)
        w = self.quantized_weight()
        if self.out_scale is None:
            return self._conv_forward(x, w, self._integer_bias(self.bias, self._latent_weight))
        return self._finish(self._conv_forward(x, w, None), (-1, 1, 1))


class QuantConvTranspose2d(_QuantLayer, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with quantized input and weight. Its weight is stored
    ``(in, out / groups, kh, kw)``; the quantizers see it regrouped one row per output channel.
    """

    def __init__(self, *args: Any, weight_quant: WeightQuantizer | None = None,
                 input_quant: ActQuantizer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_quant(weight_quant, input_quant)

    @classmethod
    def from_float(cls, conv: nn.ConvTranspose2d, weight_quant: WeightQuantizer | None,
                   input_quant: ActQuantizer | None) -> QuantConvTranspose2d:
        """A quantized layer sharing ``conv``'s weight and bias Parameters."""
        new = cls(**_conv_args(conv), device="meta", weight_quant=weight_quant,
                  input_quant=input_quant)
        return cls._adopt(conv, new)

    def _weight_shape(self) -> torch.Size:
        return torch.Size((self.in_channels, self.out_channels // self.groups,
                           *self.kernel_size))

    def _out_major(self, w: torch.Tensor) -> torch.Tensor:
        g = self.groups
        grouped = w.reshape(g, self.in_channels // g, self.out_channels // g, -1)
        return grouped.transpose(1, 2).reshape(self.out_channels, -1)

    def _from_out_major(self, w2d: torch.Tensor) -> torch.Tensor:
        g = self.groups
        grouped = w2d.reshape(g, self.out_channels // g, self.in_channels // g, -1)
        return grouped.transpose(1, 2).reshape(self._weight_shape())

    def _channel_axis(self) -> int | None:
        return 1 if self.groups == 1 else None

    @property
    def num_out_channels(self) -> int:
        return self.out_channels

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        x = self.quantized_input(x)
        w = self.quantized_weight()
        bias = self.bias if self.out_scale is None else None
        y = F.conv_transpose2d(x, w, bias, self.stride, self.padding, output_padding,
                               self.groups, self.dilation)
        return y if self.out_scale is None else self._finish(y, (-1, 1, 1))


class QuantLinear(_QuantLayer, nn.Linear):
    """``nn.Linear`` with quantized input and weight."""

    def __init__(self, *args: Any, weight_quant: WeightQuantizer | None = None,
                 input_quant: ActQuantizer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_quant(weight_quant, input_quant)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quant: WeightQuantizer | None,
                   input_quant: ActQuantizer | None) -> QuantLinear:
        """A quantized layer sharing ``linear``'s weight and bias Parameters."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device="meta", weight_quant=weight_quant, input_quant=input_quant)
        return cls._adopt(linear, new)

    def _weight_shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.in_features))

    @property
    def num_out_channels(self) -> int:
        return self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantized_input(x)
        w = self.quantized_weight()
        if self.out_scale is None:
            return F.linear(x, w, self.bias)
        return self._finish(F.linear(x, w), (-1,))


QUANT_LAYERS: tuple[type[nn.Module], ...] = (QuantConv2d, QuantConvTranspose2d, QuantLinear)
#: The float layer each quantized layer replaces.
QUANT_LAYER_FOR: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: QuantConv2d, nn.ConvTranspose2d: QuantConvTranspose2d, nn.Linear: QuantLinear,
}
