"""``bench train``: train one model on one dataset (CPU, CUDA, or DDP under torchrun).

``--teacher CHECKPOINT`` trains by knowledge distillation (``netshrink.distill``): the teacher
is loaded with ``load_model`` (the safe loader) before any data, checked against the dataset's
classes and input once the data is there, evaluated on the test split, and recorded in the
checkpoints' meta and summary.json. The student's model.safetensors does not need it to load.

``--recipe FILE`` runs a recipe file on MODEL instead (``bench compress``'s code path: the
tables' engine, one run folder per step under ``OUT/runs/compress/``, resumed when run again).
The recipe's steps give the training (their ``train`` tables) and the model's arguments
(``model_kwargs``), so the options that set those here (``RECIPE_EXCLUDES``: --epochs, --lr,
--width, --teacher, ...) are an error beside --recipe, naming them; --model, --out, --dataset,
--data-dir, --download, --device, --seed and --progress apply.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from netshrink.bench.cli import validate
from netshrink.bench.cli.compress import run_recipe
from netshrink.bench.cli.stats import model_kwargs
from netshrink.bench.data import load_dataset, resolve_data_root
from netshrink.bench.data.dataset import MNIST_SPLITS
from netshrink.bench.engine import (
    DistEnv,
    NonFiniteError,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    write_summary,
)
from netshrink.bench.engine.evaluation import evaluate
from netshrink.core import ModelStats
from netshrink.distill import DistillConfig, DistillStage
from netshrink.models import create_model, load_model, save_model

#: Distillation defaults when --teacher is given without --kd-alpha / --kd-temperature.
KD_ALPHA = DistillConfig.alpha
KD_TEMPERATURE = DistillConfig.temperature
#: Options that set what a recipe sets itself (training, model arguments, distillation) or that
#: the tables' engine fixes (amp, channels_last, ...): an error beside --recipe.
RECIPE_EXCLUDES = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                   "schedule", "warmup_epochs", "width", "block_order", "amp", "channels_last",
                   "compile", "sync_bn", "log_every", "mnist_split", "teacher", "kd_alpha",
                   "kd_temperature")


def train(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            help="Run folder: checkpoints/, tensorboard/, summary.json, model.safetensors."
        ),
    ],
    model: Annotated[
        str, typer.Option(help="Model name, e.g. nin, nin_gc, resnet18_cifar, tv:resnet18.")
    ] = "nin",
    dataset: Annotated[str, typer.Option(help="cifar10, mnist or synthetic.")] = "cifar10",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Data root (torchvision layout); default $NETSHRINK_DATA, "
            "else ~/.cache/netshrink/data."
        ),
    ] = None,
    download: Annotated[
        bool, typer.Option(help="Download the dataset (with checksum check) if it is absent.")
    ] = False,
    mnist_split: Annotated[
        str,
        typer.Option(help="MNIST: official, from-test (split the 10k test set 8000/2000) or auto."),
    ] = "auto",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 2,
    batch_size: Annotated[
        int, typer.Option(help="Global batch size (split across DDP ranks).")
    ] = 128,
    optimizer: Annotated[str, typer.Option(help="sgd or adam.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum (Nesterov).")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 5e-4,
    schedule: Annotated[str, typer.Option(help="cosine, multistep or constant.")] = "cosine",
    warmup_epochs: Annotated[float, typer.Option(help="Linear warm-up length in epochs.")] = 0.0,
    width: Annotated[float, typer.Option(help="Width multiplier (netshrink's own models).")] = 1.0,
    block_order: Annotated[
        str | None, typer.Option(help="nin/nin_gc block order: cbap or bacp.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed (weights, data order, augmentation).")] = 0,
    amp: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA), bf16 or off.")] = "auto",
    channels_last: Annotated[
        bool, typer.Option(help="Use the channels_last memory format.")
    ] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    sync_bn: Annotated[bool, typer.Option(help="SyncBatchNorm under DDP.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")
    ] = False,
    log_every: Annotated[int, typer.Option(help="Log the training loss every N steps.")] = 10,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    teacher: Annotated[
        Path | None,
        typer.Option(help="Distil from this model checkpoint (model.safetensors of an "
                     "earlier bench train); it must predict the dataset's classes."),
    ] = None,
    kd_alpha: Annotated[
        float | None,
        typer.Option(help=f"With --teacher: weight of the distillation term in [0, 1] "
                     f"(default {KD_ALPHA}); 1 - alpha weighs the cross-entropy."),
    ] = None,
    kd_temperature: Annotated[
        float | None,
        typer.Option(help=f"With --teacher: softmax temperature T > 0 (default "
                     f"{KD_TEMPERATURE})."),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="Run this recipe file on MODEL instead (as bench compress does; see "
                     "docs/compress.md); the recipe sets the training and model arguments."),
    ] = None,
) -> None:
    """Train MODEL on DATASET (or run a --recipe on it); print accuracy, GMACs, params and
    size."""
    if recipe is not None:
        _check_recipe_options(ctx)
        run_recipe(model, recipe, out, dataset=dataset, device=device, data_dir=data_dir,
                   download=download, seed=seed, progress=progress)
        return
    try:
        config = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            schedule=schedule,
            warmup_epochs=warmup_epochs,
            seed=seed,
            amp=amp,
            channels_last=channels_last,
            compile=compile,
            sync_bn=sync_bn,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    _check_options(out=out, model=model, dataset=dataset, mnist_split=mnist_split, width=width,
                   block_order=block_order, device=device, resume=resume)
    distill = _distill_stage(teacher, kd_alpha, kd_temperature)  # before any data is loaded
    env = DistEnv.from_environment(device)
    try:
        _train(
            env,
            config,
            out=out,
            model=model,
            dataset=dataset,
            data_dir=data_dir,
            download=download,
            mnist_split=mnist_split,
            width=width,
            block_order=block_order,
            resume=resume,
            log_every=log_every,
            progress=progress,
            distill=distill,
        )
    finally:
        env.close()


def _check_recipe_options(ctx: typer.Context) -> None:
    """None of ``RECIPE_EXCLUDES`` given (on the command line or from the environment)."""
    # by name: typer bundles its own click, whose ParameterSource is not click's
    sources = {name: getattr(ctx.get_parameter_source(name), "name", None)
               for name in RECIPE_EXCLUDES}
    given = [f"--{name.replace('_', '-')}" for name, source in sources.items()
             if source not in (None, "DEFAULT", "DEFAULT_MAP")]
    if given:
        raise typer.BadParameter(
            f"{', '.join(given)} cannot be combined with --recipe: the recipe's steps set the "
            "training (their train tables) and the model's arguments (model_kwargs); edit the "
            "recipe instead (options that apply: --model, --out, --dataset, --data-dir, "
            "--download, --device, --seed, --progress)")


def _distill_stage(teacher: Path | None, alpha: float | None,
                   temperature: float | None) -> DistillStage | None:
    """The distillation stage of ``--teacher`` (None without one): options checked, teacher
    loaded with the safe loader (a file that is not a checkpoint is one error line)."""
    if teacher is None:
        given = [name for name, value in (("--kd-alpha", alpha),
                                          ("--kd-temperature", temperature)) if value is not None]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise typer.BadParameter(f"{' and '.join(given)} {verb} --teacher CHECKPOINT (the "
                                     "model to distil from)")
        return None
    alpha = KD_ALPHA if alpha is None else alpha
    temperature = KD_TEMPERATURE if temperature is None else temperature
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise typer.BadParameter(f"--kd-alpha {alpha} is not allowed; it must be between 0 "
                                 "and 1 (the weight of the distillation term)")
    validate.check_positive("--kd-temperature", temperature)
    validate.check_in_file("--teacher", teacher, "a model checkpoint (the model.safetensors "
                           "of an earlier bench train)")
    config = DistillConfig(alpha=alpha, temperature=temperature)
    path = teacher.expanduser().resolve()
    return DistillStage(config, load_model(path), teacher_path=path)


def _check_teacher(stage: DistillStage, example: torch.Tensor, num_classes: int,
                   dataset: str) -> None:
    """The teacher takes the dataset's images and predicts its number of classes."""
    path = stage.describe()["teacher"]["checkpoint"]
    assert stage.teacher is not None
    validate.check_runs_on(stage.teacher, example, f"the teacher {path}")
    with torch.no_grad():
        classes = int(stage.teacher(example).shape[-1])
    if classes != num_classes:
        raise typer.BadParameter(f"--teacher {path} predicts {classes} classes, but {dataset} "
                                 f"has {num_classes}; distil from a model of this dataset")


