import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from netshrink.core import (
    CheckpointError,
    check_depth,
    flatten_optimizer_state,
    load_checkpoint,
    loads_bounded,
    restore_optimizer_state,
    save_checkpoint,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(2))


def test_round_trip_gives_identical_outputs(tmp_path: Path):
    model = _model()
    x = torch.randn(2, 3, 6, 6)
    model(x)  # materialise the lazy layer, update BN stats
    model.eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta={"model": {"name": "toy"}},
                           extra={"optim.0.momentum_buffer": torch.ones(3)})
    ckpt = load_checkpoint(path)
    assert ckpt.meta["model"] == {"name": "toy"}
    assert torch.equal(ckpt.extra["optim.0.momentum_buffer"], torch.ones(3))
    fresh = _model()
    fresh(x)
    fresh.load_state_dict(ckpt.model_state)
    fresh.eval()
    assert torch.equal(fresh(x), model(x))


def test_no_temporary_file_is_left_and_old_file_survives_a_failed_write(tmp_path: Path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(ValueError):
        save_checkpoint(path, {"w": torch.zeros(2)}, extra={"model.bad": torch.ones(1)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_truncated_file_gives_clear_error(tmp_path: Path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable netshrink checkpoint"):
        load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-marker",))


def test_pickled_file_is_refused_and_never_executed(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="pickled torch.save file, which is never loaded"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned-marker").exists()
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pt")


def test_foreign_safetensors_without_our_metadata_is_refused(tmp_path: Path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a netshrink checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, record = flatten_optimizer_state(opt)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as if read back from disk
    clone = nn.Linear(4, 3)
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.Adam(clone.parameters(), lr=0.5)
    restore_optimizer_state(opt2, tensors, record)
    assert opt2.param_groups[0]["lr"] == 0.01
    x = torch.randn(5, 4)
    for o, m in ((opt, model), (opt2, clone)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(model.weight, clone.weight)


def test_metadata_cannot_overwrite_the_format_record(tmp_path: Path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(1)},
                           meta={"format": "other", "version": 99, "x": 1})
    ckpt = load_checkpoint(path)
    assert (ckpt.meta["format"], ckpt.meta["version"], ckpt.meta["x"]) == (
        "netshrink-checkpoint", 1, 1)


def test_checkpoint_gets_ordinary_file_permissions(tmp_path: Path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(1)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# -- hostile metadata and records: always CheckpointError, never RecursionError & co ----------

def _with_raw_meta(path: Path, raw: str) -> Path:
    """A safetensors file whose netshrink metadata is the given text, as a hostile writer could
    make it (save_checkpoint itself only writes JSON objects)."""
    from safetensors.torch import save_file

    save_file({"model.w": torch.ones(2)}, str(path), metadata={"netshrink": raw})
    return path


@pytest.mark.parametrize(("raw", "message"), [
    ("[" * 100_000 + "]" * 100_000, "nests deeper than the 64 levels"),  # RecursionError before
    ('{"a": ' * 200 + "1" + "}" * 200, "nests deeper than the 64 levels"),  # parsed before
    ('[{"format": "netshrink-checkpoint", "version": 1}]', "is a JSON list, expected an object"),
    ('"netshrink-checkpoint"', "is a JSON str, expected an object"),
    ("1" * 5000, "not valid JSON"),  # int longer than Python converts: a bare ValueError before
    ("{not json", "not valid JSON"),
])
def test_malformed_metadata_is_a_checkpoint_error(tmp_path: Path, raw: str, message: str):
    path = _with_raw_meta(tmp_path / "m.safetensors", raw)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_metadata_depth_and_size_bounds():
    assert loads_bounded('{"a": [[1]]}', max_depth=3) == {"a": [[1]]}
    with pytest.raises(ValueError, match="deeper than the 2 levels"):
        loads_bounded('{"a": [[1]]}', max_depth=2)
    with pytest.raises(ValueError, match="longer than the 10 allowed"):
        loads_bounded('"' + "x" * 10 + '"', max_chars=10)
    check_depth([[[]]], 3)
    with pytest.raises(ValueError):
        check_depth([[[[]]]], 3)


def _trained_adam() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize(("change", "message"), [
    (lambda t, r: (t, [r]), "must be an object with a 'param_groups' list"),
    (lambda t, r: (t, {**r, "param_groups": {"lr": 1}}), "'param_groups' list"),
    (lambda t, r: (t, {**r, "param_groups": [1]}), "must be a list of objects"),
    (lambda t, r: (t, {**r, "scalars": [1]}), "'scalars' must map parameter indices"),
    (lambda t, r: (t, {**r, "scalars": {"x": {"step": 1}}}), "'x' is not a parameter index"),
    (lambda t, r: ({"optim.zero": torch.ones(1)}, r), "'zero' is not a parameter index"),
    (lambda t, r: (t, {**r, "param_groups": r["param_groups"] * 2}), "does not fit"),
])
def test_malformed_optimizer_record_is_a_checkpoint_error(change, message: str):
    model, opt = _trained_adam()
    tensors, record = flatten_optimizer_state(opt)
    tensors, record = change(tensors, record)
    with pytest.raises(CheckpointError, match=message):
        restore_optimizer_state(torch.optim.Adam(model.parameters()), tensors, record)
