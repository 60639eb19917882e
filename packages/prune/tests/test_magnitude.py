"""Unstructured magnitude pruning: exact sparsity, masks that survive training, the AGP
schedule, sparse storage in ModelStats, and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netshrink.core import ModelStats, load_checkpoint, save_checkpoint, stage_from_description
from netshrink.prune import (
    MagnitudePruneConfig,
    MagnitudePruneStage,
    agp_sparsity,
    apply_masks_,
    magnitude_prune_,
    pack_sparse,
    unpack_sparse,
    weight_sparsity,
)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_global_magnitude_prune_zeroes_exactly_the_smallest_weights():
    model = _net()
    flat = torch.cat([w.detach().abs().flatten() for w in _weights(model)])
    threshold = flat.sort().values[round(0.7 * flat.numel()) - 1]
    magnitude_prune_(model, 0.7)
    assert weight_sparsity(model) == round(0.7 * flat.numel()) / flat.numel()
    for w in _weights(model):
        kept = w.detach()[w != 0].abs()
        assert bool((kept > threshold).all())


def test_per_layer_magnitude_prune_hits_every_layer():
    model = magnitude_prune_(_net(), 0.5, scope="per_layer")
    for w in _weights(model):
        assert int((w == 0).sum()) == round(0.5 * w.numel())


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=0.01),
])
def test_masks_survive_optimizer_steps(make_optimizer):
    model = magnitude_prune_(_net(), 0.8)
    masks = [(w != 0).clone() for w in _weights(model)]
    opt = make_optimizer(model.parameters())
    x = torch.randn(4, 3, 8, 8)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        # between a step and the next forward the optimizer moved masked weights; the layer's
        # pre-hook re-applies the mask, so every forward uses masked weights
        out = model(x)
        for w, mask in zip(_weights(model), masks, strict=True):
            assert bool((w[~mask] == 0).all())
    reference = _net()
    with torch.no_grad():
        for w_ref, w, mask in zip(_weights(reference), _weights(model), masks, strict=True):
            w_ref.copy_(w * mask)
        for m_ref, m in zip(reference, model, strict=True):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m_ref.bias.copy_(m.bias)
    assert torch.allclose(out, reference(x))
    opt.step()
    apply_masks_(model)  # what the stage's after_step does
    assert all(bool((w[~m] == 0).all()) for w, m in zip(_weights(model), masks, strict=True))


def test_agp_formula():
    kw = {"final": 0.8, "initial": 0.0, "start": 0.1, "end": 0.6}
    assert agp_sparsity(0, 100, **kw) == 0.0
    assert agp_sparsity(10, 100, **kw) == 0.0
    assert agp_sparsity(35, 100, **kw) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    assert agp_sparsity(60, 100, **kw) == 0.8
    assert agp_sparsity(99, 100, **kw) == 0.8
    values = [agp_sparsity(t, 100, **kw) for t in range(101)]
    assert values == sorted(values)


def test_agp_stage_reaches_target_sparsity_on_schedule():
    model = _net()
    cfg = MagnitudePruneConfig(amount=0.8, schedule="agp", start=0.1, end=0.6, every=5)
    stage = MagnitudePruneStage(cfg)
    stage.apply(model)
    assert weight_sparsity(model) == 0.0
    n = sum(w.numel() for w in _weights(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(4, 3, 8, 8)
    total, seen, previous = 100, {}, None
    for step in range(total):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        stage.after_step(model, step, total)
        seen[step + 1] = weight_sparsity(model)
        zeros = [(w == 0) for w in _weights(model)]
        if previous is not None:  # once pruned, a weight stays pruned
            assert all(bool(z[p].all()) for z, p in zip(zeros, previous, strict=True))
        previous = zeros
    for done in (10, 15, 35, 50, 60, 100):
        target = agp_sparsity(done, total, final=0.8, start=0.1, end=0.6)
        assert seen[done] == pytest.approx(round(target * n) / n, abs=1e-12)
    assert seen[12] == seen[10]  # masks only change every 5 steps
    assert seen[60] == pytest.approx(round(0.8 * n) / n)


def test_sparse_storage_counts_in_packed_bytes():
    model = _net()
    dense = ModelStats.measure(model, torch.zeros(1, 3, 8, 8))
    magnitude_prune_(model, 0.9)
    sparse = ModelStats.measure(model, torch.zeros(1, 3, 8, 8))
    assert sparse.float_bytes == dense.float_bytes  # masks are not stored
    weight_bytes = 0.0
    biases = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nnz = int(torch.count_nonzero(m.weight))
            weight_bytes += math.ceil(m.weight.numel() * (1 + 32 * nnz / m.weight.numel())) / 8
            biases += m.bias.numel() * 4
    assert sparse.packed_bytes == pytest.approx(weight_bytes + biases, abs=4)
    assert sparse.packed_bytes < 0.2 * dense.packed_bytes


def test_pack_sparse_round_trip_and_size():
    w = magnitude_prune_(_net(), 0.75)[5].weight.detach()
    pack = pack_sparse(w)
    assert torch.equal(unpack_sparse(pack), w)
    nnz = int(torch.count_nonzero(w))
    assert pack.nbytes == math.ceil(w.numel() / 8) + nnz * 4


def test_magnitude_stage_checkpoint_round_trip(tmp_path):
    stage = MagnitudePruneStage(MagnitudePruneConfig(amount=0.6, ignored_layers=["0"]))
    model = stage.apply(_net())
    assert int((model[0].weight == 0).sum()) == 0
    path = save_checkpoint(tmp_path / "sparse.safetensors", model,
                           meta={"recipe": [stage.describe()]})
    ckpt = load_checkpoint(path)
    fresh = _net()
    for record in ckpt.meta["recipe"]:
        fresh = stage_from_description(record).rebuild(fresh)
    fresh.load_state_dict(ckpt.model_state, strict=True)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh(x), model(x))
    zeros = fresh[2].weight == 0
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh(x).sum().backward()
    opt.step()
    apply_masks_(fresh)  # the mask came back from the saved zeros
    assert bool((fresh[2].weight[zeros] == 0).all())


def test_magnitude_config_validation():
    with pytest.raises(ValueError, match="amount=1.2 must be at most 1"):
        MagnitudePruneConfig(amount=1.2)
    with pytest.raises(ValueError, match="schedule='cosine' is not allowed"):
        MagnitudePruneConfig(schedule="cosine")
    with pytest.raises(ValueError, match="end=0.1 must be at least 0.5"):
        MagnitudePruneConfig(start=0.5, end=0.1)
    with pytest.raises(ValueError, match="initial=0.9 must be at most 0.5"):
        MagnitudePruneConfig(amount=0.5, initial=0.9)
