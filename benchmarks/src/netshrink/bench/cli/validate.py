"""Up-front checks of the CLI's options, run before any data is loaded or anything is written.

Loading CIFAR-10 or building a torchvision model takes seconds; a misspelt ``--model`` or an
``--out`` that is a file should fail at once, naming the option, the bad value and what is
allowed. Each check raises ``typer.BadParameter``, which ``errors.report_errors`` prints as one
``error:`` line with exit code 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import typer
from torch import nn

from netshrink.bench.data import list_datasets
from netshrink.models import MODELS, create_model
from netshrink.models.torchvision_adapter import TV_PREFIX, torchvision_names

DEVICES = ("auto", "cpu", "cuda")


def check_choice(option: str, value: str, allowed: Iterable[str]) -> None:
    """``value`` must be one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise typer.BadParameter(f"{option} {value!r} is not allowed; choose one of: "
                                 f"{', '.join(allowed)}")


def check_at_least(option: str, value: int, minimum: int) -> None:
    """An integer option with a lower bound (sizes, counts, batch sizes)."""
    if value < minimum:
        raise typer.BadParameter(f"{option} {value} is not allowed; it must be at least {minimum}")


def check_positive(option: str, value: float) -> None:
    """A float option that must be finite and > 0 (a width multiplier)."""
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{option} {value} is not allowed; it must be a number > 0")


def check_dataset(name: str) -> None:
    """A registered dataset name (``list_datasets()``)."""
    check_choice("--dataset", name, list_datasets())


def check_model_name(name: str) -> None:
    """A registered model or ``tv:<torchvision classifier>``."""
    if name.startswith(TV_PREFIX):
        if name[len(TV_PREFIX):] not in torchvision_names():
            raise typer.BadParameter(f"--model {name!r} is not a torchvision classification "
                                     f"model; `bench models --torchvision` lists them")
        return
    if name not in MODELS:
        raise typer.BadParameter(f"--model {name!r} is not a model; choose one of: "
                                 f"{', '.join(MODELS.names())}, or tv:<name> for a torchvision "
                                 f"classifier (`bench models --torchvision` lists them)")


def check_model_args(name: str, **kwargs: Any) -> None:
    """The arguments (width, block order, ...) of one of our own models, checked by building it
    on the meta device, which allocates no memory and takes milliseconds. torchvision models
    take only num_classes and are not built (some cannot be on the meta device)."""
    if name.startswith(TV_PREFIX):
        return
    try:
        with torch.device("meta"):
            create_model(name, **kwargs)  # a bad argument is a ValueError naming it
    except (NotImplementedError, RuntimeError):
        pass  # a factory that needs real tensors is checked when it is built for real


def check_runs_on(model: nn.Module, example: torch.Tensor, what: str) -> None:
    """One forward pass of ``example`` (what: "nin", "the model in X") before the real work,
    so an input the model cannot take (too small for its pooling, not the size a ViT wants,
    the wrong number of channels) is one line naming the input instead of a traceback from
    deep inside a trace. Only the forward pass is guarded, and only its RuntimeError (torch's
    shape errors) and AssertionError (torchvision's ``torch._assert``)."""
    try:
        with torch.no_grad():
            model.eval()(example)
    except (RuntimeError, AssertionError) as err:
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        shape = "x".join(str(d) for d in example.shape[1:])
        raise typer.BadParameter(f"{what} cannot run on a {shape} input: {first}") from err


def check_device(device: str) -> None:
    """auto, cpu or cuda; cuda only where torch sees a GPU (auto falls back to the CPU)."""
    check_choice("--device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        raise typer.BadParameter(f"--device cuda: torch sees no CUDA GPU (torch "
                                 f"{torch.__version__}, {built}); use --device cpu or auto")


def check_out_folder(option: str, path: Path) -> None:
    """A folder that will be created if needed and written into: not a file, not under a
    file, and in a place this process may write."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{option} {path} is a file, not a folder; choose a folder")
    _check_can_create(option, path)


def check_out_file(option: str, path: Path) -> None:
    """A file that will be (over)written: not a folder, and its folder can be made/written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise typer.BadParameter(f"{option} {path} is a folder; give a file path")
    _check_can_create(option, path.parent)


def check_in_file(option: str, path: Path, what: str) -> None:
    """An existing file that will be read."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise typer.BadParameter(f"{option} {path} is a folder; give {what}")
    if not path.is_file():
        raise typer.BadParameter(f"{option} {path} does not exist; give {what}")


def _check_can_create(option: str, folder: Path) -> None:
    """``folder`` exists and is writable, or can be created under its nearest existing
    ancestor. ``os.access`` is true for root on a chmod-ed folder, but false on a read-only
    disk; the write itself still reports what this cannot foresee."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise typer.BadParameter(f"{option} {folder}: {existing} is a file, so no folder can be "
                                 f"made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{option} {folder}: cannot write in {existing} (permission "
                                 f"denied or a read-only disk)")


__all__ = ["DEVICES", "check_at_least", "check_choice", "check_dataset", "check_device",
           "check_in_file", "check_model_args", "check_model_name", "check_out_file",
           "check_out_folder", "check_positive", "check_runs_on"]
