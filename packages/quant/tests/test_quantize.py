"""quantize_(): which layers change and how, errors, the stage, and training on every W x A."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.core import STAGES, Stage, stage_from_description
from netshrink.quant import (
    PRECISIONS,
    BinaryAct,
    BinaryWeight,
    DoReFaAct,
    DoReFaWeight,
    HalfAct,
    HalfWeight,
    QuantConfig,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantizeStage,
    QuantLinear,
    TernaryAct,
    TernaryWeight,
    constrain_latent_weights_,
    quantizable_layers,
    quantize_,
    quantized_layers,
)


def test_layers_replaced_keep_weights_and_first_last_stay_float(make_small_cnn):
    model = make_small_cnn()
    before = {name: m.weight for name, m in quantizable_layers(model)}
    quantize_(model, QuantConfig(w=4, a=4))
    kinds = [type(m) for _, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert kinds == [nn.Conv2d, QuantConv2d, QuantConv2d, QuantConvTranspose2d, QuantConv2d,
                     QuantLinear, nn.Linear]
    for name, m in quantized_layers(model):
        assert m.weight is before[name]
        assert isinstance(m.weight_quant, DoReFaWeight) and m.weight_quant.bits == 4
        assert isinstance(m.input_quant, DoReFaAct) and m.input_quant.bits == 4


def test_first_last_policies(make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w="binary", a="binary", first="8bit",
                                                   last="8bit"))
    layers = quantized_layers(model)
    first, last = layers[0][1], layers[-1][1]
    assert isinstance(first.weight_quant, DoReFaWeight) and first.weight_quant.bits == 8
    assert first.input_quant is None  # the data stays as given
    assert isinstance(last.weight_quant, DoReFaWeight) and isinstance(last.input_quant, DoReFaAct)
    assert isinstance(layers[1][1].weight_quant, BinaryWeight)
    model = quantize_(make_small_cnn(), QuantConfig(w="ternary", a=16, first="same",
                                                   last="same"))
    layers = quantized_layers(model)
    assert len(layers) == 7
    assert all(isinstance(m.weight_quant, TernaryWeight) for _, m in layers)
    assert all(isinstance(m.input_quant, HalfAct) for _, m in layers)


@pytest.mark.parametrize(("w", "a", "wq", "aq"), [
    (32, 4, type(None), DoReFaAct), (16, 32, HalfWeight, type(None)),
    ("ternary", "ternary", TernaryWeight, TernaryAct), (3, "binary", DoReFaWeight, BinaryAct),
])
def test_precisions_map_to_quantizers(make_small_cnn, w, a, wq, aq):
    model = quantize_(make_small_cnn(), QuantConfig(w=w, a=a))
    for _, m in quantized_layers(model):
        assert isinstance(m.weight_quant, wq) and isinstance(m.input_quant, aq)


def test_float_config_changes_nothing(make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w=32, a=32))
    assert quantized_layers(model) == []


@pytest.mark.parametrize("a", ["binary", "ternary"])
def test_relu_replaced_for_sign_like_inputs(make_small_cnn, a):
    model = quantize_(make_small_cnn(), QuantConfig(w=2, a=a))
    # the ReLU before the float last Linear (module 19) stays; the five feeding signs go
    assert [i for i, m in enumerate(model) if isinstance(m, nn.ReLU)] == [19]
    assert sum(isinstance(m, nn.Identity) for m in model.modules()) == 5
    kept = quantize_(make_small_cnn(), QuantConfig(w="binary", a=2))
    assert sum(isinstance(m, nn.ReLU) for m in kept.modules()) == 6


def test_bn_momentum_and_binary_latent_weights(make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w="binary", a="binary", bn_momentum=0.01))
    assert all(m.momentum == 0.01 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for _, m in quantized_layers(model):
        w2d = m._out_major(m.weight)
        assert torch.allclose(w2d.mean(1), torch.zeros(w2d.shape[0]), atol=1e-6)
        assert w2d.abs().max() <= 1.0
    default = quantize_(make_small_cnn(), QuantConfig(w="binary", a="binary"))
    assert all(m.momentum == 0.1 for m in default.modules() if isinstance(m, nn.BatchNorm2d))


def test_constrain_latent_weights_clips_and_centres_binary_only(make_small_cnn):
    model = quantize_(make_small_cnn(), QuantConfig(w="binary", a=4, first="same"))
    first = quantized_layers(model)[0][1]
    with torch.no_grad():
        first.weight.add_(3.0)
    constrain_latent_weights_(model)
    w2d = first._out_major(first.weight)
    assert w2d.abs().max() <= 1.0 and w2d.mean(1).abs().max() < 1e-6
    ternary = quantize_(make_small_cnn(), QuantConfig(w="ternary", a=4))
    layer = quantized_layers(ternary)[0][1]
    with torch.no_grad():
        layer.weight.add_(3.0)
    constrain_latent_weights_(ternary)
    assert layer.weight.min() > 2.0  # untouched


def test_errors():
    with pytest.raises(ValueError, match="no quantizable layers.*nn.Conv2d"):
        quantize_(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), QuantConfig(w=2, a=2))
    with pytest.raises(ValueError, match="all are first/last layers kept float"):
        quantize_(nn.Sequential(nn.Linear(3, 3)), QuantConfig(w=2, a=2))
    one = quantize_(nn.Sequential(nn.Linear(3, 3)), QuantConfig(w=2, a=2, first="same",
                                                             last="same"))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(one, QuantConfig(w=2, a=2))
    with pytest.raises(TypeError, match="needs a QuantConfig"):
        quantize_(nn.Linear(2, 2), {"w": 2, "a": 2})


def test_attention_linears_are_left_alone():
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    names = [name for name, _ in quantizable_layers(model)]
    assert names == ["0", "2"]


def test_stage_describe_rebuild_and_after_step(make_small_cnn):
    cfg = QuantConfig(w="ternary", a="binary", ternary_gap=0.2, bn_momentum=0.05)
    stage = QuantizeStage(cfg)
    assert "quant.quantize" in STAGES and stage.kind == "quant.quantize"
    record = stage.describe()
    assert record["config"]["w"] == "ternary" and record["config"]["ternary_gap"] == 0.2
    again = stage_from_description(record)
    assert again.config == cfg
    trained = stage.apply(make_small_cnn(0))
    trained(torch.randn(4, 3, 8, 8)).sum().backward()  # moves the hysteresis state
    fresh = again.rebuild(make_small_cnn(1))
    fresh.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh.eval()(x), trained.eval()(x))
    binary = QuantizeStage(QuantConfig(w="binary", a=4)).apply(make_small_cnn())
    layer = quantized_layers(binary)[0][1]
    with torch.no_grad():
        layer.weight.mul_(10)
    # no after_step hook: the layer clips its changed latent weight itself, before its forward
    assert QuantizeStage.after_step is Stage.after_step
    binary(torch.randn(2, 3, 8, 8))
    assert layer.weight.abs().max() <= 1.0


def _fixed_batch(seed: int = 0, size: int = 8, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 20,
                lr: float = 3e-2) -> list[float]:
    """``steps`` Adam steps on one batch (binary latent weights constrained after each)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        constrain_latent_weights_(model)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("a", PRECISIONS)
@pytest.mark.parametrize("w", PRECISIONS)
def test_every_combination_trains(make_small_cnn, w, a):
    model = quantize_(make_small_cnn(), QuantConfig(w=w, a=a, ternary_gap=0.05))
    x, y = _fixed_batch()
    losses = train_steps(model, x, y)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses  # worst measured (W binary, A 2): 0.75
