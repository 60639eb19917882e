"""examples/own_loop.py: a plain PyTorch loop plus the Controller trains exactly what our
Trainer trains on the same schedule (same batches, seed and stages): the same weights, bit for
bit, for stages using each hook (extra loss, after-step, gradual schedule, epoch-end)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from netshrink.bench.data import DeviceLoader, synthetic
from netshrink.bench.engine import TrainConfig, Trainer
from netshrink.prune import (
    ChannelPruneStage,
    ChannelPruneStageConfig,
    MagnitudePruneConfig,
    MagnitudePruneStage,
    SlimmingConfig,
    SlimmingStage,
)
from netshrink.quant import QuantConfig, QuantizeStage

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop.py"
TRAIN = synthetic("train", 48, num_classes=4, size=32)
TEST = synthetic("test", 16, num_classes=4, size=32)
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="constant", seed=0, amp="off")


def _example():
    spec = importlib.util.spec_from_file_location("own_loop_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGES = {
    # extra_loss (slimming) + after_step (binary latent weights centred and clipped)
    "slimming+binary": lambda: [SlimmingStage(SlimmingConfig(s=1e-2)),
                                QuantizeStage(QuantConfig(w="binary", a=32))],
    # after_step with the run's length (AGP sparsity schedule)
    "agp": lambda: [MagnitudePruneStage(MagnitudePruneConfig(amount=0.5, schedule="agp",
                                                             end=0.8))],
    # after_epoch (soft filter pruning: zeroed each epoch, removed after the last)
    "soft-prune": lambda: [ChannelPruneStage(ChannelPruneStageConfig(
        prune={"criterion": "l1", "amount": 0.5}, soft=True))],
}


@pytest.mark.parametrize("recipe", sorted(STAGES))
def test_own_loop_with_controller_equals_trainer(tmp_path: Path, recipe: str):
    own_loop = _example()
    torch.manual_seed(0)
    ours = own_loop.SmallNet(num_classes=4, width=8)
    torch.manual_seed(0)
    theirs = own_loop.SmallNet(num_classes=4, width=8)

    stages = STAGES[recipe]()
    for stage in stages:
        ours = stage.apply(ours)
    trainer = Trainer(ours, TRAIN, TEST, CONFIG, tmp_path / "run", stages=stages,
                      show_progress=False)
    trainer.fit()

    loader = DeviceLoader(TRAIN, CONFIG.batch_size, device="cpu", train=True, seed=CONFIG.seed)

    def batches(epoch: int):
        loader.set_epoch(epoch)
        return loader

    theirs = own_loop.train(theirs, STAGES[recipe](), batches, epochs=CONFIG.epochs,
                            steps_per_epoch=len(loader), lr=CONFIG.lr,
                            momentum=CONFIG.momentum, weight_decay=CONFIG.weight_decay)
    a, b = trainer.model.state_dict(), theirs.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name
    if recipe == "soft-prune":  # the filters really went, in both
        assert theirs.features[0].out_channels == 4
    if recipe == "agp":
        weights = torch.cat([m.weight.flatten() for m in theirs.modules()
                             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
        assert (weights == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_example_script_runs_and_learns():
    acc = _example().main(epochs=2, n_train=256, n_test=128, batch_size=32)
    assert acc > 0.3  # 10 classes: chance is 0.1


def test_resumed_trainer_continues_the_controller_counters(tmp_path: Path):
    """Soft pruning removes the filters after the last epoch: a run resumed after epoch 1
    must tell the stage it is in epoch 2 of 2, as the uninterrupted run does."""
    own_loop = _example()

    def trainer(run_dir: Path) -> Trainer:
        torch.manual_seed(0)
        model = own_loop.SmallNet(num_classes=4, width=8)
        stages = STAGES["soft-prune"]()
        for stage in stages:
            model = stage.apply(model)
        return Trainer(model, TRAIN, TEST, CONFIG, run_dir, stages=stages, show_progress=False)

    whole = trainer(tmp_path / "whole")
    whole.fit()
    trainer(tmp_path / "part").fit(stop_after=1)
    resumed = trainer(tmp_path / "part")
    resumed.fit(resume=True)
    assert resumed.controller.epochs_done == 2
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert whole.model.features[0].out_channels == 4
    for name in a:
        assert torch.equal(a[name], b[name]), name
