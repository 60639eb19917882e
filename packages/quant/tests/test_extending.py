"""Extension points of netshrink.quant: a user-registered weight quantizer with its scheme, a
k-bit activation quantizer and a gradient estimator (the snippets of docs/extending.md)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.quant import (
    ESTIMATORS,
    WEIGHT_QUANTIZERS,
    QuantConfig,
    load_packed,
    quantize_,
    quantized_layers,
    save_packed,
)
from netshrink.quant.estimators import quantize_with_estimator
from netshrink.quant.quantizers import (
    KBIT_ACT_QUANTIZERS,
    QUANT_SCHEMES,
    DoReFaAct,
    DoReFaScheme,
    WeightQuantizer,
    register_kbit_act_quantizer,
    register_scheme,
)


# -- docs/extending.md, "A weight quantizer" ------------------------------------------------
class MaxAbsWeight(WeightQuantizer):
    """Symmetric k-bit weights scaled by each output channel's largest magnitude:
    ``round(w / s * n) / n * s`` with ``n = 2**(k-1) - 1``; codes ``0 .. 2n``."""

    kind = "test_maxabs"

    def __init__(self, bits: int = 4, estimator: str = "ste") -> None:
        super().__init__()
        self.bits, self.num_codes, self.estimator = bits, 2 ** bits, estimator

    @property
    def _n(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @staticmethod
    def _scale(w2d: torch.Tensor) -> torch.Tensor:
        return w2d.detach().abs().amax(1, keepdim=True).clamp_min(1e-12)

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        n, s = self._n, self._scale(w2d)
        q = quantize_with_estimator(w2d / s, lambda v: torch.round(v * n), -1.0, 1.0,
                                    self.estimator, slope=float(n))
        return q / n * s

    @torch.no_grad()
    def encode(self, w2d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self._scale(w2d)
        return (torch.round(w2d / s * self._n) + self._n).to(torch.uint8), {"scale": s}

    def decode(self, codes: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return (codes.to(torch.float32) - self._n) / self._n * params["scale"]

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "estimator": self.estimator}


class MaxAbsScheme(DoReFaScheme):
    """k-bit weights by MaxAbsWeight; everything else as the built-in "dorefa" scheme."""

    def weight(self, precision, config, shape):
        if precision in (8, 4, 3, 2):
            return MaxAbsWeight(int(precision), estimator=config.w_estimator)
        return super().weight(precision, config, shape)
# -- end of the snippet ----------------------------------------------------------------------


@pytest.fixture
def maxabs():
    """Register the quantizer and its scheme for one test, then remove them again."""
    WEIGHT_QUANTIZERS.register("test_maxabs")(MaxAbsWeight)
    register_scheme("test_maxabs")(MaxAbsScheme)
    try:
        yield
    finally:
        QUANT_SCHEMES.unregister("test_maxabs")
        WEIGHT_QUANTIZERS.unregister("test_maxabs")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_unregistered_scheme_is_rejected_with_the_registered_names():
    with pytest.raises(ValueError, match="scheme='test_maxabs'.*'dorefa', 'int8_affine'"):
        QuantConfig(w=4, a=4, scheme="test_maxabs")


def test_registered_quantizer_is_used_and_trains(maxabs):
    config = QuantConfig(w=4, a=4, first="same", last="same", scheme="test_maxabs")
    model = quantize_(_cnn(), config)
    layers = quantized_layers(model)
    assert len(layers) == 3
    assert all(isinstance(m.weight_quant, MaxAbsWeight) for _, m in layers)
    assert all(isinstance(m.input_quant, DoReFaAct) for _, m in layers)  # the built-in acts
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = x.mean((2, 3)).argmax(1)  # a learnable target: the channel with the largest mean
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            for _, m in layers:
                assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses  # measured: 1.334 -> 1.063


def test_registered_quantizer_packs_and_loads_bit_identically(maxabs, tmp_path):
    model = quantize_(_cnn(), QuantConfig(w=4, a=4, first="same", scheme="test_maxabs"))
    model.train()
    model(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2)))
    model.eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    path = save_packed(model, tmp_path / "m.safetensors")
    loaded = load_packed(path)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert torch.equal(got, expected)
    frozen = [m.weight_quant.quantizer for _, m in quantized_layers(loaded)
              if m.weight_quant is not None]
    assert frozen and all(isinstance(q, MaxAbsWeight) for q in frozen)
    assert save_packed(loaded, tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_registered_kbit_act_quantizer_and_estimator():
    calls = []

    @ESTIMATORS.register("test_half_ste")
    def half_ste(grad, x, lo, hi):
        """docs/extending.md, "A gradient estimator": half the straight-through gradient."""
        calls.append(1)
        return grad * 0.5

    @register_kbit_act_quantizer("test_clip2")
    def clip2(bits: int, config: QuantConfig) -> DoReFaAct:
        return DoReFaAct(bits, estimator=config.a_estimator, clip=2.0 * config.a_clip)

    try:
        config = QuantConfig(w=4, a=4, first="same", a_quantizer="test_clip2",
                             a_estimator="test_half_ste")
        model = quantize_(_cnn(), config)
        (_, first), *_ = quantized_layers(model)
        assert first.input_quant.clip == 2.0
        x = torch.rand(2, 3, 8, 8, requires_grad=True)
        model(x).sum().backward()
        assert calls
    finally:
        KBIT_ACT_QUANTIZERS.unregister("test_clip2")
        ESTIMATORS.unregister("test_half_ste")
    with pytest.raises(ValueError, match="a_quantizer='test_clip2'"):
        QuantConfig(w=4, a=4, a_quantizer="test_clip2")
    with pytest.raises(ValueError, match="a_estimator='test_half_ste'"):
        QuantConfig(w=4, a=4, a_estimator="test_half_ste")
