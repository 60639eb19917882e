"""Run by test_engine_nonfinite under torchrun with 2 processes: rank 1 alone gets a NaN loss
at its third step; each rank writes OUT/rank<R>.json with the epoch and step its
NonFiniteError names (both must stop, at the same step)."""

import json
import sys
from pathlib import Path

import torch

from netshrink.bench.data import synthetic
from netshrink.bench.engine import DistEnv, NonFiniteError, TrainConfig, Trainer
from netshrink.models import create_model


class _NaNOnRank1:
    """Stage-like hooks: rank 1's third step gets a NaN loss term (with NaN gradients)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.step = 0

    def extra_loss(self, model):
        if self.rank == 1 and self.step == 2:
            return next(model.parameters()).sum() * float("nan")
        return None

    def after_step(self, model, step, total_steps):
        self.step = step + 1

    def after_epoch(self, model, epoch, epochs):
        pass

    def histograms(self, model):
        return {}

    def describe(self):
        return {"kind": "test.nan_on_rank1", "config": {}}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    env = DistEnv.from_environment("cpu")
    train = synthetic("train", 256, num_classes=4, size=16)
    test = synthetic("test", 64, num_classes=4, size=16)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3)
    torch.manual_seed(config.seed)
    model = create_model("nin", width=0.1, num_classes=4)
    trainer = Trainer(model, train, test, config, out / "run", env=env, log_every=1,
                      show_progress=False, meta={"model": model.netshrink_spec},
                      stages=[_NaNOnRank1(env.rank)])
    try:
        trainer.fit()
    except NonFiniteError as err:
        (out / f"rank{env.rank}.json").write_text(json.dumps({"epoch": err.epoch,
                                                              "step": err.step}))
    env.close()


if __name__ == "__main__":
    main()
