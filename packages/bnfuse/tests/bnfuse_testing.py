"""Test helpers: random BN statistics, and a test-only binary conv standing in for netshrink.quant
(bnfuse must not import quant; quantized layers reach it through core's protocols only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from netshrink.core import INPUT_SIGN_ATTR


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0, *, negative: float = 0.2,
                 zero: float = 0.0) -> nn.Module:
    """Non-trivial eval statistics and affine parameters in every BN: means ~ N(0, 0.5), vars
    in [0.25, 1.75], |gamma| in [0.5, 1.5] with a ``negative`` share of negative and a ``zero``
    share of zero gammas (at least one channel each when the share is > 0), betas ~ N(0, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            c = m.num_features
            mean, var = torch.randn(c, generator=g) * 0.5, torch.rand(c, generator=g) * 1.5
            if m.track_running_stats:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var + 0.25)
            sign = torch.ones(c)
            order = torch.randperm(c, generator=g)
            n_neg, n_zero = _count(negative, c), _count(zero, c)
            sign[order[:n_neg]] = -1.0
            sign[order[n_neg:n_neg + n_zero]] = 0.0
            m.weight.copy_((torch.rand(c, generator=g) + 0.5) * sign)
            m.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return model


def _count(share: float, channels: int) -> int:
    return 0 if share <= 0 else max(1, round(share * channels))


class BinaryConv2d(nn.Module):
    """A binary conv as a quantized layer would be: sign() on its input, +-1 weight codes (int8)
    times a per-output-channel scale, plus a bias. It implements core's FoldsAffine (the scale
    and bias absorb ``y * s + t``; the codes never change) and sets the input-sign marker."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, *, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        setattr(self, INPUT_SIGN_ATTR, True)
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("scale", scale.clone().float())
        self.register_buffer("bias", torch.zeros(codes.shape[0]))
        self.out_channels = codes.shape[0]
        self.stride, self.padding, self.groups = stride, padding, groups

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> BinaryConv2d:
        w = conv.weight.detach()
        codes = torch.where(w >= 0, 1, -1)
        return cls(codes, w.abs().mean(dim=(1, 2, 3)), stride=conv.stride[0],
                   padding=conv.padding[0], groups=conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(torch.sign(x), self.codes.to(x.dtype), None, self.stride, self.padding,
                     1, self.groups)
        return y * self.scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    @torch.no_grad()
    def fold_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.scale.mul_(scale)
        self.bias.mul_(scale).add_(shift)


class SignInputs:
    """Forward pre-hooks recording sign(input) of every sign-input layer, by module name."""

    def __init__(self, model: nn.Module) -> None:
        self.signs: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(name))
                         for name, m in model.named_modules()
                         if getattr(m, INPUT_SIGN_ATTR, False)]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.signs[name] = torch.sign(args[0]).detach().clone()
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
