"""Issue 16, item 2: binary latent weights are centred and clipped by the quantized layer itself
(``_QuantLayer.constrain_latent``), so a plain training loop needs no call; the values are bit
for bit those of the old explicit ``constrain_latent_weights(model)`` after every step."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.quant import (
    QuantConfig,
    constrain_latent_weights_,
    load_packed,
    quantize_,
    quantized_layers,
    save_packed,
)
from netshrink.quant.layers import _QuantLayer
from netshrink.quant.quantizers.binary import centre_latent

G = torch.Generator().manual_seed(0)
XS = [torch.randn(6, 3, 8, 8, generator=G) for _ in range(4)]
YS = [torch.randint(0, 10, (6,), generator=G) for _ in range(4)]


def _binary(make_small_cnn, centring: str = "filter", w="binary") -> nn.Module:
    """Every layer binary (first and last too), weights scaled up so that clipping bites."""
    model = make_small_cnn(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(20)
    return quantize_(model, QuantConfig(w=w, a=4, first="same", last="same",
                                       binary_centring=centring))


@torch.no_grad()
def _old_constrain(model: nn.Module) -> None:
    """The removed ``constrain_latent_weights_``, verbatim: centre and clip, unconditionally."""
    for _, layer in quantized_layers(model):
        wq = layer.weight_quant
        if getattr(wq, "kind", "") == "binary" and layer.weight is not None:
            positions = layer.weight.shape[2:].numel()
            w2d = centre_latent(layer._out_major(layer.weight), wq.centring, positions)
            layer.weight.copy_(layer._from_out_major(w2d))


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)


def _train(model: nn.Module, opt_name: str, steps: int, *, old: bool, accumulate: int = 1,
           autocast: bool = False) -> list[torch.Tensor]:
    """``steps`` optimizer steps; ``old``: the explicit clip after each step (the old loop);
    else a plain PyTorch loop. Returns every forward's logits."""
    opt = _optimizer(opt_name, model)
    outs = []
    model.train()
    for step in range(steps):
        opt.zero_grad()
        for micro in range(accumulate):
            i = (step * accumulate + micro) % len(XS)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(XS[i])
            outs.append(out.detach().clone())
            F.cross_entropy(out.float(), YS[i]).backward()
        opt.step()
        if old:
            _old_constrain(model)
    return outs


@contextlib.contextmanager
def _auto_clip_off():
    """The layers' own clip switched off (the old behaviour)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_QuantLayer, "constrain_latent", lambda self, force=False: False)
        yield


def _old_path(make_small_cnn, centring, opt_name, steps, **kw):
    """The old behaviour: the layers' own clip off, the explicit call after every step."""
    with _auto_clip_off():
        model = _binary(make_small_cnn, centring)
        _old_constrain(model)  # what quantize did
        outs = _train(model, opt_name, steps, old=True, **kw)
        model.eval()
        outs.append(model(XS[0]).detach())
        state = {k: v.clone() for k, v in model.state_dict().items()}
    return outs, state


@pytest.mark.parametrize(("centring", "opt_name", "accumulate", "autocast"), [
    ("filter", "sgd", 1, False), ("kernel_position", "adam", 1, False),
    ("none", "adamw", 1, False), ("filter", "adam", 2, False), ("filter", "sgd", 1, True),
])
def test_a_plain_loop_trains_bit_for_bit_what_the_explicit_call_trained(
        make_small_cnn, centring, opt_name, accumulate, autocast):
    old_outs, old_state = _old_path(make_small_cnn, centring, opt_name, 5,
                                    accumulate=accumulate, autocast=autocast)
    model = _binary(make_small_cnn, centring)
    outs = _train(model, opt_name, 5, old=False, accumulate=accumulate, autocast=autocast)
    model.eval()
    outs.append(model(XS[0]).detach())
    assert len(outs) == len(old_outs)
    for step, (a, b) in enumerate(zip(outs, old_outs, strict=True)):
        assert torch.equal(a, b), f"forward {step} differs"
    state = model.state_dict()
    assert state.keys() == old_state.keys()
    for key, value in old_state.items():
        assert torch.equal(state[key], value), key


