"""PACT and LSQ: k-bit activations with a learned clip / step size: forward values and
gradients on hand-made tensors, the config rules, quantize, the stage, packed files."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from netshrink.core import stage_from_description
from netshrink.quant import (
    A_QUANTIZERS,
    DoReFaAct,
    DoReFaWeight,
    LSQAct,
    PACTAct,
    QuantConfig,
    QuantConv2d,
    QuantizeStage,
    load_packed,
    packed_size,
    quantize_,
    quantized_layers,
    read_structure,
    save_packed,
)

X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _grads(q, x, upstream=None):
    """``(y, dL/dx, dL/dparam)`` for ``L = sum(y * upstream)``."""
    q.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = q(x)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    (param,) = q.parameters()
    return y.detach(), x.grad, param.grad


# config ----------------------------------------------------------------------------------------
def test_config_choices_and_rules():
    assert A_QUANTIZERS == ("dorefa", "pact", "lsq")
    assert QuantConfig(w=4, a=4).a_quantizer == "dorefa"
    for name in ("pact", "lsq"):
        for a in (2, 3, 4, 8):
            assert QuantConfig(w="ternary", a=a, a_quantizer=name).a_quantizer == name
    with pytest.raises(ValueError, match="a_quantizer='PACT'.*'dorefa', 'pact', 'lsq'"):
        QuantConfig(w=4, a=4, a_quantizer="PACT")
    for a in (32, 16, "binary", "ternary"):
        with pytest.raises(ValueError, match=rf"a_quantizer='lsq' needs k-bit activations "
                                             rf"\(a one of 8, 4, 3, 2\).*a={a!r}"):
            QuantConfig(w=4, a=a, a_quantizer="lsq")
    with pytest.raises(ValueError, match="a_quantizer='pact' needs.*scheme='int8_affine'"):
        QuantConfig(w=8, a=8, scheme="int8_affine", a_quantizer="pact")
    with pytest.raises(ValueError, match="a_estimator='soft_ste' cannot be used with "
                                         "a_quantizer='pact'.*'saturate_ste'"):
        QuantConfig(w=4, a=4, a_quantizer="pact", a_estimator="soft_ste")


# PACT -------------------------------------------------------------------------------------------
def test_pact_forward_and_gradients_hand_computed():
    q = PACTAct(2, clip=1.5)  # n = 3 steps of 0.5 over [0, 1.5]
    assert isinstance(q.alpha, nn.Parameter) and q.alpha.item() == 1.5
    x = torch.tensor([-0.5, 0.0, 0.2, 0.3, 0.8, 1.4, 1.5, 2.0])
    # clip -> 0, 0, 0.2, 0.3, 0.8, 1.4, 1.5, 1.5; *2 -> 0, 0, .4, .6, 1.6, 2.8, 3, 3; round; /2
    y, gx, galpha = _grads(q, x, upstream=torch.arange(1.0, 9.0))
    assert y.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 1.5, 1.5]
    assert gx.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]  # where 0 <= x < alpha
    assert galpha.item() == 7.0 + 8.0  # upstream gradients where x >= alpha
    with torch.no_grad():
        q.alpha.fill_(3.0)  # a learned clip moves the grid: steps of 1 over [0, 3]
    y, gx, galpha = _grads(q, x)
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert gx.tolist() == [0.0, 1, 1, 1, 1, 1, 1, 1] and galpha.item() == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("clip", [1.0, 6.0])
def test_pact_at_its_initial_clip_equals_dorefa(bits, clip):
    x = torch.linspace(-2, clip + 2, 20001)
    assert torch.equal(PACTAct(bits, clip)(x), DoReFaAct(bits, clip=clip)(x))
    y = PACTAct(bits, clip)(x.clone().requires_grad_(True))  # the autograd path, too
    assert torch.equal(y.detach(), DoReFaAct(bits, clip=clip)(x))


def test_pact_nonpositive_alpha_saturates_instead_of_dividing_by_zero():
    q = PACTAct(2)
    with torch.no_grad():
        q.alpha.fill_(0.0)
    y = q(torch.tensor([-1.0, 0.5, 2.0]))
    assert torch.isfinite(y).all() and y.abs().max() < 1e-6


# LSQ --------------------------------------------------------------------------------------------
def _lsq(bits: int, step: float) -> LSQAct:
    q = LSQAct(bits)
    with torch.no_grad():
        q.step_size.fill_(step)
    q.initialized.fill_(True)
    q._initialized = True
    return q


def test_lsq_forward_and_gradients_hand_computed():
    q = _lsq(2, 0.5)  # Qp = 3
    x = torch.tensor([[-0.2, 0.0, 0.3, 0.6, 1.4, 1.5, 2.0]])
    # v = x / s = -0.4, 0, 0.6, 1.2, 2.8, 3, 4 -> clip [0, 3] -> round -> 0, 0, 1, 1, 3, 3, 3
    y, gx, gs = _grads(q, x)
    assert y.tolist() == [[0.0, 0.0, 0.5, 0.5, 1.5, 1.5, 1.5]]
    assert gx.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]  # where 0 < v < Qp
    # ds: round(v) - v inside (0.4, -0.2, 0.2), Qp at or above the top (3, 3), 0 below;
    # gradient scale 1 / sqrt(N Qp) with N = 7 elements per example
    assert gs.item() == pytest.approx((0.4 - 0.2 + 0.2 + 3 + 3) / math.sqrt(7 * 3), rel=1e-5)
    # two examples: N is still 7 (per example), the sum doubles
    _, _, gs2 = _grads(_lsq(2, 0.5), x.repeat(2, 1))
    assert gs2.item() == pytest.approx(2 * gs.item(), rel=1e-6)
    # upstream gradients weight the terms
    up = torch.tensor([[5.0, 5, 1, 2, 1, 1, 0]])
    _, gx, gs = _grads(_lsq(2, 0.5), x, up)
    assert gx.tolist() == [[0.0, 0, 1, 2, 1, 0, 0]]
    assert gs.item() == pytest.approx((0.4 - 0.4 + 0.2 + 3) / math.sqrt(21), rel=1e-5)


def test_lsq_levels_4bit():
    q = _lsq(4, 0.25)
    x = torch.linspace(-1, 5, 6001)
    levels = torch.unique(q(x))
    assert torch.equal(levels, torch.arange(16) * 0.25)


def test_lsq_initialises_from_the_first_training_batch_only():
    q = LSQAct(4, clip=3.0)  # Qp = 15
    assert q.step_size.item() == pytest.approx(3.0 / 15) and not q.initialized
    x = torch.tensor([[0.0, 0.5, 1.0, 2.5], [3.0, -1.0, 0.25, 0.75]])  # mean|x| = 1.125
    q.eval()(x)
    assert not q.initialized and q.step_size.item() == pytest.approx(0.2)  # eval: no init
    q.train()(x)
    expected = 2 * 1.125 / math.sqrt(15)
    assert q.initialized and q.step_size.item() == pytest.approx(expected, rel=1e-6)
    q(x * 10)  # later batches leave it to the optimizer
    assert q.step_size.item() == pytest.approx(expected, rel=1e-6)
    zeros = LSQAct(2).train()
    zeros(torch.zeros(4, 3))  # an all-zero first batch keeps the initial step
    assert zeros.initialized and zeros.step_size.item() == pytest.approx(1.0 / 3)


def test_lsq_initialised_flag_travels_with_the_state_dict():
    q = LSQAct(2).train()
    q(torch.full((2, 3), 3.0))
    fresh = LSQAct(2).train()
    fresh.load_state_dict(q.state_dict())
    assert fresh._initialized
    fresh(torch.full((2, 3), 100.0))  # no re-initialisation after loading
    assert fresh.step_size.item() == q.step_size.item()


# in a model --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls", "param"), [("pact", PACTAct, "alpha"),
                                                    ("lsq", LSQAct, "step_size")])
def test_quantize_gives_each_layer_its_own_learned_parameter(make_small_cnn, name, cls, param):
    model = quantize_(make_small_cnn(), QuantConfig(w=4, a=2, a_quantizer=name, a_clip=2.0,
                                                   last="8bit"))
    layers = quantized_layers(model)
    assert all(isinstance(m.input_quant, cls) for _, m in layers)  # the 8-bit last one too
    assert layers[-1][1].input_quant.bits == 8 and layers[0][1].input_quant.bits == 2
    learned = [getattr(m.input_quant, param) for _, m in layers]
    ids = {id(p) for p in model.parameters()}
    assert all(isinstance(p, nn.Parameter) and id(p) in ids for p in learned)
    assert len({id(p) for p in learned}) == len(learned)  # one per layer
    model.train()(X).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for p in learned)
    assert any(p.grad != 0 for p in learned)
    conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), DoReFaWeight(4), cls(4))
    assert f"input_quant.{param}" in dict(conv.named_parameters())


@pytest.mark.parametrize("name", ["pact", "lsq"])
def test_pack_round_trip_is_bit_identical_and_counts_the_learned_value(tmp_path, make_small_cnn,
                                                                       name):
    cfg = QuantConfig(w="ternary", a=3, a_quantizer=name, first="same", last="8bit")
    model = quantize_(make_small_cnn(), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):  # move the learned values away from their start
        opt.zero_grad()
        model.train()(X).square().mean().backward()
        opt.step()
    model.eval()
    path = save_packed(model, tmp_path / "m.safetensors")
    loaded = load_packed(path)
    assert torch.equal(loaded(X), model(X))
    param = "alpha" if name == "pact" else "step_size"
    start = {"pact": [1.0], "lsq": [1.0 / 7, 1.0 / 255]}[name]
    moved = 0
    for (_, a), (_, b) in zip(quantized_layers(model), quantized_layers(loaded), strict=True):
        assert torch.equal(getattr(a.input_quant, param), getattr(b.input_quant, param))
        moved += getattr(a.input_quant, param).item() not in start
    assert moved >= 3  # learned values, not the starting ones, went into the file
    assert read_structure(path)["modules"]["3"]["input_quant"] == {
        "kind": name, "bits": 3, "clip": 1.0}
    # the learned value is a float32 per layer (LSQ adds its one-byte initialised flag)
    base = packed_size(quantize_(make_small_cnn(), QuantConfig(w="ternary", a=3, first="same",
                                                              last="8bit")).eval())
    n = len(quantized_layers(model))
    extra = 4 * n if name == "pact" else 5 * n
    assert packed_size(model).float_bytes == base.float_bytes + extra
    assert packed_size(model).code_bytes == base.code_bytes


@pytest.mark.parametrize("name", ["pact", "lsq"])
def test_stage_describe_and_rebuild(make_small_cnn, name):
    stage = QuantizeStage(QuantConfig(w=2, a=4, a_quantizer=name))
    record = stage.describe()
    assert record["config"]["a_quantizer"] == name
    trained = stage.apply(make_small_cnn(0))
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    trained.train()(X).square().mean().backward()
    opt.step()
    fresh = stage_from_description(record).rebuild(make_small_cnn(1))
    fresh.load_state_dict(trained.state_dict(), strict=True)
    assert torch.equal(fresh.eval()(X), trained.eval()(X))


def _lsq_rank(rank: int, store_path: str, out_path: str) -> None:
    dist = torch.distributed
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank,
                            world_size=2)
    try:
        q = LSQAct(2).train()
        q(torch.full((2, 3), 3.0 if rank == 0 else 6.0))  # each rank sees other data
        torch.save(q.step_size.detach(), f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_lsq_initial_step_is_averaged_over_ddp_ranks(tmp_path, monkeypatch):
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # the spawned ranks import this module by its rootdir-relative name (pytest's importlib
    # mode), so the repository root must be on their path also when pytest is not run as
    # `python -m pytest` (which adds the working folder)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3]))
    out = str(tmp_path / "step")
    torch.multiprocessing.spawn(_lsq_rank, args=(str(tmp_path / "store"), out), nprocs=2)
    steps = [torch.load(f"{out}.{r}", weights_only=True).item() for r in range(2)]
    # 2 mean|x| / sqrt(Qp) averaged over the ranks: (3 + 6) / 2 = 4.5 as mean|x|
    assert steps == pytest.approx([2 * 4.5 / math.sqrt(3)] * 2)
