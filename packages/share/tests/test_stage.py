"""The share.kmeans stage: registration, records, magnitude pruning, checkpoints."""

import json

import pytest
import torch

from netshrink.core import STAGES, ModelStats, stage_from_description
from netshrink.models import create_model, load_model, save_model
from netshrink.prune import magnitude_prune_
from netshrink.share import SHARED_LAYERS, ShareConfig, ShareStage

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _nin():
    torch.manual_seed(0)
    return create_model("nin", width=0.25).eval()


def test_config_checks() -> None:
    for bad, match in [({"bits": 1}, "bits=1"), ({"bits": 9}, "bits=9"),
                       ({"linear_bits": True}, "linear_bits=True"),
                       ({"iterations": 0}, "iterations=0"), ({"skip": "a"}, "skip='a'"),
                       ({"layers": {"a": {"bits": 3}}}, "layers="),
                       ({"layers": [("a", 3, False), ("a", 4, True)]}, "names a module twice")]:
        with pytest.raises(ValueError, match=match):
            ShareConfig(**bad)


def test_registered_described_and_rebuilt_through_a_checkpoint(tmp_path) -> None:
    assert STAGES.get("share.kmeans") is ShareStage
    model = _nin()
    magnitude_prune_(model, 0.6)
    stage = ShareStage(ShareConfig(bits=4, skip=["features.conv1"]))
    shared = stage.apply(model)
    expect = shared(X)
    record = json.loads(json.dumps(stage.describe()))
    assert record["kind"] == "share.kmeans"
    assert "features.conv1" not in record["config"]["layers"]
    assert all(v == {"bits": 4, "sparse": True} for v in record["config"]["layers"].values())
    again = stage_from_description(record)
    assert again.layers == stage.layers
    path = save_model(tmp_path / "m.safetensors", shared, recipe=[stage])
    loaded = load_model(path).eval()
    assert sum(isinstance(m, SHARED_LAYERS) for m in loaded.modules()) == len(stage.layers)
    assert torch.equal(loaded(X), expect)
    for name, _, _ in stage.layers:
        a, b = shared.get_submodule(name), loaded.get_submodule(name)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.indices, b.indices)


def test_pruned_model_keeps_its_zeros_and_the_stats_count_the_codebooks() -> None:
    model = _nin()
    magnitude_prune_(model, 0.8)
    zeros = {n: (m.weight == 0).clone() for n, m in model.named_modules() if hasattr(m, "weight")
             and isinstance(m, torch.nn.Conv2d)}
    before = ModelStats.measure(model, X[:1])
    ShareStage(ShareConfig(bits=3)).apply(model)
    for name, was_zero in zeros.items():
        w = model.get_submodule(name).weight
        assert torch.equal(w == 0, was_zero)  # pruned: exactly zero; kept: a nonzero centroid
        assert len(torch.unique(w[~was_zero])) <= 8
    after = ModelStats.measure(model, X[:1])
    # bits per weight go from 1 + 32 * 0.2 (sparse float) to about 1 + 3 * 0.2
    assert after.packed_bytes < 0.3 * before.packed_bytes


def test_linear_bits_and_skip() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 5))
    stage = ShareStage(ShareConfig(bits=6, linear_bits=2, skip=["0"]))
    stage.apply(model)
    assert stage.layers == (("1", 6, False), ("3", 2, False))
    assert type(model[0]) is torch.nn.Conv2d
    assert len(torch.unique(model[3].weight)) <= 4
