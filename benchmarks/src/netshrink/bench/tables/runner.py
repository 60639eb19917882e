"""Run a results table: build, train and measure each row, with caching and resume.

Each row's result is cached under ``results/<table>/<row>.json`` together with the hash of
everything that decides it (its spec under the profile, its upstream's hash, the dataset and
the device type); a row whose hash matches is skipped. Training goes through the normal
Trainer in ``runs/<table>/<row>/`` with ``resume=True``, so an interrupted row continues from
its last epoch. Under torchrun every rank runs the loop (training is DDP); rank 0 writes.

Two processes (two ``bench reproduce``) may share a runs folder: each row is run under an
exclusive lock on ``runs/<table>/.<row>.lock`` (beside the row's folder, which may be deleted
and recreated), held from the claim of the folder to the written result and released by the OS
if the process dies. The second process waits for the row (then finds it cached) or, with
``wait_for_lock=False``, stops with RowBusyError naming the holder's pid and the lock file.
Under torchrun only rank 0 takes the lock; the ranks poll together, so none of them sits in a
collective that could time out while the other process trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.bench.data import DeviceLoader, ImageData, load_dataset
from netshrink.bench.engine import DistEnv, TrainConfig, Trainer, evaluate, read_json, write_summary
from netshrink.bench.tables.measure import measure_latency, packed_size
from netshrink.bench.tables.profiles import Profile
from netshrink.bench.tables.spec import Row, Table
from netshrink.core import (
    FileLock,
    LockHeldError,
    ModelStats,
    load_checkpoint,
    stage_from_description,
    sweep_stale_temp_files,
    write_atomic,
    write_text_atomic,
)
from netshrink.models import create_model, load_model, save_model

FINAL = "final.safetensors"
MARKER = "spec_hash"


class RowBusyError(LockHeldError):
    """Another process holds the row's lock and the run was told not to wait for it."""


@dataclasses.dataclass(frozen=True)
class RunContext:
    table: Table
    profile: Profile
    env: DistEnv
    results_dir: Path
    runs_dir: Path
    train_data: ImageData
    test_data: ImageData
    show_progress: bool = True
    seed: int = 0
    wait_for_lock: bool = True  # a row another process is running: wait for it, or fail
    lock_poll_seconds: float = 0.5

    def result_path(self, row: Row) -> Path:
        return self.results_dir / self.table.name / f"{row.name}.json"

    def run_dir(self, row: Row | str) -> Path:
        return self.runs_dir / self.table.name / (row if isinstance(row, str) else row.name)

    def lock_path(self, row: Row | str) -> Path:
        """The row's lock file: beside its run folder, never inside it."""
        name = row if isinstance(row, str) else row.name
        return self.runs_dir / self.table.name / f".{name}.lock"


def load_table_data(table: Table, profile: Profile, data_dir: Path,
                    download: bool = False) -> tuple[ImageData, ImageData]:
    train = load_dataset(table.dataset, "train", data_dir, download=download)
    test = load_dataset(table.dataset, "test", data_dir)
    return _limit(train, profile.train_limit), _limit(test, profile.test_limit)


def _limit(data: ImageData, n: int | None) -> ImageData:
    if n is None or n >= len(data):
        return data
    return dataclasses.replace(data, images=data.images[:n], labels=data.labels[:n])


def row_hash(row: Row, ctx: RunContext, upstream_hash: str | None,
             teacher_hash: str | None = None) -> str:
    record = {"row": row.record(ctx.profile.name), "profile": dataclasses.asdict(ctx.profile),
              "upstream": upstream_hash, "dataset": ctx.table.dataset,
              "train_images": len(ctx.train_data), "test_images": len(ctx.test_data),
              "device": ctx.env.device.type, "world_size": ctx.env.world_size,
              "seed": ctx.seed}
    if teacher_hash is not None:  # only then: the hashes of rows without a teacher stay
        record["teacher"] = teacher_hash
    return hashlib.sha256(json.dumps(record, sort_keys=True, allow_nan=False).encode()
                          ).hexdigest()[:16]


