"""Non-finite training stops with NonFiniteError; resume checks everything recorded; our JSON
files are standard JSON (no NaN/Infinity tokens)."""

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from netshrink.bench.data import synthetic
from netshrink.bench.engine import (
    ConfigMismatchError,
    NonFiniteError,
    NonStandardJSONError,
    TrainConfig,
    Trainer,
    TrainingError,
    read_json,
    write_summary,
)
from netshrink.bench.engine.checkpoints import list_checkpoints
from netshrink.core import Stage, load_checkpoint, save_checkpoint

TRAIN = synthetic("train", 160, num_classes=4, size=16)
TEST = synthetic("test", 64, num_classes=4, size=16)
CONFIG = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=1)  # 5 steps per epoch


def _reject(token: str):
    raise AssertionError(f"non-standard JSON token {token}")


def _trainer(run_dir: Path, config: TrainConfig = CONFIG, train=TRAIN, test=TEST,
             meta: dict | None = None, **kwargs) -> Trainer:
    from netshrink.models import create_model

    torch.manual_seed(config.seed)
    model = create_model("nin", width=0.1, num_classes=4)
    return Trainer(model, train, test, config, run_dir, show_progress=False,
                   meta={"model": model.netshrink_spec, **(meta or {})}, **kwargs)


@dataclass(frozen=True)
class _PoisonConfig:
    at_step: int = 7  # 0-based optimizer step whose loss is NaN
    where: str = "loss"  # "loss": NaN extra loss; "buffer": NaN running_var after the epoch


class _Poison(Stage):
    """A test stage that makes one step's loss NaN, or a BN buffer NaN after epoch 1."""

    config_class = _PoisonConfig
    kind = "core.test_poison"

    def __init__(self, config):
        super().__init__(config)
        self.step = 0

    def apply(self, model):
        return model

    def extra_loss(self, model):
        if self.config.where == "loss" and self.step == self.config.at_step:
            return next(model.parameters()).sum() * float("nan")  # NaN gradients, too
        return None

    def after_step(self, model, step, total_steps):
        self.step = step + 1

    def after_epoch(self, model, epoch, epochs):
        if self.config.where == "buffer":
            bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
            bn.running_var[0] = float("inf")


@pytest.mark.parametrize("log_every", [1, 10])
def test_a_nan_loss_stops_training_naming_epoch_step_and_parameter(tmp_path: Path, log_every):
    trainer = _trainer(tmp_path, stages=[_Poison(_PoisonConfig(at_step=7))],
                       log_every=log_every)
    with pytest.raises(NonFiniteError, match="loss became non-finite") as info:
        trainer.fit()
    err = info.value
    assert isinstance(err, TrainingError) and isinstance(err, ValueError)
    assert err.epoch == 2  # step 7 (0-based) is in epoch 2
    # log_every=1 sees the very step; log_every=10 sees it at the epoch end (step 10)
    assert err.step == (8 if log_every == 1 else 10)
    assert f"step {err.step}" in str(err) and "epoch 2" in str(err)
    assert err.parameter is not None and err.parameter in str(err)  # NaN grads reached it
    # epoch 1 was finite and saved; nothing of epoch 2
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]


def test_a_huge_learning_rate_diverges_into_an_error_not_a_chance_accuracy(tmp_path: Path):
    config = dataclasses.replace(CONFIG, lr=1e6, momentum=0.0, epochs=3)
    with pytest.raises(NonFiniteError, match="training diverged"):
        _trainer(tmp_path, config).fit()


def test_non_finite_weights_at_the_epoch_end_are_named(tmp_path: Path):
    trainer = _trainer(tmp_path, stages=[_Poison(_PoisonConfig(where="buffer"))])
    with pytest.raises(NonFiniteError, match=r"after epoch 1 \(step 5\).*running_var") as info:
        trainer.fit()
    assert info.value.parameter.endswith("running_var")
    assert list_checkpoints(tmp_path) == []


