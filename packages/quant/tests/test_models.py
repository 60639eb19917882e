"""quant on the netshrink.models zoo (skipped where netshrink-models is not installed)."""

import os

import pytest
import torch
from torch import nn

pytest.importorskip("netshrink.models")

from netshrink.models import create_model, load_model, save_model  # noqa: E402
from netshrink.quant import (  # noqa: E402
    PRECISIONS,
    QuantConfig,
    QuantizeStage,
    constrain_latent_weights_,
    load_packed,
    packed_size,
    quantize_,
    quantized_layers,
    save_packed,
)

GEN = torch.Generator().manual_seed(0)
X16 = torch.randn(16, 3, 16, 16, generator=GEN)
Y16 = torch.randint(0, 10, (16,), generator=GEN)


@pytest.mark.parametrize("a", PRECISIONS)
@pytest.mark.parametrize("w", PRECISIONS)
def test_nin_every_combination_lowers_the_loss(w, a):
    torch.manual_seed(0)
    model = quantize_(create_model("nin", width=0.125), QuantConfig(w=w, a=a))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(X16), Y16)
        opt.zero_grad()
        loss.backward()
        opt.step()
        constrain_latent_weights_(model)
        losses.append(loss.item())
    # worst case measured (W binary, A binary): 0.93; the float model: 0.2
    assert losses[-1] < 0.97 * losses[0], losses


def test_nin_int8_affine_qat_lowers_the_loss():
    torch.manual_seed(0)
    model = quantize_(create_model("nin", width=0.125),
                     QuantConfig(w=8, a=8, scheme="int8_affine"))
    assert sum(type(m).__name__ == "QuantConvBn2d" for _, m in quantized_layers(model)) == 7
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(X16), Y16)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", ["pact", "lsq"])
@pytest.mark.parametrize(("w", "a"), [(4, 4), ("ternary", 2)])
def test_nin_learned_activation_clip_trains(name, w, a):
    torch.manual_seed(0)
    model = quantize_(create_model("nin", width=0.25),
                     QuantConfig(w=w, a=a, a_quantizer=name))
    param = "alpha" if name == "pact" else "step_size"
    learned = [getattr(m.input_quant, param) for _, m in quantized_layers(model)]
    assert len(learned) == 7
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses, start = [], None
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(X16), Y16)
        if start is None:  # after LSQ's first-batch initialisation
            start = [p.item() for p in learned]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # measured: PACT 0.43 (W4A4) and 0.85 (W ternary A2); LSQ 0.11 and 0.37
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(p.item() != s for p, s in zip(learned, start, strict=True))  # all trained


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2"])
@pytest.mark.parametrize(("w", "a", "scheme"), [
    (4, 4, "dorefa"), ("ternary", "binary", "dorefa"), ("binary", "binary", "dorefa"),
    (8, 8, "int8_affine")])
def test_torchvision_forward_backward(name, w, a, scheme):
    torch.manual_seed(0)
    model = quantize_(create_model(name), QuantConfig(w=w, a=a, bn_momentum=0.01,
                                                     scheme=scheme))
    n_layers = len(quantized_layers(model))
    assert n_layers == (19 if name == "tv:resnet18" else 51)
    x = torch.randn(2, 3, 32, 32, generator=GEN)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    grads = [m.weight.grad for _, m in quantized_layers(model)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) >= n_layers - 1
    if a == "binary":  # only mobilenet's last ReLU6 stays: it feeds the float classifier
        kept = [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
        assert kept == ([] if name == "tv:resnet18" else ["features.18.2"])


def _prune_nin(model: nn.Module, keep: dict[int, int]) -> nn.Module:
    """Structured pruning by hand: keep the first ``keep[k]`` output channels of conv k (and
    its BN, and the next conv's inputs). Gives odd channel counts like a real pruner."""
    f = model.features
    with torch.no_grad():
        for k, n in keep.items():
            conv, bn, nxt = getattr(f, f"conv{k}"), getattr(f, f"bn{k}"), getattr(f, f"conv{k + 1}")
            new = nn.Conv2d(conv.in_channels, n, conv.kernel_size, padding=conv.padding,
                            bias=False)
            new.weight.copy_(conv.weight[:n])
            new_bn = nn.BatchNorm2d(n)
            for t in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, t).copy_(getattr(bn, t)[:n])
            new_next = nn.Conv2d(n, nxt.out_channels, nxt.kernel_size, padding=nxt.padding,
                                 bias=False)
            new_next.weight.copy_(nxt.weight[:, :n])
            setattr(f, f"conv{k}", new)
            setattr(f, f"bn{k}", new_bn)
            setattr(f, f"conv{k + 1}", new_next)
    return model


def test_pruned_model_quantizes_trains_and_packs(tmp_path):
    torch.manual_seed(0)
    model = _prune_nin(create_model("nin", width=0.25), {1: 37, 4: 29, 7: 41})
    quantize_(model, QuantConfig(w="ternary", a=2, ternary_gap=0.1))
    x = torch.randn(4, 3, 16, 16, generator=GEN)
    model(x).sum().backward()
    assert quantized_layers(model)[0][1].in_channels == 37
    model.eval()
    loaded = load_packed(save_packed(model, tmp_path / "pruned.safetensors"))
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(("name", "config"), [
    ("nin", QuantConfig(w="ternary", a="binary", ternary_gap=0.1)),
    ("nin_gc", QuantConfig(w="ternary", a="binary", ternary_gap=0.1)),
    ("nin", QuantConfig(w=8, a=8, scheme="int8_affine")),
    ("nin", QuantConfig(w=4, a=4, a_quantizer="pact")),
    ("nin", QuantConfig(w="ternary", a=2, a_quantizer="lsq")),
])
def test_checkpoint_round_trip_through_the_stage(tmp_path, name, config):
    torch.manual_seed(0)
    stage = QuantizeStage(config)
    order = "cbap" if config.scheme == "int8_affine" else "bacp"
    model = stage.apply(create_model(name, width=0.125, block_order=order))
    model(X16).sum().backward()
    path = save_model(tmp_path / "ckpt.safetensors", model.eval(), recipe=[stage])
    again = load_model(path)
    assert torch.equal(again(X16), model(X16))


@pytest.mark.parametrize(("name", "kwargs"), [("nin", {}), ("nin_gc", {}),
                                              ("nin", {"block_order": "bacp", "act": "hardtanh"})])
@pytest.mark.parametrize("w", [8, 2, "ternary", "binary"])
def test_zoo_packed_sizes_and_outputs(tmp_path, name, kwargs, w):
    torch.manual_seed(0)
    model = quantize_(create_model(name, **kwargs), QuantConfig(w=w, a="binary")).eval()
    path = save_packed(model, tmp_path / "m.safetensors")
    expected = packed_size(model).total
    assert abs(os.path.getsize(path) - expected) / expected < 0.02
    x = torch.randn(2, 3, 32, 32, generator=GEN)
    assert torch.equal(load_packed(path)(x), model(x))