def _check_options(*, out: Path, model: str, dataset: str, mnist_split: str, width: float,
                   block_order: str | None, device: str, resume: bool) -> None:
    """Everything that can be checked before the data is loaded (which takes seconds)."""
    validate.check_positive("--width", width)
    validate.check_dataset(dataset)
    validate.check_choice("--mnist-split", mnist_split, MNIST_SPLITS)
    validate.check_device(device)
    validate.check_model_name(model)
    # the dataset's channels and classes are not known yet: 3 and 10 stand in for them
    kwargs = model_kwargs(model, width=width, num_classes=10, in_channels=3)
    if block_order is not None:
        kwargs["block_order"] = block_order
    validate.check_model_args(model, **kwargs)
    validate.check_out_folder("--out", out)
    if not resume and latest_checkpoint(out) is not None:
        raise typer.BadParameter(f"--out {out} already holds checkpoints of an earlier run; pass "
                                 "--resume to continue it, or choose another --out (nothing "
                                 "was overwritten)")


def _train(
    env: DistEnv,
    config: TrainConfig,
    *,
    out: Path,
    model: str,
    dataset: str,
    data_dir: Path | None,
    download: bool,
    mnist_split: str,
    width: float,
    block_order: str | None,
    resume: bool,
    log_every: int,
    progress: bool,
    distill: DistillStage | None = None,
) -> None:
    started = time.time()
    root = resolve_data_root(data_dir)
    if download and env.is_main:  # one rank downloads, the others wait and then read
        load_dataset(dataset, "train", root, download=True, mnist_split=mnist_split)
    env.barrier()
    train_data = load_dataset(dataset, "train", root, mnist_split=mnist_split)
    test_data = load_dataset(dataset, "test", root, mnist_split=mnist_split)
    in_channels = int(train_data.images.shape[1])
    kwargs = model_kwargs(
        model, width=width, num_classes=train_data.num_classes, in_channels=in_channels
    )
    if block_order is not None:
        kwargs["block_order"] = block_order
    teacher_info = None
    if distill is not None:  # on the training device from here on (the stage keeps it there)
        assert distill.teacher is not None
        distill.teacher.to(env.device)
        _check_teacher(distill, test_data.images[:1].float().to(env.device),
                       train_data.num_classes, dataset)
        teacher_info = {**distill.describe()["teacher"], **vars(distill.config)}
    torch.manual_seed(config.seed)
    net = create_model(model, **kwargs)
    meta = {"model": net.netshrink_spec, "dataset": dataset}
    if teacher_info is not None:
        meta["teacher"] = teacher_info
    trainer = Trainer(
        net,
        train_data,
        test_data,
        config,
        out,
        env=env,
        stages=[distill] if distill is not None else [],
        meta=meta,
        show_progress=progress,
        log_every=log_every,
    )
    if distill is not None and teacher_info is not None:
        assert distill.teacher is not None
        _, teacher_acc = evaluate(distill.teacher, trainer.test_loader, env, trainer.autocast)
        teacher_info = {**teacher_info, "test_accuracy": teacher_acc}
        if env.is_main:
            print(f"teacher {teacher_info['checkpoint']}: test accuracy "
                  f"{100 * teacher_acc:.2f}% (alpha {distill.config.alpha}, "
                  f"T {distill.config.temperature})", flush=True)
    try:
        result = trainer.fit(resume=resume)
    except NonFiniteError as err:  # no model, and a summary that says the run failed
        if env.is_main:
            (out / "model.safetensors").unlink(missing_ok=True)
            write_summary(out / "summary.json", {
                "status": "failed", "error": str(err), "epoch": err.epoch, "step": err.step,
                "parameter": err.parameter, "model": model, "dataset": dataset,
                "config": config.as_dict(), "teacher": teacher_info,
                "history": [vars(r) for r in trainer.history]})
        raise
    if not env.is_main:
        return
    example = test_data.images[:1].float().to(env.device)
    stats = ModelStats.measure(trainer.model, example)
    # the teacher is recorded, not needed: the student loads without it (no recipe stage)
    save_model(out / "model.safetensors", trainer.model.cpu(),
               extra_meta={"teacher": teacher_info} if teacher_info is not None else None)
    final = result.final
    summary = {
        "status": "ok",
        "model": model,
        "model_kwargs": kwargs,
        "dataset": dataset,
        "mnist_split": mnist_split if dataset == "mnist" else None,
        "train_images": len(train_data),
        "test_images": len(test_data),
        "config": config.as_dict(),
        "device": str(env.device),
        "world_size": env.world_size,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "test_accuracy": final.test_accuracy,
        "teacher": teacher_info,
        "stats": stats.as_dict(),
        "gmacs": stats.gmacs,
        "mparams": stats.mparams,
        "history": [vars(r) for r in result.history],
        "images_per_second": final.images_per_second,
        "outside_model_fraction": final.outside_model_fraction,
        "wall_seconds": time.time() - started,
    }
    write_summary(out / "summary.json", summary)
    table = Table(
        title=f"{model} on {dataset} ({len(train_data)} train / {len(test_data)} "
        f"test images, {config.epochs} epochs, {env.device}, "
        f"{env.world_size} process{'es' if env.world_size > 1 else ''})"
    )
    for col in (
        "test acc (%)",
        "GMACs",
        "params (M)",
        "size (MB)",
        "images/s",
        "outside model (%)",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{100 * final.test_accuracy:.2f}",
        f"{stats.gmacs:.4f}",
        f"{stats.mparams:.3f}",
        f"{stats.float_bytes / 1e6:.3f}",
        f"{final.images_per_second:.0f}",
        f"{100 * final.outside_model_fraction:.2f}",
    )
    Console().print(table)
    print(f"wrote {out / 'summary.json'} and {out / 'model.safetensors'}")