def test_a_plain_loop_keeps_latent_weights_centred_and_clipped(make_small_cnn):
    model = _binary(make_small_cnn)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)  # big steps push weights far out
    layers = [layer for _, layer in quantized_layers(model)]
    for x, y in zip(XS, YS, strict=True):
        out = model(x)  # each layer clips its weight (changed by the last step) first
        for layer in layers:
            w2d = layer._out_major(layer.weight.detach())
            assert w2d.abs().max() <= 1.0
        opt.zero_grad()
        F.cross_entropy(out, y).backward()
        opt.step()
    assert max(float(layer.weight.detach().abs().max()) for layer in layers) > 1.0  # pushed
    state = model.state_dict()  # a checkpoint holds the clipped weights
    for name, _ in quantized_layers(model):
        assert state[f"{name}.weight"].abs().max() <= 1.0
    assert constrain_latent_weights_(model) == 0  # nothing left to do: idempotent


def test_packing_eval_and_integer_form_see_the_clipped_weight(make_small_cnn, tmp_path):
    model = _binary(make_small_cnn)
    reference = copy.deepcopy(model)
    for m in (model, reference):
        opt = torch.optim.SGD(m.parameters(), lr=5.0)
        F.cross_entropy(m(XS[0]), YS[0]).backward()
        opt.step()
    with _auto_clip_off():
        _old_constrain(reference)
        expected = reference.eval()(XS[1])
    # packed straight after the step, before any forward: the file holds the clipped weight
    path = save_packed(model.eval(), tmp_path / "m.safetensors")
    packed = load_packed(path)
    assert torch.equal(packed(XS[1]), expected)
    assert torch.equal(model(XS[1]), expected)
    layer, ref_layer = quantized_layers(model)[1][1], quantized_layers(reference)[1][1]
    with torch.no_grad():
        layer.weight.add_(3.0)
        ref_layer.weight.add_(3.0)
    with _auto_clip_off():
        _old_constrain(reference)
        ref_codes = ref_layer.integer_form().codes
    assert torch.equal(layer.integer_form().codes, ref_codes)
    assert torch.equal(layer.weight, ref_layer.weight)


def test_loading_or_copying_takes_the_weights_as_they_are(make_small_cnn):
    """A resumed run continues from the saved weights exactly: no second clip (centring then
    clipping is not idempotent in floating point)."""
    model = _binary(make_small_cnn)
    _train(model, "adam", 2, old=False)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = _binary(make_small_cnn)
    fresh.load_state_dict(saved)
    clone = copy.deepcopy(fresh)
    fresh(XS[0])
    clone(XS[0])
    for name, layer in quantized_layers(fresh):
        assert torch.equal(layer.weight.detach(), saved[f"{name}.weight"]), name
        assert torch.equal(clone.get_submodule(name).weight.detach(), saved[f"{name}.weight"])
    with torch.no_grad():  # a change through .data is invisible to the version counter
        layer.weight.data.mul_(5.0)
    assert constrain_latent_weights_(fresh) == 0
    assert constrain_latent_weights_(fresh, force=True) == len(quantized_layers(fresh))
    assert layer.weight.abs().max() <= 1.0


def test_ternary_and_k_bit_latent_weights_are_left_alone(make_small_cnn):
    for w in ("ternary", 4):
        model = _binary(make_small_cnn, w=w)
        before = {n: layer.weight.detach().clone() for n, layer in quantized_layers(model)}
        assert max(float(b.abs().max()) for b in before.values()) > 1.0
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        F.cross_entropy(model(XS[0]), YS[0]).backward()
        opt.step()  # bumps every version without changing a value
        model(XS[1])
        for name, layer in quantized_layers(model):
            assert torch.equal(layer.weight.detach(), before[name]), (w, name)


def test_a_copy_made_right_after_a_step_holds_the_clipped_weight(make_small_cnn):
    """deepcopy after the last optimizer step (accelerate, export and fuse copy the model) gives
    the model the original's next forward would run, not the unclipped latent weights."""
    model = _binary(make_small_cnn)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    F.cross_entropy(model(XS[0]), YS[0]).backward()
    opt.step()  # weights pushed out of [-1, 1]; no forward since
    clone = copy.deepcopy(model)
    expected = model.eval()(XS[1])  # the original clips before this forward
    assert torch.equal(clone.eval()(XS[1]), expected)
    for (name, layer), (_, twin) in zip(quantized_layers(model), quantized_layers(clone),
                                        strict=True):
        assert torch.equal(twin.weight.detach(), layer.weight.detach()), name
        assert twin.weight.detach().abs().max() <= 1.0, name
