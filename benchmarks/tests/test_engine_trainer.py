import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from bench_testing import read_scalars
from torch import nn

from netshrink.bench.data import synthetic
from netshrink.bench.engine import ConfigMismatchError, TrainConfig, Trainer
from netshrink.bench.engine.checkpoints import list_checkpoints
from netshrink.core import Stage, load_checkpoint

TRAIN = synthetic("train", 160, num_classes=4, size=16)
TEST = synthetic("test", 64, num_classes=4, size=16)


def _trainer(run_dir: Path, config: TrainConfig, **kwargs) -> Trainer:
    from netshrink.models import create_model

    torch.manual_seed(config.seed)
    model = create_model("nin", width=0.1, num_classes=4)
    return Trainer(model, TRAIN, TEST, config, run_dir, show_progress=False,
                   meta={"model": model.netshrink_spec}, **kwargs)


CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=1, keep_checkpoints=2)


def test_training_learns_and_writes_checkpoints(tmp_path: Path):
    result = _trainer(tmp_path, CONFIG).fit()
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.history[-1].step == 3 * (160 // 32)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.final.test_accuracy > 0.5  # 4 classes: chance is 0.25
    assert [e for e, _ in list_checkpoints(tmp_path)] == [2, 3]  # keep_checkpoints=2
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt.meta["train"]["epochs_done"] == 3
    assert ckpt.meta["model"]["name"] == "nin"


def test_resume_equals_uninterrupted_training(tmp_path: Path):
    whole = _trainer(tmp_path / "whole", CONFIG)
    whole.fit()
    part = _trainer(tmp_path / "part", CONFIG)
    part.fit(stop_after=1)
    resumed = _trainer(tmp_path / "part", CONFIG)
    result = resumed.fit(resume=True)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert result.final.test_accuracy == pytest.approx(whole.history[-1].test_accuracy)
    # the resumed TensorBoard log has each step once, as the uninterrupted one
    steps = [s for s, _ in read_scalars(tmp_path / "part" / "tensorboard")["train/loss"]]
    assert steps == sorted(set(steps)) == [s for s, _ in read_scalars(
        tmp_path / "whole" / "tensorboard")["train/loss"]]


def test_resume_refuses_other_settings_and_fresh_run_refuses_to_overwrite(tmp_path: Path):
    _trainer(tmp_path, CONFIG).fit(stop_after=1)
    other = dataclasses.replace(CONFIG, lr=0.2)
    with pytest.raises(ConfigMismatchError, match="lr: saved 0.05, now 0.2"):
        _trainer(tmp_path, other).fit(resume=True)
    with pytest.raises(FileExistsError, match="pass --resume"):
        _trainer(tmp_path, CONFIG).fit()


def test_tensorboard_has_the_expected_scalars(tmp_path: Path):
    _trainer(tmp_path, dataclasses.replace(CONFIG, epochs=2), log_every=2).fit()
    scalars = read_scalars(tmp_path / "tensorboard")
    for tag in ("train/loss", "train/lr", "test/accuracy", "test/loss",
                "perf/images_per_second", "perf/outside_model_fraction"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6, 8, 10]
    assert [s for s, _ in scalars["test/accuracy"]] == [5, 10]
    lrs = [v for _, v in scalars["train/lr"]]
    assert lrs[0] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 10)))  # step 1 of 10
    assert all(0 <= v <= 1 for _, v in scalars["test/accuracy"])


@dataclass(frozen=True)
class _L1Config:
    coefficient: float = 1.0


class _L1OnBN(Stage):
    """A test stage: L1 on BN scales, counting its hook calls."""

    config_class = _L1Config
    kind = "core.test_l1"

    def __init__(self, config):
        super().__init__(config)
        self.steps: list[int] = []
        self.epochs: list[int] = []

    def apply(self, model):
        return model

    def extra_loss(self, model):
        return self.config.coefficient * sum(m.weight.abs().sum() for m in model.modules()
                                             if isinstance(m, nn.BatchNorm2d))

    def after_step(self, model, step, total_steps):
        self.steps.append(step)

    def after_epoch(self, model, epoch, epochs):
        self.epochs.append(epoch)

    def histograms(self, model):
        return {"test/abs_gamma": torch.cat([m.weight.abs().flatten() for m in model.modules()
                                             if isinstance(m, nn.BatchNorm2d)])}


