"""The training engine: one loop for CPU, one GPU and DDP under torchrun.

Data comes from ``DeviceLoader`` (the dataset lives on the device and is augmented there in
batches), so the loop has no per-sample Python work. Every epoch ends with an evaluation on the
test split, TensorBoard scalars and an atomic checkpoint; ``fit(resume=True)`` continues from the
newest checkpoint and gives the same weights as an uninterrupted run, because everything random
is a function of the seed and the epoch, and the learning rate a function of the step.
Only rank 0 writes logs and checkpoints.

The loss of a step is the cross-entropy, or what the recipe's one stage with a
``training_loss`` hook makes of it (distillation: inputs and logits in, the KD loss out; under
DDP each rank's stage sees its own shard), plus every stage's ``extra_loss``. The recorded
``train_loss`` stays the cross-entropy, comparable between runs with and without such a stage.
Every stage hook (loss, after-step, after-epoch, histograms) is called through
``netshrink.core.Controller``, the same object a user's own training loop uses.

A run whose loss, weights or test loss become NaN or infinite stops with ``NonFiniteError``
(see ``finite``) before anything of that epoch is saved; ``--resume`` refuses a checkpoint made
with other settings, data or recipe (see ``resume``) or holding non-finite weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from netshrink.bench.data import DeviceLoader, ImageData
from netshrink.bench.engine.checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
)
from netshrink.bench.engine.config import TrainConfig
from netshrink.bench.engine.distributed import DistEnv
from netshrink.bench.engine.evaluation import evaluate, recalibrate_bn
from netshrink.bench.engine.finite import NonFiniteError, describe_parameter, first_non_finite
from netshrink.bench.engine.jsonfile import write_json
from netshrink.bench.engine.resume import ConfigMismatchError, check_resumable, data_record
from netshrink.bench.engine.schedule import lr_at
from netshrink.core import (
    Controller,
    Stage,
    flatten_optimizer_state,
    load_checkpoint,
    restore_optimizer_state,
    save_checkpoint,
    sweep_stale_temp_files,
)

__all__ = ["ConfigMismatchError", "EpochRecord", "TrainResult", "Trainer", "evaluate",
           "recalibrate_bn", "write_summary"]


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based: the epoch that just finished
    step: int  # optimizer steps done so far
    lr: float
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float  # wall time of the training part of the epoch
    model_seconds: float  # of which forward, backward and optimizer step
    images: int  # training images processed (all ranks)

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def outside_model_fraction(self) -> float:
        """Share of the epoch spent outside the model: data, augmentation, logging."""
        return max(self.seconds - self.model_seconds, 0.0) / max(self.seconds, 1e-9)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    history: list[EpochRecord]
    run_dir: Path
    last_checkpoint: Path | None

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]


class Trainer:
    """Trains ``model`` on ``train_data``, evaluates on ``test_data`` after every epoch."""

    def __init__(self, model: nn.Module, train_data: ImageData, test_data: ImageData,
                 config: TrainConfig, run_dir: str | os.PathLike[str], *,
                 env: DistEnv | None = None, stages: Sequence[Stage] = (),
                 meta: dict[str, Any] | None = None, show_progress: bool = True,
                 log_every: int = 10) -> None:
        self.env = env or DistEnv()
        self.config = config
        self.run_dir = Path(run_dir)
        self.stages = list(stages)
        self.meta = dict(meta or {})
        # recorded in every checkpoint and compared on resume (with the config and ``meta``)
        self.data_record = data_record(train_data, test_data)
        self.stages_record = [s.describe() for s in self.stages]
        self.show_progress = show_progress and self.env.is_main
        self.log_every = max(1, log_every)
        device = self.env.device
        torch.manual_seed(config.seed)

        if config.sync_bn and self.env.distributed:
            if device.type != "cuda":
                raise ValueError("sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                                 "on CPU each rank normalises over its own shard")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(device=device, memory_format=memory_format)
        self.optimizer = _make_optimizer(self.model, config)
        self.train_loader = DeviceLoader(train_data, config.batch_size, device=device,
                                         train=True, seed=config.seed, rank=self.env.rank,
                                         world_size=self.env.world_size,
                                         channels_last=config.channels_last)
        self.test_loader = DeviceLoader(test_data, config.batch_size, device=device,
                                        train=False, rank=self.env.rank,
                                        world_size=self.env.world_size,
                                        channels_last=config.channels_last)
        net: nn.Module = self.model
        if config.compile:
            net = torch.compile(net)
        if self.env.distributed:
            net = DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = net
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = self.steps_per_epoch * config.epochs
        # every stage hook is called through the controller a user's own loop uses (one code
        # path); two stages replacing the loss (training_loss) are an error here, before a step
        self.controller = Controller(self.model, self.stages, epochs=config.epochs,
                                     steps_per_epoch=self.steps_per_epoch)
        self.autocast = _autocast(config.amp, device)
        self.start_epoch = 0
        self.step = 0
        self.history: list[EpochRecord] = []
        self._writer = None

    # -- public ------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.epochs`` (or stop after ``stop_after`` epochs, for tests)."""
        if resume:
            self._resume()
        elif latest_checkpoint(self.run_dir) is not None:
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints of an earlier run; pass --resume to "
                "continue it, or choose another --out (nothing was overwritten)")
        last = latest_checkpoint(self.run_dir) if resume else None
        end = self.config.epochs if stop_after is None else min(self.config.epochs, stop_after)
        writer = self._tensorboard()
        try:
            for epoch in range(self.start_epoch, end):
                record = self._train_epoch(epoch)
                self.history.append(record)
                if writer is not None:
                    _log_epoch(writer, record)
                    for tag, values in self.controller.histograms().items():
                        writer.add_histogram(tag, values.detach().float().cpu(), record.step)
                last = self._save(epoch + 1)
        finally:
            if writer is not None:
                writer.close()
        return TrainResult(history=list(self.history), run_dir=self.run_dir,
                           last_checkpoint=last)

    def evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy) on the test split, summed over all ranks."""
        return evaluate(self.model, self.test_loader, self.env, self.autocast)

    # -- one epoch ---------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> EpochRecord:
        cfg = self.config
        self.model.train()
        self.train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.env.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.env.device)
        # sum of every step's total loss: NaN/inf stays in it, so one look per logging
        # interval (at the sync the logging pays anyway) sees any non-finite step
        guard = torch.zeros((), dtype=torch.float64, device=self.env.device)
        checked = self.step  # steps up to here are known to be finite
        seen = 0
        model_seconds = 0.0
        writer = self._writer
        progress = _progress(self.show_progress, f"epoch {epoch + 1}/{cfg.epochs}",
                             self.steps_per_epoch)
        start = time.perf_counter()
        with progress as bar:
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=self.steps_per_epoch)
            for x, y in self.train_loader:
                t0 = time.perf_counter()
                lr = lr_at(self.step, self.total_steps, self.steps_per_epoch, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self.autocast:
                    logits = self.net(x)
                    loss = F.cross_entropy(logits.float(), y,
                                           label_smoothing=cfg.label_smoothing)
                    # under autocast, as a teacher must be; extra terms in full precision
                    total = self.controller.loss(x, logits, y, loss)
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
                self.controller.step()
                model_seconds += time.perf_counter() - t0
                detached = loss.detach()
                loss_sum += detached.double() * y.numel()
                guard += total.detach().double()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.numel()
                self.step += 1
                if self.step % self.log_every == 0 or self.step == self.total_steps:
                    global_loss, guard_total = self._global_mean(detached, guard)
                    if not math.isfinite(guard_total):
                        raise self._diverged(epoch, checked)
                    checked = self.step
                    if writer is not None:
                        writer.add_scalar("train/loss", global_loss, self.step)
                        writer.add_scalar("train/lr", lr, self.step)
                bar.advance(task)
        seconds = time.perf_counter() - start
        if epoch + 1 == cfg.epochs and cfg.recalibrate_bn:
            recalibrate_bn(self.model, self.train_loader, cfg.recalibrate_bn, self.autocast)
        self._average_buffers()
        self.controller.epoch_end()
        bad_weight = first_non_finite(self.model)
        loss_total, correct_total, n, guard_total, bad_ranks = self.env.all_reduce_sum(
            [loss_sum.item(), float(correct.item()), float(seen), guard.item(),
             float(bad_weight is not None)])
        if not (math.isfinite(guard_total) and math.isfinite(loss_total)):
            raise self._diverged(epoch, checked)
        if bad_ranks:  # every rank sees the reduced flag, so all stop together
            raise NonFiniteError(
                f"training diverged: after epoch {epoch + 1} (step {self.step}) the model "
                f"holds non-finite values; {describe_parameter(bad_weight)}. Nothing of this "
                "epoch was saved; lower the learning rate or check the recipe",
                epoch=epoch + 1, step=self.step, parameter=bad_weight)
        test_loss, test_acc = self.evaluate()
        if not math.isfinite(test_loss):
            raise NonFiniteError(
                f"the test loss is {test_loss} after epoch {epoch + 1} (step {self.step}): "
                "the model's outputs overflow although its weights are finite. Nothing of this "
                "epoch was saved", epoch=epoch + 1, step=self.step)
        return EpochRecord(epoch=epoch + 1, step=self.step, lr=lr,
                           train_loss=loss_total / max(n, 1),
                           train_accuracy=correct_total / max(n, 1), test_loss=test_loss,
                           test_accuracy=test_acc, seconds=seconds,
                           model_seconds=model_seconds, images=int(n))

    def _average_buffers(self) -> None:
        """Average BN running statistics over ranks: each rank normalised its own shard, so
        its running estimates differ; the average is the better estimate and makes every rank
        evaluate and save the same model."""
        if not self.env.distributed:
            return
        for buf in self.model.buffers():
            if buf.is_floating_point():
                torch.distributed.all_reduce(buf)
                buf.div_(self.env.world_size)

    def _global_mean(self, value: torch.Tensor, guard: torch.Tensor) -> tuple[float, float]:
        """(mean of ``value`` over ranks, sum of ``guard`` over ranks), with one sync: the
        reduced guard is the same on every rank, so a NaN on one rank stops all of them."""
        t = torch.stack([value.double(), guard.double()])
        if self.env.distributed:
            torch.distributed.all_reduce(t)
        mean, total = t.tolist()
        return mean / self.env.world_size, total

    def _diverged(self, epoch: int, checked: int) -> NonFiniteError:
        bad = first_non_finite(self.model)
        return NonFiniteError(
            f"training diverged: the loss became non-finite (NaN or infinite) in epoch "
            f"{epoch + 1}, between step {checked + 1} and step {self.step}; "
            f"{describe_parameter(bad)}. Nothing of this epoch was saved; lower the learning "
            "rate or check the recipe", epoch=epoch + 1, step=self.step, parameter=bad)

    # -- checkpoints ---------------------------------------------------------------------
    def _save(self, epochs_done: int) -> Path | None:
        path = checkpoint_path(self.run_dir, epochs_done)
        if not self.env.is_main:
            self.env.barrier()
            return path
        optim_tensors, optim_record = flatten_optimizer_state(self.optimizer)
        extra = dict(optim_tensors)
        extra["rng.cpu"] = torch.get_rng_state()
        meta = dict(self.meta)
        meta["train"] = {
            "epochs_done": epochs_done, "step": self.step, "config": self.config.as_dict(),
            "world_size": self.env.world_size, "optimizer": optim_record,
            "history": [dataclasses.asdict(r) for r in self.history],
            "data": self.data_record, "stages": self.stages_record,
        }
        meta.setdefault("recipe", [s.describe() for s in self.stages])
        save_checkpoint(path, self.model, meta=meta, extra=extra)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        self.env.barrier()
        return path

    def _resume(self) -> None:
        if self.env.is_main:  # temp files of checkpoint writes killed mid-way (kill -9)
            sweep_stale_temp_files(self.run_dir / "checkpoints")
        path = latest_checkpoint(self.run_dir)
        if path is None:
            if self.env.is_main:
                print(f"resume: no checkpoint in {self.run_dir / 'checkpoints'}; starting fresh")
            return
        ckpt = load_checkpoint(path)
        train = ckpt.meta.get("train")
        if not isinstance(train, dict):
            raise ConfigMismatchError(f"{path} holds no training state; cannot resume from it")
        check_resumable(self.run_dir, ckpt.meta, config=self.config.as_dict(),
                        data=self.data_record, stages=self.stages_record, meta=self.meta)
        self.model.load_state_dict(ckpt.model_state)
        bad = first_non_finite(self.model)
        if bad is not None:
            raise NonFiniteError(
                f"cannot resume {self.run_dir}: checkpoint {path} holds non-finite weights "
                f"({describe_parameter(bad)}); the run diverged before it was saved. Start "
                "afresh in a new --out", epoch=int(train["epochs_done"]),
                step=int(train["step"]), parameter=bad)
        restore_optimizer_state(self.optimizer, ckpt.extra, train["optimizer"])
        if "rng.cpu" in ckpt.extra:
            torch.set_rng_state(ckpt.extra["rng.cpu"])
        self.start_epoch = int(train["epochs_done"])
        self.step = int(train["step"])
        self.controller.restore(steps_done=self.step, epochs_done=self.start_epoch)
        self.history = [EpochRecord(**r) for r in train.get("history", [])]
        if self.env.is_main:
            print(f"resume: continuing {self.run_dir} after epoch {self.start_epoch}")

    # -- logging -----------------------------------------------------------------------
    def _tensorboard(self):
        if not self.env.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                     purge_step=self.step if self.step else None)
        return self._writer


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _log_epoch(writer, record: EpochRecord) -> None:
    step = record.step
    writer.add_scalar("test/accuracy", record.test_accuracy, step)
    writer.add_scalar("test/loss", record.test_loss, step)
    writer.add_scalar("train/epoch_loss", record.train_loss, step)
    writer.add_scalar("train/accuracy", record.train_accuracy, step)
    writer.add_scalar("perf/images_per_second", record.images_per_second, step)
    writer.add_scalar("perf/outside_model_fraction", record.outside_model_fraction, step)
    writer.flush()


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        pass


def _progress(show: bool, description: str, total: int):
    if not show:
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def write_summary(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON file atomically, as standard JSON: a NaN or infinite value raises
    ``NonStandardJSONError`` naming its key (see ``jsonfile``)."""
    write_json(path, payload)
