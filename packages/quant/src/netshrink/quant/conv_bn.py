"""Conv2d + BatchNorm2d trained as one quantized layer (Jacob et al. 2018, section 3.2).

The weight that gets quantized is the BN-folded weight ``w * gamma / sqrt(running_var + eps)``
(per output channel), so the trained codes are exactly the ones an int8 deployment uses.

* training: ``y = bn(conv(x_q, q(w_fold)) / s + b)`` with ``s = gamma / running_std``: dividing
  by ``s`` undoes the folding so BatchNorm still normalises with the batch statistics (and
  updates its running statistics) as in float training;
* eval: ``y = conv(x_q, q(w_fold)) + (b - running_mean) * s + beta``, a plain quantized conv
  with a bias: what ``save_packed`` stores (as a ``QuantConv2d``); with affine int8 weights
  and input the bias is rounded to int32 codes at scale ``s_in * s_w``, as integer kernels add
  it (``integer_bias``);
* training after ``freeze_bn_stats()`` (late in QAT): the eval formula, bit for bit, so the
  BatchNorm's running statistics are used and no longer updated; here ``s`` is not a constant,
  so gamma and beta keep training (gamma through the folded weight, straight through its
  rounding, and the folded bias). The frozen state is a persistent buffer (``bn_frozen``).

``find_conv_bn_pairs`` finds, with torch.fx, each plain ``nn.Conv2d`` whose output goes only
into an ``nn.BatchNorm2d`` (with affine parameters and running statistics).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from netshrink.quant.layers import QuantConv2d
from netshrink.quant.quantizers import ActQuantizer, WeightQuantizer
from netshrink.quant.structure import StructureError, trace


class QuantConvBn2d(QuantConv2d):
    """A ``QuantConv2d`` that owns the BatchNorm after it (``self.bn``) and quantizes the
    BN-folded weight."""

    @classmethod
    def from_conv_bn(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, weight_quant: WeightQuantizer,
                     input_quant: ActQuantizer | None) -> QuantConvBn2d:
        new = cls.from_float(conv, weight_quant, input_quant)
        new.bn = bn
        new.register_buffer("bn_frozen", torch.tensor(False, device=conv.weight.device))
        new._bn_frozen = False  # mirrors the buffer: no device sync on every forward
        return new

    @property
    def is_bn_frozen(self) -> bool:
        """True after ``freeze_bn_stats()``: training forwards use the running statistics."""
        return self._bn_frozen

    def freeze_bn_stats(self) -> None:
        """From now on compute with the BatchNorm's running statistics, in training too, and
        stop updating them (the folded eval formula; gamma and beta still train)."""
        self._bn_frozen = True
        self.bn_frozen.fill_(True)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # files written before the flag existed hold no ``bn_frozen``: they were not frozen
        state_dict.setdefault(prefix + "bn_frozen", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._bn_frozen = bool(self.bn_frozen)

    def _bn_scale(self) -> torch.Tensor:
        """``gamma / running_std``, a constant for autograd: under the straight-through
        estimator its two uses (scaling the weight, dividing the output) cancel exactly, so
        gamma's gradient is the one BatchNorm gives it, and the backward pass skips two
        reductions over the output."""
        bn = self.bn
        return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()

    def folded_weight(self) -> torch.Tensor:
        self.constrain_latent()
        return self.weight * self._bn_scale().view(-1, 1, 1, 1)

    def folded_bias(self) -> torch.Tensor:
        bias = self.bias if self.bias is not None else torch.zeros_like(self.bn.running_mean)
        return (bias - self.bn.running_mean) * self._bn_scale() + self.bn.bias

    def quantized_weight(self) -> torch.Tensor:
        w = self.folded_weight()
        if not torch.is_grad_enabled():
            w = w.detach()
        return self._from_out_major(self.weight_quant(self._out_major(w)))

    def _frozen_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The eval formula with a live ``s = gamma / running_std`` (same values, bit for bit;
        gamma and beta get gradients)."""
        bn = self.bn
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.constrain_latent()
        w = self._from_out_major(self.weight_quant(self._out_major(
            self.weight * s.view(-1, 1, 1, 1))))
        bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        bias = self._integer_bias((bias - bn.running_mean) * s + bn.bias,
                                  lambda: self.weight * s.view(-1, 1, 1, 1))
        return self._conv_forward(x, w, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantized_input(x)
        if self._bn_frozen and self.training and torch.is_grad_enabled():
            return self._frozen_forward(x)
        w = self.quantized_weight()
        if not self.training or self._bn_frozen:
            return self._conv_forward(x, w, self._integer_bias(self.folded_bias(),
                                                               self.folded_weight))
        y = self._conv_forward(x, w, None) / self._bn_scale().view(-1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(-1, 1, 1)
        return self.bn(y)

    @torch.no_grad()
    def fold_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold ``y * scale + shift`` into the owned BatchNorm's affine parameters."""
        n = self.out_channels
        if tuple(scale.shape) != (n,) or tuple(shift.shape) != (n,):
            raise ValueError(f"fold_affine: scale and shift must have shape ({n},)")
        self.bn.weight.mul_(scale.to(self.bn.weight))
        self.bn.bias.mul_(scale.to(self.bn.bias)).add_(shift.to(self.bn.bias))

    def _latent_weight(self) -> torch.Tensor:
        return self.folded_weight().detach()

    def _epilogue(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The eval formula: no output scale, the folded bias (on the int32 grid for int8
        affine weights and inputs, as the forward adds it)."""
        return None, self._integer_bias(self.folded_bias().detach(),
                                        self.folded_weight).clone()

    def freeze_weight(self) -> None:
        raise NotImplementedError("save_packed / load_packed give the frozen (deployed) form of "
                                  "a QuantConvBn2d: a QuantConv2d with the folded bias")

    def deploy_state(self) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        rest = {"bias": self.folded_bias().detach()}
        rest.update({f"input_quant.{k}": v for k, v in
                     (self.input_quant.state_dict().items() if self.input_quant else [])})
        return self.folded_weight().detach(), rest

    def deploy_args(self) -> dict[str, Any]:
        return {**super().deploy_args(), "bias": True}

    @property
    def deploy_type(self) -> type[nn.Module]:
        return QuantConv2d


def find_conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """``{conv name: bn name}`` for every plain Conv2d feeding only a BatchNorm2d that has
    affine parameters and running statistics. Untraceable models give ``{}`` (and a warning):
    their convs are quantized without folding."""
    try:
        graph = trace(model)
    except StructureError as err:
        warnings.warn(f"BatchNorm folding skipped: {err}", stacklevel=3)
        return {}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or type(model.get_submodule(node.target)) is not nn.Conv2d:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn = model.get_submodule(users[0].target)
        conv = model.get_submodule(node.target)
        if (type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
                and bn.num_features == conv.out_channels
                and calls[node.target] == 1 and calls[users[0].target] == 1):
            pairs[node.target] = users[0].target
    return pairs