def test_stage_hooks_are_called_and_extra_loss_acts(tmp_path: Path):
    config = dataclasses.replace(CONFIG, epochs=2, weight_decay=0.0)
    stage = _L1OnBN(_L1Config(0.5))
    penalised = _trainer(tmp_path / "l1", config, stages=[stage])
    penalised.fit()
    assert stage.steps == list(range(10)) and stage.epochs == [0, 1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "l1" / "tensorboard"), size_guidance={"histograms": 0})
    acc.Reload()
    hist = acc.Histograms("test/abs_gamma")
    assert [h.step for h in hist] == [5, 10]
    n_gammas = sum(m.weight.numel() for m in penalised.model.modules()
                   if isinstance(m, nn.BatchNorm2d))
    assert hist[-1].histogram_value.num == n_gammas
    plain = _trainer(tmp_path / "plain", config)
    plain.fit()

    def gamma_l1(t: Trainer) -> float:
        return sum(m.weight.abs().sum().item() for m in t.model.modules()
                   if isinstance(m, nn.BatchNorm2d))

    assert gamma_l1(penalised) < 0.9 * gamma_l1(plain)


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="160 samples, fewer than one global batch of 512"):
        _trainer(tmp_path, dataclasses.replace(CONFIG, batch_size=512))


def test_channels_last_trains_to_the_same_weights(tmp_path: Path):
    config = dataclasses.replace(CONFIG, epochs=1)
    plain = _trainer(tmp_path / "plain", config)
    a = plain.fit().final
    cl = _trainer(tmp_path / "cl", dataclasses.replace(config, channels_last=True))
    b = cl.fit().final
    assert cl.model.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)
    # other conv kernels round differently; over 5 SGD steps that stays below 2e-3
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(cl.model.state_dict()[name], value, rtol=0, atol=2e-3)


def test_recalibrate_bn_averages_batch_statistics_and_keeps_weights():
    from netshrink.bench.data import DeviceLoader
    from netshrink.bench.engine import recalibrate_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01))
    weights = model[0].weight.clone()
    loader = DeviceLoader(TRAIN, 32, device="cpu", train=False)
    means = []
    for i, (x, _) in enumerate(loader):
        if i == 3:
            break
        means.append(model[0](x).mean(dim=(0, 2, 3)).detach())
    assert recalibrate_bn(model, loader, 3) == 1
    torch.testing.assert_close(model[1].running_mean, torch.stack(means).mean(0))
    assert model[1].momentum == 0.01 and torch.equal(model[0].weight, weights)
    assert int(model[1].num_batches_tracked) == 3


def test_recalibrate_bn_keeps_batchnorms_the_forward_does_not_update():
    from netshrink.bench.data import DeviceLoader
    from netshrink.bench.engine import recalibrate_bn
    from netshrink.quant import QuantConfig, freeze_bn_stats_, quantize_

    torch.manual_seed(0)
    model = quantize_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3, bias=False),
                                   nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                     QuantConfig(w=8, a=8, scheme="int8_affine"))
    loader = DeviceLoader(TRAIN, 32, device="cpu", train=False)
    model.train()
    for _, (x, _) in zip(range(2), loader, strict=False):
        model(x)  # some statistics to keep
    assert freeze_bn_stats_(model) == 1
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    assert recalibrate_bn(model, loader, 3) == 0  # frozen: the forward leaves it alone
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_malloc_tuning_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    import platform

    from netshrink.bench.engine.host import ENV_SWITCH, keep_freed_memory

    monkeypatch.setenv(ENV_SWITCH, "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv(ENV_SWITCH)
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected


def test_resume_removes_temp_files_of_checkpoint_writes_killed_midway(tmp_path: Path):
    import subprocess
    import sys

    from netshrink.core.atomic import temp_name

    _trainer(tmp_path, CONFIG).fit(stop_after=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    folder = tmp_path / "checkpoints"
    orphan = folder / temp_name("epoch-0009.safetensors", pid=int(dead.stdout))  # never rewritten
    live = folder / temp_name("epoch-0002.safetensors")  # this process: alive, kept
    orphan.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    _trainer(tmp_path, CONFIG).fit(resume=True, stop_after=1)
    assert not orphan.exists()
    assert live.exists()
