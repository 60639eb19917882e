"""Every estimator's gradient on known inputs, through every quantizer family."""

import pytest
import torch

from netshrink.quant import (
    BinaryAct,
    BinaryWeight,
    DoReFaAct,
    DoReFaWeight,
    HalfAct,
    TernaryAct,
    TernaryWeight,
    list_estimators,
)


def _grad(fn, x):
    x = x.clone().requires_grad_(True)
    fn(x).sum().backward()
    return x.grad


SIGN_X = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
SIGN_GRADS = {
    "ste": [1.0, 1, 1, 1, 1, 1, 1],
    "saturate_ste": [0.0, 1, 1, 1, 1, 1, 0],
    "soft_ste": [0.0, 0, 1, 2, 1, 0, 0],  # 2 * max(0, 1 - |x|): ApproxSign's derivative
}


def test_registered_estimators():
    assert list_estimators() == ["saturate_ste", "soft_ste", "ste"]


@pytest.mark.parametrize("estimator", sorted(SIGN_GRADS))
@pytest.mark.parametrize("act", [BinaryAct, TernaryAct])
def test_sign_like_activation_gradients(act, estimator):
    assert _grad(act(estimator), SIGN_X).tolist() == SIGN_GRADS[estimator]


@pytest.mark.parametrize(("estimator", "expected"), [
    ("ste", [1.0, 1, 1, 1, 1, 1]),
    ("saturate_ste", [0.0, 1, 1, 1, 1, 0]),
    ("soft_ste", [0.0, 0, 1, 2, 0, 0]),  # tent over [0, 1], peak 2 at 0.5
])
def test_kbit_activation_gradients(estimator, expected):
    x = torch.tensor([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
    assert _grad(DoReFaAct(2, estimator), x).tolist() == expected


def test_kbit_activation_gradient_follows_the_clip():
    x = torch.tensor([-0.1, 0.5, 3.0, 6.0, 6.5])
    assert _grad(DoReFaAct(4, "saturate_ste", clip=6.0), x).tolist() == [0.0, 1, 1, 1, 0]
    soft = _grad(DoReFaAct(4, "soft_ste", clip=6.0), x)
    assert torch.allclose(soft, torch.tensor([0.0, 1.0 / 3.0, 2, 0, 0]))


def test_fp16_gradient_is_identity():
    x = torch.tensor([1e6, 0.3, -7.0])
    assert _grad(HalfAct(), x).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("estimator", sorted(SIGN_GRADS))
def test_binary_weight_gradients(estimator):
    w = SIGN_X.view(1, -1)
    assert _grad(BinaryWeight(estimator, scale=False), w).view(-1).tolist() == \
        SIGN_GRADS[estimator]
    # with the scale: the scale is a constant, so the gradient is scale * estimator
    scale = w.abs().mean().item()
    got = _grad(BinaryWeight(estimator, scale=True), w).view(-1)
    assert torch.allclose(got, torch.tensor(SIGN_GRADS[estimator]) * scale)


@pytest.mark.parametrize("estimator", sorted(SIGN_GRADS))
def test_ternary_weight_gradients(estimator):
    w = SIGN_X.view(1, -1)
    assert _grad(TernaryWeight(estimator, scale=False), w).view(-1).tolist() == \
        SIGN_GRADS[estimator]
    absw = w.abs()
    scale = absw[absw > 0.7 * absw.mean()].mean()
    got = _grad(TernaryWeight(estimator, scale=True), w).view(-1)
    assert torch.allclose(got, torch.tensor(SIGN_GRADS[estimator]) * scale)


@pytest.mark.parametrize("estimator", sorted(SIGN_GRADS))
def test_dorefa_weight_gradient_through_tanh_normalisation(estimator):
    w = torch.tensor([[0.1, 0.5, -0.5, 2.0, -1.0, -0.1]])
    got = _grad(DoReFaWeight(4, estimator), w)

    # Reference: the same normalisation, rounding replaced by the estimator's line/tent.
    def surrogate(v):
        t = torch.tanh(v)
        x = t / (2 * t.abs().max()) + 0.5
        if estimator == "soft_ste":
            tent = (2 * (1 - (2 * x.detach() - 1).abs())).clamp(min=0)
            x = x.detach() + (x - x.detach()) * tent
        return 2 * x - 1

    assert torch.allclose(got, _grad(surrogate, w), atol=1e-6)
    if estimator != "soft_ste":  # saturation never bites: x is always inside [0, 1]
        assert torch.allclose(got, _grad(DoReFaWeight(4, "ste"), w))


def test_unknown_estimator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown estimator 'bogus'; known: saturate_ste, "
                                         "soft_ste, ste"):
        DoReFaAct(2, "bogus")(torch.zeros(3))
