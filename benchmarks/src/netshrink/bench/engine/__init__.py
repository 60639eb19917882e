"""The training engine: config, schedules, DDP plumbing, the Trainer."""

from netshrink.bench.engine.checkpoints import checkpoint_path, latest_checkpoint
from netshrink.bench.engine.config import TrainConfig
from netshrink.bench.engine.distributed import DistEnv
from netshrink.bench.engine.finite import NonFiniteError, TrainingError
from netshrink.bench.engine.jsonfile import NonStandardJSONError, read_json, write_json
from netshrink.bench.engine.resume import ConfigMismatchError
from netshrink.bench.engine.schedule import lr_at
from netshrink.bench.engine.trainer import (
    EpochRecord,
    Trainer,
    TrainResult,
    evaluate,
    recalibrate_bn,
    write_summary,
)

__all__ = ["ConfigMismatchError", "DistEnv", "EpochRecord", "NonFiniteError",
           "NonStandardJSONError", "TrainConfig", "TrainResult", "Trainer", "TrainingError",
           "checkpoint_path", "evaluate", "latest_checkpoint", "lr_at", "read_json",
           "recalibrate_bn", "write_json", "write_summary"]
