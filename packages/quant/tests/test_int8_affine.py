"""Affine int8: weight/activation quantizers, observers, BN folded into the conv, freezing."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.quant import (
    AffineAct,
    AffineWeight,
    MinMaxObserver,
    MovingAverageObserver,
    PercentileObserver,
    QuantConfig,
    QuantConv2d,
    QuantConvBn2d,
    find_conv_bn_pairs,
    freeze_observers_,
    list_observers,
    load_packed,
    quantize_,
    quantized_layers,
    save_packed,
)


def test_symmetric_per_channel_weights_hand_computed():
    w = torch.tensor([[0.5, -1.27, 0.0, 0.63], [2.54, 1.0, -0.5, 0.0]])
    q = AffineWeight(8, per_channel=True, symmetric=True)
    codes, params = q.encode(w)
    assert torch.allclose(params["scale"], torch.tensor([0.01, 0.02]))
    assert params["zero_point"].tolist() == [128.0, 128.0]
    assert codes.tolist() == [[178, 1, 128, 191], [255, 178, 103, 128]]
    assert torch.allclose(q(w), w, atol=1e-6)  # these values sit exactly on the grid
    assert torch.equal(q(w), q.decode(codes, params))
    r = torch.randn(32, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q(-r), -q(r))  # symmetric
    assert torch.unique(q.encode(r)[0][0]).numel() <= 255 and q(r)[0].abs().max() == \
        r[0].abs().max()


def test_asymmetric_per_tensor_weights_hand_computed():
    w = torch.tensor([[-1.0, 0.0, 2.0, 0.6]])
    q = AffineWeight(8, per_channel=False, symmetric=False)
    codes, params = q.encode(w)
    assert torch.allclose(params["scale"], torch.tensor([3.0 / 255]))
    assert params["zero_point"].tolist() == [85.0]
    assert codes.tolist() == [[0, 85, 255, 136]]
    assert q(w)[0, 1].item() == 0.0  # zero is exact
    assert torch.equal(q(w), q.decode(codes, params))


def test_observers_hand_computed():
    assert list_observers() == ["minmax", "moving_average", "percentile"]
    mm = MinMaxObserver()
    for batch in ([-1.0, 0.0, 3.0], [-2.0, 1.0]):
        mm.update(torch.tensor(batch))
    assert (mm.min_val.item(), mm.max_val.item()) == (-2.0, 3.0)
    ema = MovingAverageObserver(momentum=0.5)
    for batch in ([-1.0, 3.0], [-3.0, 1.0]):
        ema.update(torch.tensor(batch))
    assert (ema.min_val.item(), ema.max_val.item()) == (-2.0, 2.0)
    pct = PercentileObserver(percentile=90.0)
    for shift in (0.0, 10.0):
        pct.update(torch.arange(101.0) + shift)
    assert (pct.min_val.item(), pct.max_val.item()) == pytest.approx((15.0, 95.0))
    with pytest.raises(ValueError, match="momentum=0"):
        MovingAverageObserver(momentum=0.0)


def test_percentile_observer_samples_large_batches(monkeypatch):
    import netshrink.quant.observers as observers

    monkeypatch.setattr(observers, "PERCENTILE_SAMPLE", 1000)
    pct = PercentileObserver(percentile=90.0)
    pct.update(torch.arange(100001.0))  # strided sample of ~1000 values spanning the range
    assert pct.min_val.item() == pytest.approx(10000, rel=0.01)
    assert pct.max_val.item() == pytest.approx(90000, rel=0.01)


@pytest.mark.parametrize(("estimator", "expected"), [
    ("ste", [1.0, 1, 1, 1]), ("saturate_ste", [0.0, 1, 1, 0])])
def test_affine_weight_and_activation_estimators(estimator, expected):
    q = AffineAct(8, observer="minmax", estimator=estimator).train()
    q(torch.tensor([-2.0, 3.0]))
    q.freeze()
    x = torch.tensor([-3.0, 0.0, 2.9, 4.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == expected
    w = torch.randn(4, 9, requires_grad=True)
    AffineWeight(estimator=estimator)(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # weights are never clipped


def test_activation_quantizer_range_freezing_and_gradient():
    q = AffineAct(8, observer="minmax").train()
    x0 = torch.tensor([-3.0, 7.0])
    assert torch.equal(AffineAct(8).eval()(x0), x0)  # no range yet: unchanged
    q(torch.tensor([-2.0, 0.0, 3.0]))
    scale, zp = q.params()
    assert scale.item() == pytest.approx(5.0 / 255) and zp.item() == 102.0
    freeze_observers_(nn.Sequential(q))
    x = torch.tensor([-3.0, 0.0, 2.9, 4.0], requires_grad=True)
    y = q(x)
    assert (q.observer.min_val.item(), q.observer.max_val.item()) == (-2.0, 3.0)  # frozen
    assert y[0].item() == pytest.approx(-2.0, abs=1e-6) and y[-1].item() == pytest.approx(3.0)
    assert y[1].item() == 0.0
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # saturate_ste: zero where clipped
    sym = AffineAct(8, symmetric=True, observer="minmax").train()
    sym(torch.tensor([-1.0, 2.54]))
    assert sym.params()[0].item() == pytest.approx(0.02) and sym.params()[1].item() == 128.0


def test_conv_bn_pairs_found_and_folded(make_small_cnn):
    model = make_small_cnn()
    assert find_conv_bn_pairs(model) == {"0": "1", "3": "4", "7": "8", "13": "14"}
    quantize_(model, QuantConfig(w=8, a=8, scheme="int8_affine"))
    assert isinstance(model[1], nn.BatchNorm2d)  # the first conv stays float
    assert isinstance(model[3], QuantConvBn2d) and isinstance(model[4], nn.Identity)
    assert type(model[10]).__name__ == "QuantConvTranspose2d"
    assert isinstance(model[11], nn.BatchNorm2d)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the conv output has a second user: no folding


def test_conv_with_two_users_or_untraceable_model_is_not_folded():
    assert find_conv_bn_pairs(_Residual()) == {}

    class Branchy(_Residual):
        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_conv_bn_pairs(Branchy()) == {}
    assert "folding skipped" in str(caught[0].message)


def test_conv_bn_training_and_eval_math():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, bias=True), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
    layer = QuantConvBn2d.from_conv_bn(conv, bn, AffineWeight(), AffineAct(observer="minmax"))
    x = torch.randn(8, 3, 6, 6)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w_fold = conv.weight * s.view(-1, 1, 1, 1)
    # training: BN over the batch statistics of conv(x_q, q(w_fold)) / s + b
    layer.train()
    ref_bn = nn.BatchNorm2d(6).train()
    ref_bn.load_state_dict(bn.state_dict())
    y = layer(x)
    xq = layer.input_quant(x)
    wq = layer.weight_quant(w_fold.view(6, -1)).view_as(w_fold)
    expected = ref_bn(F.conv2d(xq, wq) / s.view(-1, 1, 1) + conv.bias.view(-1, 1, 1))
    assert torch.allclose(y, expected, atol=1e-5)
    assert torch.equal(bn.running_mean, ref_bn.running_mean)  # statistics updated
    # eval: a plain conv with the folded weight and the folded bias on the int32 grid of
    # integer kernels (step s_in * s_w per channel), close to float conv + BN
    layer.eval()
    reference = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)).eval()
    reference.load_state_dict(nn.Sequential(conv, bn).state_dict())
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w_fold = conv.weight * s.view(-1, 1, 1, 1)
    folded_bias = (conv.bias - bn.running_mean) * s + bn.bias
    wq = layer.weight_quant(w_fold.view(6, -1)).view_as(w_fold)
    step = layer.input_quant.params()[0] * (w_fold.detach().view(6, -1).abs().amax(1) / 127)
    int_bias = torch.round(folded_bias / step) * step
    assert not torch.equal(int_bias, folded_bias)
    assert torch.equal(layer(x), F.conv2d(layer.input_quant(x), wq, int_bias))
    err = (layer(x) - reference(x)).abs().max() / reference(x).abs().max()
    assert err < 0.02


def test_int8_qat_trains_packs_and_deploys_as_plain_convs(tmp_path, make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w=8, a=8, scheme="int8_affine"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for step in range(20):
        if step == 15:
            assert freeze_observers_(model) == 5
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    model.eval()
    loaded = load_packed(save_packed(model, tmp_path / "int8.safetensors"))
    assert torch.equal(loaded(x), model(x))
    deployed = dict(quantized_layers(loaded))
    assert type(deployed["3"]) is QuantConv2d and deployed["3"].bias is not None
    assert deployed["3"].weight_quant.codes.dtype == torch.uint8


def test_int8_config_rules():
    with pytest.raises(ValueError, match="scheme='int8_affine' needs w=8 and a=8"):
        QuantConfig(w=4, a=8, scheme="int8_affine")
    with pytest.raises(ValueError, match="scheme='int4'.*'dorefa', 'int8_affine'"):
        QuantConfig(w=8, a=8, scheme="int4")
