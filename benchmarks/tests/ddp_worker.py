"""Run by test_engine_ddp under torchrun (or alone): train a tiny nin on synthetic data with the
Trainer and write this rank's final weights to OUT/rank<R>.safetensors."""

import sys
from pathlib import Path

import torch

from netshrink.bench.data import synthetic
from netshrink.bench.engine import DistEnv, TrainConfig, Trainer
from netshrink.core import save_checkpoint
from netshrink.models import create_model


def main() -> None:
    out = Path(sys.argv[1])
    sync_bn = sys.argv[2] == "sync-bn"
    torch.set_num_threads(1)
    env = DistEnv.from_environment("cpu")
    train = synthetic("train", 256, num_classes=4, size=16)
    test = synthetic("test", 64, num_classes=4, size=16)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3, sync_bn=sync_bn)
    torch.manual_seed(config.seed)
    model = create_model("nin", width=0.1, num_classes=4)
    trainer = Trainer(model, train, test, config, out / "run", env=env, log_every=1,
                      show_progress=False, meta={"model": model.netshrink_spec})
    trainer.fit()
    save_checkpoint(out / f"rank{env.rank}.safetensors", trainer.model)
    env.close()


if __name__ == "__main__":
    main()
