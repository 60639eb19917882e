"""Controller: every training hook of every stage, called with the right step / epoch numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from netshrink.core import Controller, Stage


@dataclasses.dataclass(frozen=True)
class _Cfg:
    tag: str = "a"


class _Recorder(Stage):
    """Records every hook call; adds ``1`` (times a parameter sum of 0) as extra loss."""

    config_class = _Cfg

    def __init__(self, config: _Cfg, calls: list) -> None:
        super().__init__(config)
        self.calls = calls

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        w = next(model.parameters())
        self.calls.append((self.config.tag, "extra", torch.is_autocast_enabled("cpu")))
        # a matmul: bf16 under an enabled CPU autocast, float32 otherwise
        return (w @ w.t()).sum() * 0 + 1

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.calls.append((self.config.tag, "step", step, total_steps))

    def after_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self.calls.append((self.config.tag, "epoch", epoch, epochs))

    def histograms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"h/{self.config.tag}": torch.ones(2)}


class _Distill(_Recorder):
    def training_loss(self, inputs, outputs, targets, base_loss):
        return base_loss * 10


def _model() -> nn.Module:
    return nn.Linear(3, 3)


def test_hooks_are_called_in_order_with_step_and_epoch_numbers():
    calls: list = []
    stages = [_Recorder(_Cfg("a"), calls), _Recorder(_Cfg("b"), calls)]
    ctl = Controller(_model(), stages, epochs=2, steps_per_epoch=3)
    for _ in range(2):
        for _ in range(3):
            ctl.step()
        ctl.epoch_end()
    steps = [c for c in calls if c[1] == "step"]
    assert steps == [(t, "step", s, 6) for s in range(6) for t in "ab"]
    assert [c for c in calls if c[1] == "epoch"] == [
        ("a", "epoch", 0, 2), ("b", "epoch", 0, 2), ("a", "epoch", 1, 2), ("b", "epoch", 1, 2)]
    assert (ctl.steps_done, ctl.epochs_done) == (6, 2)
    assert set(ctl.histograms()) == {"h/a", "h/b"}


def test_restore_continues_the_counters():
    calls: list = []
    ctl = Controller(_model(), [_Recorder(_Cfg(), calls)], epochs=3, steps_per_epoch=4)
    ctl.restore(steps_done=8, epochs_done=2)
    ctl.step()
    ctl.epoch_end()
    assert calls == [("a", "step", 8, 12), ("a", "epoch", 2, 3)]


def test_loss_adds_every_extra_term_and_lets_one_stage_replace_the_base():
    calls: list = []
    base = torch.tensor(2.0)
    x, out, y = torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)
    plain = Controller(_model(), [_Recorder(_Cfg("a"), calls), _Recorder(_Cfg("b"), calls)],
                       epochs=1, steps_per_epoch=1)
    assert plain.loss(x, out, y, base).item() == 4.0  # 2 + 1 + 1
    distill = Controller(_model(), [_Distill(_Cfg("d"), calls), _Recorder(_Cfg("b"), calls)],
                         epochs=1, steps_per_epoch=1)
    assert distill.loss(x, out, y, base).item() == 22.0  # 2 * 10 + 1 + 1


def test_two_loss_replacing_stages_are_refused_before_training():
    calls: list = []
    with pytest.raises(ValueError, match=r"at most one stage.*stage 0.*stage 2"):
        Controller(_model(), [_Distill(_Cfg(), calls), _Recorder(_Cfg(), calls),
                              _Distill(_Cfg(), calls)], epochs=1, steps_per_epoch=1)


def test_extra_terms_are_computed_without_autocast():
    calls: list = []
    ctl = Controller(_model(), [_Recorder(_Cfg(), calls)], epochs=1, steps_per_epoch=1)
    out = torch.zeros(1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        total = ctl.loss(out, out, torch.zeros(1, dtype=torch.long), torch.tensor(0.0))
    assert calls == [("a", "extra", False)]
    assert total.dtype == torch.float32


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0, "steps_per_epoch": 1}, "epochs=0"),
    ({"epochs": 1, "steps_per_epoch": -1}, "steps_per_epoch=-1"),
    ({"epochs": 1.5, "steps_per_epoch": 1}, "epochs=1.5"),
])
def test_bad_schedule_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Controller(_model(), [], **kwargs)
