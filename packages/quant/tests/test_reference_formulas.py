"""The speed-written quantizer code against plain reference formulas, bit for bit (the sign of
zero included): forward values, gradients for every estimator, codes, scales, the hysteresis
state; and the single-thread helper."""

import pytest
import torch
from torch import nn

from netshrink.quant import (
    BinaryAct,
    BinaryWeight,
    QuantConfig,
    TernaryWeight,
    constrain_latent_weights_,
    quantize_,
    quantized_layers,
)
from netshrink.quant.estimators import ESTIMATORS
from netshrink.quant.quantizers.binary import binary_sign


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and torch.equal(a, b)
            and bool((torch.signbit(a) == torch.signbit(b)).all()))


def _ref_sign(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v < 0, -1.0, 1.0).to(v.dtype)  # -0 and NaN give +1


def _ref_ternary(w, gap, state, scale):
    """The TWN formula as first written: codes t, scale, output t * scale."""
    absw = w.abs()
    delta = 0.7 * absw.mean(1, keepdim=True)
    if state is not None:
        nonzero = (absw > delta * (1 + gap)) | ((absw >= delta * (1 - gap)) & (state != 0))
    else:
        nonzero = absw > delta
    t = torch.where(nonzero, torch.sign(w), torch.zeros((), dtype=w.dtype))
    s = (absw * nonzero).sum(1) / nonzero.sum(1).clamp_min(1)
    return t, s, (t * s.unsqueeze(1) if scale else t)


def _weights(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, 97, generator=g) * (seed + 1) / 4
    w[torch.rand(w.shape, generator=g) < 0.1] = 0.0
    w[torch.rand(w.shape, generator=g) < 0.1] = -0.0
    w[3] = 0.0  # an all-zero output channel
    w[4] = -0.0
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_binary_sign_special_values(dtype):
    v = torch.tensor([-0.0, 0.0, float("nan"), -float("nan"), 1e-45, -1e-45, -3.0, float("inf"),
                      -float("inf"), 5e-39, -5e-39, 1.0, -1.0, 0.25, -0.25] * 3)
    v = v.to(dtype)
    expected = torch.tensor([1.0, 1, 1, 1, 1, -1, -1, 1, -1, 1, -1, 1, -1, 1, -1] * 3)
    if dtype in (torch.float16, torch.bfloat16):  # -1e-45 underflows to -0
        expected[[5, 20, 35]] = 1.0
    if dtype == torch.float16:  # so does -5e-39 (bfloat16 has float32's range)
        expected[[10, 25, 40]] = 1.0
    assert _same(binary_sign(v), expected.to(dtype))
    big = torch.randn(301, 257, dtype=torch.float64).to(dtype)
    big[::3, ::5] = -0.0
    assert _same(binary_sign(big), _ref_sign(big))
    assert _same(binary_sign(big.t()), _ref_sign(big.t()))  # strided input


@pytest.mark.parametrize("estimator", ["ste", "saturate_ste", "soft_ste"])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("gap", [0.0, 0.1])
def test_ternary_weight_matches_the_formula(estimator, scale, gap):
    for seed in range(4):
        w0 = _weights(seed)
        q = TernaryWeight(estimator=estimator, scale=scale, gap=gap, shape=tuple(w0.shape))
        q.train().init_state(w0)
        state = None if gap == 0 else _ref_ternary(w0, gap, None, scale)[0]
        if state is not None:
            assert torch.equal(q.state, state.to(torch.int8))
        for step in range(3):
            noise = torch.randn(w0.shape, generator=torch.Generator().manual_seed(step))
            w = w0 + step * 0.3 * noise
            t, s, expected = _ref_ternary(w, gap, state, scale)
            x = w.clone().requires_grad_(True)
            y = q(x)
            assert _same(y.detach(), expected)
            grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(99))
            y.backward(grad)
            ref = ESTIMATORS.get(estimator)(grad * s.unsqueeze(1) if scale else grad, w, -1.0,
                                            1.0)
            assert _same(x.grad, ref)
            codes, params = q.encode(w)
            assert torch.equal(codes, (t + 1).to(torch.uint8))
            if scale:
                assert _same(params["scale"], s)
            if state is not None:
                state = t
                assert torch.equal(q.state, t.to(torch.int8))


@pytest.mark.parametrize("estimator", ["ste", "saturate_ste", "soft_ste"])
def test_binary_weight_and_activation_match_the_formula(estimator):
    w = _weights(1) * 0.5
    x = w.clone().requires_grad_(True)
    y = BinaryWeight(estimator=estimator)(x)
    s = w.abs().mean(1, keepdim=True)
    assert _same(y.detach(), _ref_sign(w) * s)
    grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(5))
    y.backward(grad)
    assert _same(x.grad, ESTIMATORS.get(estimator)(grad * s, w, -1.0, 1.0))
    a = w.clone().requires_grad_(True)
    out = BinaryAct(estimator)(a)
    assert _same(out.detach(), _ref_sign(w))
    out.backward(grad)
    assert _same(a.grad, ESTIMATORS.get(estimator)(grad, w, -1.0, 1.0))


def test_constrain_latent_weights_matches_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 6, 3, groups=2),
                          nn.Conv2d(6, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 3))
    quantize_(model, QuantConfig(w="binary", a=4, first="same", last="same"))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5).add_(1)
    expected = {}
    for name, layer in quantized_layers(model):
        w2d = layer._out_major(layer.weight.detach())
        expected[name] = layer._from_out_major((w2d - w2d.mean(1, keepdim=True)).clamp(-1, 1))
    constrain_latent_weights_(model)
    for name, layer in quantized_layers(model):
        assert _same(layer.weight.detach(), expected[name]), name