def test_resume_from_a_nan_checkpoint_is_refused(tmp_path: Path):
    _trainer(tmp_path).fit(stop_after=1)
    path = list_checkpoints(tmp_path)[-1][1]
    ckpt = load_checkpoint(path)
    from netshrink.models import create_model

    model = create_model("nin", width=0.1, num_classes=4)
    state = dict(ckpt.model_state)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    model.load_state_dict(state)
    save_checkpoint(path, model, meta=ckpt.meta, extra=ckpt.extra)
    with pytest.raises(NonFiniteError, match=f"holds non-finite weights.*{name}"):
        _trainer(tmp_path).fit(resume=True)


@pytest.mark.parametrize("change, expected", [
    ({"train": synthetic("train", 128, num_classes=4, size=16)},
     "data.train_images: saved 160, now 128"),
    ({"train": synthetic("train", 160, num_classes=4, size=16, seed=5)},
     "data.fingerprint: saved"),
    ({"train": dataclasses.replace(TRAIN, name="cifar10")},
     "data.name: saved 'synthetic', now 'cifar10'"),
    ({"test": synthetic("test", 32, num_classes=4, size=16)},
     "data.test_images: saved 64, now 32"),
    ({"config": dataclasses.replace(CONFIG, seed=2)}, "config.seed: saved 1, now 2"),
    ({"meta": {"dataset": "cifar10"}}, "dataset: saved 'synthetic', now 'cifar10'"),
    ({"meta": {"recipe": [{"kind": "x"}]}}, "recipe"),
    ({"stages": [_Poison(_PoisonConfig(at_step=10_000))]}, "stages: saved []"),
])
def test_resume_refuses_other_data_seed_or_recipe(tmp_path: Path, change, expected):
    _trainer(tmp_path, meta={"dataset": "synthetic", "recipe": []}).fit(stop_after=1)
    kwargs = {"meta": {"dataset": "synthetic", "recipe": []}}
    meta = change.pop("meta", {})
    kwargs["meta"].update(meta)
    kwargs.update(change)
    with pytest.raises(ConfigMismatchError, match="cannot resume") as info:
        _trainer(tmp_path, **kwargs).fit(resume=True)
    assert expected in str(info.value)


def test_resume_with_the_same_everything_continues(tmp_path: Path):
    _trainer(tmp_path, meta={"dataset": "synthetic"}).fit(stop_after=1)
    result = _trainer(tmp_path, dataclasses.replace(CONFIG, keep_checkpoints=5),
                      meta={"dataset": "synthetic"}).fit(resume=True)
    assert [r.epoch for r in result.history] == [1, 2]


def test_summaries_are_standard_json(tmp_path: Path):
    path = tmp_path / "s.json"
    write_summary(path, {"a": [1.5, {"b": 2}]})
    assert json.loads(path.read_text(), parse_constant=_reject) == {"a": [1.5, {"b": 2}]}
    with pytest.raises(NonStandardJSONError, match=r"a\[1\]\.b is not a finite number"):
        write_summary(tmp_path / "bad.json", {"a": [1.5, {"b": float("nan")}]})
    assert not (tmp_path / "bad.json").exists()
    path.write_text('{"accuracy": NaN}')
    with pytest.raises(NonStandardJSONError, match="s.json holds a non-finite number: NaN"):
        read_json(path)
    path.write_text('{"accuracy": 0.5')
    with pytest.raises(NonStandardJSONError, match="s.json is not valid JSON"):
        read_json(path)


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "netshrink.bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bench_train_that_diverges_fails_and_says_so_in_its_summary(tmp_path: Path):
    out = tmp_path / "run"
    proc = _bench("train", "--model", "nin", "--width", "0.1", "--dataset", "synthetic",
                  "--epochs", "1", "--batch-size", "256", "--lr", "1e6", "--momentum", "0",
                  "--device", "cpu", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "training diverged" in proc.stderr + proc.stdout
    summary = json.loads((out / "summary.json").read_text(), parse_constant=_reject)
    assert summary["status"] == "failed" and "diverged" in summary["error"]
    assert summary["epoch"] == 1 and "test_accuracy" not in summary
    assert not (out / "model.safetensors").exists()


WORKER = Path(__file__).with_name("ddp_nonfinite_worker.py")


@pytest.mark.ddp
def test_under_ddp_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(WORKER), str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert steps[0] == steps[1] == {"epoch": 1, "step": 3}
