"""The training engine: config, schedules, DDP plumbing, the Trainer."""

from netshrink.bench.engine.checkpoints import checkpoint_path, latest_checkpoint
from netshrink.bench.engine.config import TrainConfig
from netshrink.bench.engine.distributed import DistEnv
from netshrink.bench.engine.schedule import lr_at
from netshrink.bench.engine.trainer import (
    ConfigMismatchError,
    EpochRecord,
    Trainer,
    TrainResult,
    evaluate,
    recalibrate_bn,
    write_summary,
)

__all__ = ["ConfigMismatchError", "DistEnv", "EpochRecord", "TrainConfig", "TrainResult",
           "Trainer", "checkpoint_path", "evaluate", "latest_checkpoint", "lr_at", "recalibrate_bn",
           "write_summary"]
