"""TrainConfig: everything that decides a training run's result, frozen and validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from netshrink.core import check_choice, check_float, check_int

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "multistep", "constant")
AMP_MODES = ("auto", "bf16", "off")


@dataclass(frozen=True)
class TrainConfig:
    """A training schedule. ``batch_size`` is the global batch (split across DDP ranks)."""

    epochs: int = 2
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training, for "multistep"
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    amp: str = "auto"  # bf16 autocast on CUDA when "auto"; never on CPU unless "bf16"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm under DDP: statistics over the global batch
    keep_checkpoints: int = 3  # per-epoch checkpoints kept in the run folder (newest)
    # Re-estimate BN running statistics over this many training batches after the last epoch
    # (cumulative average, weights untouched). Quantized nets shift their activation
    # statistics during QAT; with few steps or a low BN momentum the running estimates lag.
    recalibrate_bn: int = 0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, min_value=1)
        check_int("batch_size", self.batch_size, min_value=1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_float("lr", self.lr, min_value=0.0, min_exclusive=True)
        check_float("momentum", self.momentum, min_value=0.0, max_value=1.0)
        check_float("weight_decay", self.weight_decay, min_value=0.0)
        check_choice("schedule", self.schedule, SCHEDULES)
        object.__setattr__(self, "milestones", tuple(self.milestones))
        for m in self.milestones:
            check_float("milestones", m, min_value=0.0, max_value=1.0)
        check_float("gamma", self.gamma, min_value=0.0, min_exclusive=True)
        check_float("warmup_epochs", self.warmup_epochs, min_value=0.0,
                    max_value=float(self.epochs))
        check_float("label_smoothing", self.label_smoothing, min_value=0.0, max_value=1.0)
        check_int("seed", self.seed, min_value=0)
        check_choice("amp", self.amp, AMP_MODES)
        check_int("keep_checkpoints", self.keep_checkpoints, min_value=1)
        check_int("recalibrate_bn", self.recalibrate_bn, min_value=0)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d
