"""int8 affine QAT late-training freezes: BatchNorm statistics and range observers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import stage_from_description
from netshrink.quant import (
    AffineAct,
    AffineWeight,
    QuantConfig,
    QuantConvBn2d,
    QuantizeStage,
    freeze_bn_stats_,
    freeze_observers_,
    load_packed,
    quantize_,
    quantized_layers,
    save_packed,
)

G = torch.Generator().manual_seed(0)
X = torch.randn(8, 3, 8, 8, generator=G)
X2 = torch.randn(8, 3, 8, 8, generator=G) * 3 + 1
INT8 = QuantConfig(w=8, a=8, scheme="int8_affine")


def _conv_bn() -> QuantConvBn2d:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, bias=True), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
    return QuantConvBn2d.from_conv_bn(conv, bn, AffineWeight(), AffineAct(observer="minmax"))


def _bn_state(layer: QuantConvBn2d) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.bn.state_dict().items()}


def test_config_fields_validated():
    cfg = QuantConfig(w=8, a=8, scheme="int8_affine", freeze_bn_after=3, freeze_observers_after=0)
    assert (cfg.freeze_bn_after, cfg.freeze_observers_after) == (3, 0)
    assert QuantConfig(w=8, a=8).freeze_bn_after is None
    for field in ("freeze_bn_after", "freeze_observers_after"):
        with pytest.raises(ValueError, match=f"{field}=-1 must be at least 0"):
            QuantConfig(w=8, a=8, scheme="int8_affine", **{field: -1})
        with pytest.raises(ValueError, match=f"{field}=2.5 must be an integer"):
            QuantConfig(w=8, a=8, scheme="int8_affine", **{field: 2.5})
        with pytest.raises(ValueError, match=f"{field}=True must be an integer"):
            QuantConfig(w=8, a=8, scheme="int8_affine", **{field: True})
        with pytest.raises(ValueError, match=f"{field}=2 needs scheme='int8_affine'.*"
                                             "scheme='dorefa'; use None"):
            QuantConfig(w=8, a=8, **{field: 2})


def test_frozen_bn_uses_running_statistics_and_keeps_them():
    layer = _conv_bn().train()
    layer(X)  # the observer sees data; BN statistics move (not frozen yet)
    before = _bn_state(layer)
    layer(X2)
    assert not torch.equal(layer.bn.running_mean, before["running_mean"])
    layer.input_quant.freeze()  # a fixed input range, so train and eval see the same x_q
    assert not layer.is_bn_frozen
    layer.freeze_bn_stats()
    assert layer.is_bn_frozen and layer.bn_frozen.item()
    before = _bn_state(layer)
    y_train = layer.train()(X2)
    for k, v in _bn_state(layer).items():  # mean, var and num_batches_tracked all unchanged
        assert torch.equal(v, before[k]), k
    y_eval = layer.eval()(X2)
    assert torch.equal(y_train, y_eval)  # bit for bit the deployed (folded) formula
    with torch.no_grad():
        y_nograd = layer.train()(X2)
    assert torch.equal(y_nograd, y_eval)


def test_frozen_bn_still_trains_gamma_beta_and_weight():
    layer = _conv_bn().train()
    layer(X)
    layer.input_quant.freeze()
    layer.freeze_bn_stats()
    layer(X2).square().mean().backward()
    for p in (layer.weight, layer.bias, layer.bn.weight, layer.bn.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # beta's gradient is exactly the upstream sum per channel (bias added once per position)
    layer.zero_grad()
    y = layer(X2)
    y.backward(torch.ones_like(y))
    assert torch.allclose(layer.bn.bias.grad, torch.full((6,), float(y[:, 0].numel())))


def test_freeze_observers_keeps_range_and_scale():
    model = quantize_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.Flatten(), nn.Linear(64, 2)),
                     QuantConfig(w=8, a=8, scheme="int8_affine", first="same", last="same"))
    model.train()(X)
    acts = [m.input_quant for _, m in quantized_layers(model)]
    assert freeze_observers_(model) == 3
    before = [(a.observer.min_val.clone(), a.observer.max_val.clone(), *a.params())
              for a in acts]
    model(X2 * 5)
    for a, (lo, hi, scale, zp) in zip(acts, before, strict=True):
        assert torch.equal(a.observer.min_val, lo) and torch.equal(a.observer.max_val, hi)
        s, z = a.params()
        assert torch.equal(s, scale) and torch.equal(z, zp)
        assert a.frozen.item() and not a.observe_in_training
    acts[0].unfreeze()
    model(X2 * 5)
    assert not torch.equal(acts[0].observer.max_val, before[0][1])


def test_helpers_count_and_ignore_other_layers(make_small_cnn):
    model = quantize_(make_small_cnn(), INT8)
    assert freeze_bn_stats_(model) == 3  # the folded pairs whose conv is quantized
    assert freeze_bn_stats_(model) == 3  # idempotent
    plain = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)
             and not any(m is c.bn for c in model.modules() if isinstance(c, QuantConvBn2d))]
    assert plain and all(m.training for m in plain)  # unfolded BatchNorms are left alone
    dorefa = quantize_(make_small_cnn(), QuantConfig(w=4, a=4))
    assert freeze_bn_stats_(dorefa) == 0 and freeze_observers_(dorefa) == 0


def _is_frozen(model: nn.Module) -> tuple[bool, bool]:
    convs = [m for m in model.modules() if isinstance(m, QuantConvBn2d)]
    acts = [m for m in model.modules() if isinstance(m, AffineAct)]
    return all(c.is_bn_frozen for c in convs), all(not a.observe_in_training for a in acts)


def test_stage_after_epoch_applies_the_freezes(make_small_cnn):
    cfg = QuantConfig(w=8, a=8, scheme="int8_affine", freeze_bn_after=2, freeze_observers_after=1)
    stage = QuantizeStage(cfg)
    model = stage.apply(make_small_cnn())
    assert _is_frozen(model) == (False, False)
    model.train()(X)
    stage.after_epoch(model, 0, 5)  # one epoch of QAT done
    assert _is_frozen(model) == (False, True)
    stage.after_epoch(model, 1, 5)
    assert _is_frozen(model) == (True, True)
    stage.after_epoch(model, 2, 5)  # idempotent
    assert _is_frozen(model) == (True, True)
    from_start = quantize_(make_small_cnn(), QuantConfig(w=8, a=8, scheme="int8_affine",
                                                        freeze_bn_after=0))
    assert _is_frozen(from_start) == (True, False)
    never = QuantizeStage(INT8)
    model = never.apply(make_small_cnn())
    for epoch in range(3):
        never.after_epoch(model, epoch, 3)
    assert _is_frozen(model) == (False, False)


def test_frozen_state_survives_state_dict_and_packing(tmp_path, make_small_cnn):
    cfg = QuantConfig(w=8, a=8, scheme="int8_affine", freeze_bn_after=1, freeze_observers_after=1)
    stage = QuantizeStage(cfg)
    model = stage.apply(make_small_cnn(0))
    model.train()(X)
    stage.after_epoch(model, 0, 2)
    state = model.state_dict()
    assert any(k.endswith("bn_frozen") for k in state) and any(k.endswith(".frozen")
                                                               for k in state)
    fresh = stage_from_description(stage.describe()).rebuild(make_small_cnn(1))
    assert _is_frozen(fresh) == (False, False)
    fresh.load_state_dict(state, strict=True)
    assert _is_frozen(fresh) == (True, True)  # a resumed run stays frozen
    conv = next(m for m in fresh.modules() if isinstance(m, QuantConvBn2d))
    before = conv.bn.running_mean.clone()
    fresh.train()(X2)
    assert torch.equal(conv.bn.running_mean, before)
    # files written before the flags existed load as not frozen
    old = {k: v for k, v in state.items() if not k.endswith("frozen")}
    again = stage_from_description(stage.describe()).rebuild(make_small_cnn(1))
    again.load_state_dict(old, strict=True)
    assert _is_frozen(again) == (False, False)
    model.eval()
    loaded = load_packed(save_packed(model, tmp_path / "f.safetensors"))
    assert torch.equal(loaded(X), model(X))


def test_frozen_qat_model_trains(make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w=8, a=8, scheme="int8_affine"))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for step in range(20):
        if step == 5:
            freeze_observers_(model)
            freeze_bn_stats_(model)
        loss = F.cross_entropy(model.train()(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[5], losses