def run_table(ctx: RunContext, rows: list[Row], *,
              on_row: Callable[[Row, str], None] | None = None) -> list[dict[str, Any]]:
    """Run ``rows`` (with their upstream rows already included, in order); return results."""
    hashes: dict[str, str] = {}
    results = []
    for row in rows:
        upstream_hash = hashes.get(row.upstream) if row.upstream else None
        teacher_hash = hashes.get(row.teacher) if row.teacher else None
        h = row_hash(row, ctx, upstream_hash, teacher_hash)
        hashes[row.name] = h
        cached = _cached(ctx, row, h)
        if cached is not None:
            if on_row:
                on_row(row, "cached")
            results.append(cached)
            continue
        with _row_lock(ctx, row.name, on_wait=(lambda msg, r=row: on_row(r, msg)) if on_row
                       else None):
            cached = _cached(ctx, row, h)  # another process may have just finished it
            state = "cached"
            if cached is None:
                cached = _reuse(ctx, row, h)
                state = f"reused from {cached['reused_from']}" if cached else state
            if cached is None:
                if on_row:
                    on_row(row, "running")
                cached = _run_row(ctx, row, h, upstream_hash, teacher_hash)
            elif on_row:
                on_row(row, state)
        results.append(cached)
    return results


@contextlib.contextmanager
def _row_lock(ctx: RunContext, name: str,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold row ``name``'s lock (rank 0 takes it; every rank waits for it) for the block.

    The ranks poll together (one small all-reduce per poll), so that no rank waits in a
    barrier, whose timeout could expire, while another process runs the row. On a normal exit
    the ranks meet at a barrier before rank 0 releases the lock.
    """
    env = ctx.env
    path = ctx.lock_path(name)
    lock = FileLock(path) if env.is_main else None
    told = False
    try:
        while True:
            got = lock.try_acquire() if lock is not None else False
            pid = (lock.holder_pid() or 0) if lock is not None and not got else 0
            got_any, holder = env.all_reduce_sum([float(got), float(pid)])
            if got_any:
                break
            pid_seen = int(holder) if holder else None
            message = (f"row {ctx.table.name}/{name} is being trained by another process "
                       f"(pid {pid_seen or 'unknown'}, lock file {path})")
            if not ctx.wait_for_lock:
                raise RowBusyError(path, pid_seen, message + "; run again later, or wait for "
                                   "it (without --no-wait)")
            if not told and on_wait is not None:
                on_wait(message + "; waiting")
                told = True
            time.sleep(ctx.lock_poll_seconds)
        yield
        env.barrier()
    finally:
        if lock is not None:
            lock.release()


def _cached(ctx: RunContext, row: Row, h: str) -> dict[str, Any] | None:
    path = ctx.result_path(row)
    if not path.is_file() or not (ctx.run_dir(row) / FINAL).is_file():
        return None
    try:
        result = read_json(path)
    except ValueError:  # truncated, or holds NaN/Infinity: not a result to reuse; rerun
        return None
    return result if isinstance(result, dict) and result.get("spec_hash") == h else None


def _run_row(ctx: RunContext, row: Row, h: str, upstream_hash: str | None,
             teacher_hash: str | None = None) -> dict[str, Any]:
    """Claim the run folder, build, train and measure the row, write its result. The caller
    holds the row's lock."""
    started = time.time()
    env = ctx.env
    run_dir = ctx.run_dir(row)
    _claim_run_dir(run_dir, h, env)
    seed = ctx.seed + row.seed
    torch.manual_seed(seed)
    model, upstream_recipe = _starting_model(ctx, row, upstream_hash)
    teacher = (_load_row_model(ctx, row, row.teacher, teacher_hash)[:2]
               if row.teacher is not None else None)
    example = ctx.test_data.images[:1].float()
    stages = []
    for record in row.stages:
        stage = stage_from_description(record)
        if teacher is not None and hasattr(stage, "set_teacher"):
            stage.set_teacher(*teacher)  # before apply, which checks it against the student
        stage.use_data(_training_batches(ctx))
        model = stage.apply(model)
        stages.append(stage)
    if teacher is not None and not any(hasattr(s, "set_teacher") for s in stages):
        raise ValueError(f"row {ctx.table.name}/{row.name} names the teacher {row.teacher!r}, "
                         "but none of its stages takes a teacher (e.g. a 'distill.kd' stage)")
    recipe = upstream_recipe + [s.describe() for s in stages]
    epochs = row.schedule.epochs[ctx.profile.name]
    history: list[dict[str, Any]] = []
    meta = {"model": model.netshrink_spec, "recipe": recipe}
    before: float | None = None
    if _wants_before_training(ctx, row):  # right after the stages
        before = evaluate(model.to(env.device).eval(), _test_loader(ctx), env)[1]
        model.train()
    if epochs > 0:
        config = TrainConfig(epochs=epochs, batch_size=row.schedule.batch_size,
                             optimizer=row.schedule.optimizer, lr=row.schedule.lr,
                             weight_decay=row.schedule.weight_decay,
                             schedule=row.schedule.schedule, seed=seed,
                             recalibrate_bn=row.schedule.recalibrate_bn,
                             channels_last=ctx.profile.channels_last)
        trainer = Trainer(model, ctx.train_data, ctx.test_data, config, run_dir, env=env,
                          stages=stages, meta=meta, show_progress=ctx.show_progress)
        result = trainer.fit(resume=True)
        model = trainer.model
        history = [dataclasses.asdict(r) for r in result.history]
        recipe = upstream_recipe + [s.describe() for s in stages]  # stages may record more
    model = model.to(device=env.device, memory_format=torch.contiguous_format).eval()
    test_loss, accuracy = evaluate(model, _test_loader(ctx), env)
    if not env.is_main:
        return {}
    model = model.cpu()
    save_model(run_dir / FINAL, model, recipe=recipe)
    stats = ModelStats.measure(model, example)
    size_bytes, size_file = packed_size(model, run_dir)
    metrics: dict[str, Any] = {
        "accuracy": accuracy, "test_loss": test_loss, "params": stats.params,
        "macs": stats.macs, "gmacs": stats.gmacs, "float_bytes": stats.float_bytes,
        "packed_bytes": stats.packed_bytes, "size_bytes": size_bytes, "size_file": size_file,
    }
    if before is not None:
        metrics["accuracy_before_training"] = before
    if row.latency:
        metrics["latency_ms"] = measure_latency(model, tuple(example.shape[1:]))
    if row.name in ctx.table.deploy_rows:
        metrics["deploy"] = _deploy_metrics(ctx, model, run_dir)
    teacher_info = _teacher_info(ctx, row)
    if teacher_info is not None:
        metrics["teacher_accuracy"] = teacher_info["accuracy"]
    result = {
        "table": ctx.table.name, "row": row.name, "label": row.label,
        **({"teacher": teacher_info} if teacher_info is not None else {}),
        "profile": ctx.profile.name, "profile_settings": dataclasses.asdict(ctx.profile),
        "spec_hash": h, "spec": row.record(ctx.profile.name),
        "recipe": recipe, "metrics": metrics, "history": history,
        "dataset": {"name": ctx.table.dataset, "train_images": len(ctx.train_data),
                    "test_images": len(ctx.test_data)},
        "device": str(env.device), "world_size": env.world_size, "seed": seed,
        "torch": torch.__version__, "python": platform.python_version(),
        "git_commit": _git_commit(), "date": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": time.time() - started,
    }
    path = ctx.result_path(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_summary(path, result)
    return result


def _reuse(ctx: RunContext, row: Row, h: str) -> dict[str, Any] | None:
    """The same row (same name and spec hash) finished in another table's folders: its model
    files are copied into this table's folder and its result is this table's, so that a chain
    several tables share (a float model, its pruned form) trains once per ``--table all``.
    None when there is none. Single-process runs only (one writer)."""
    if ctx.env.world_size != 1 or not ctx.results_dir.is_dir():
        return None
    for other in sorted(ctx.results_dir.iterdir()):
        src = ctx.runs_dir / other.name / row.name
        marker = src / MARKER
        if other.name == ctx.table.name or not (other / f"{row.name}.json").is_file() \
                or not marker.is_file() or not (src / FINAL).is_file():
            continue
        try:
            result = read_json(other / f"{row.name}.json")
        except ValueError:
            continue
        if not isinstance(result, dict) or result.get("spec_hash") != h \
                or marker.read_text().strip() != h:
            continue
        if _wants_before_training(ctx, row) and "accuracy_before_training" not in \
                result.get("metrics", {}):  # that table did not measure what this one reports
            continue
        run_dir = ctx.run_dir(row)
        _claim_run_dir(run_dir, h, ctx.env)
        packed = str(result.get("metrics", {}).get("size_file", FINAL))
        files = {FINAL, packed} if Path(packed).name == packed else {FINAL}  # plain names only
        for name in sorted(n for n in files if (src / n).is_file()):
            write_atomic(run_dir / name, lambda tmp, s=src / name: shutil.copyfile(s, tmp))
        if marker.read_text().strip() != h:  # retrained under another spec while we copied
            continue
        metrics = dict(result["metrics"])
        metrics.pop("deploy", None)  # measured again here if this table asks for it
        if row.name in ctx.table.deploy_rows:
            metrics["deploy"] = _deploy_metrics(ctx, load_model(run_dir / FINAL).eval(), run_dir)
        result = {**result, "table": ctx.table.name, "metrics": metrics,
                  "reused_from": f"{other.name}/{row.name}"}
        ctx.result_path(row).parent.mkdir(parents=True, exist_ok=True)
        write_summary(ctx.result_path(row), result)
        return result
    return None


def _wants_before_training(ctx: RunContext, row: Row) -> bool:
    """Whether ``ctx.table`` reports ``row``'s accuracy right after its stages (before its
    training): a table option, for rows that have stages and train after them."""
    return (ctx.table.before_training and bool(row.stages)
            and row.schedule.epochs[ctx.profile.name] > 0)


def _deploy_metrics(ctx: RunContext, model: nn.Module, run_dir: Path) -> dict[str, Any]:
    from netshrink.bench.tables.deploy import measure_deployment  # loads onnx on first use

    return measure_deployment(model, ctx.test_data, run_dir)


def _test_loader(ctx: RunContext) -> DeviceLoader:
    env = ctx.env
    return DeviceLoader(ctx.test_data, 256, device=env.device, train=False, rank=env.rank,
                        world_size=env.world_size)


def _starting_model(ctx: RunContext, row: Row, upstream_hash: str | None
                    ) -> tuple[nn.Module, list[dict[str, Any]]]:
    if row.upstream is not None:
        model, _, recipe = _load_row_model(ctx, row, row.upstream, upstream_hash)
        return model.train(), recipe
    kwargs = dict(row.model_kwargs)
    if not row.model.startswith("tv:"):
        kwargs["width"] = kwargs.get("width", 1.0) * ctx.profile.width
    kwargs.setdefault("num_classes", ctx.train_data.num_classes)
    return create_model(row.model, **kwargs), []


def _teacher_info(ctx: RunContext, row: Row) -> dict[str, Any] | None:
    """The teacher ``row``'s model learnt from, as ``{"row", "label", "accuracy"}``: its own
    (``row.teacher``), else its upstream's (a pruned or quantized distilled student); None
    when there is none. From their result files, which ``run_table`` wrote before this row."""
    source = row.teacher or row.upstream
    if source is None:
        return None
    try:
        result = read_json(ctx.result_path(ctx.table.row(source)))
    except (OSError, ValueError):
        return None
    if row.teacher is None:
        return result.get("teacher")
    return {"row": row.teacher, "label": result.get("label"),
            "accuracy": result["metrics"]["accuracy"]}


def _load_row_model(ctx: RunContext, row: Row, source: str, source_hash: str | None
                    ) -> tuple[nn.Module, Path, list[dict[str, Any]]]:
    """Row ``source``'s final model, its path and recipe, for ``row`` (its upstream or its
    teacher). Under ``source``'s lock: another process may be retraining it with another spec."""
    with _row_lock(ctx, source):
        run_dir = ctx.run_dir(source)
        marker = run_dir / MARKER
        found = marker.read_text().strip() if marker.is_file() else None
        if found is not None and found != source_hash:  # no marker: an older runs folder
            role = "upstream" if source == row.upstream else "teacher"
            raise RuntimeError(
                f"row {ctx.table.name}/{row.name} needs {run_dir / FINAL} (its {role}), but "
                f"that folder now holds spec {found}, not {source_hash}: another process "
                f"retrained the {role} row with a different spec meanwhile; run again")
        path = run_dir / FINAL
        recipe = list(load_checkpoint(path).meta.get("recipe", []))
        return load_model(path), path, recipe


def _training_batches(ctx: RunContext, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few unaugmented training batches for stages that need data (``Stage.use_data``)."""
    loader = DeviceLoader(ctx.train_data, 128, device="cpu", train=False)
    return [batch for _, batch in zip(range(n), loader, strict=False)]


def _claim_run_dir(run_dir: Path, h: str, env: DistEnv) -> None:
    """A run folder belongs to one spec hash; a changed spec starts the folder afresh. A kept
    folder (a resumed run) loses the temp files of atomic writes its killed runs left behind.

    Only with the row's lock held (``_row_lock``): the lock is what guarantees that the folder
    deleted here is not one another live process is training in.
    """
    marker = run_dir / MARKER
    if env.is_main:
        if run_dir.exists() and (not marker.is_file() or marker.read_text().strip() != h):
            shutil.rmtree(run_dir)
        else:
            sweep_stale_temp_files(run_dir, recursive=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, h + "\n")
    env.barrier()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None
