"""``bench stats``: parameters, MACs and sizes of a model, measured."""

from __future__ import annotations

import json
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from netshrink.bench.cli import validate
from netshrink.core import ModelStats
from netshrink.models import create_model, list_models


def stats(
    model: Annotated[
        str, typer.Option(help="Model name (see `bench models`), e.g. nin, tv:resnet18.")
    ] = "nin",
    width: Annotated[float, typer.Option(help="Width multiplier (our own models only).")] = 1.0,
    num_classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
    input_size: Annotated[int, typer.Option(help="Input height and width in pixels.")] = 32,
    in_channels: Annotated[int, typer.Option(help="Input channels.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print params, GMACs and float size of MODEL (at one input image)."""
    validate.check_model_name(model)
    validate.check_positive("--width", width)
    validate.check_at_least("--num-classes", num_classes, 1)
    validate.check_at_least("--input-size", input_size, 1)
    validate.check_at_least("--in-channels", in_channels, 1)
    kwargs = model_kwargs(model, width=width, num_classes=num_classes, in_channels=in_channels)
    net = create_model(model, **kwargs)
    example = torch.zeros(1, in_channels, input_size, input_size)
    validate.check_runs_on(net, example, f"{model} (--input-size {input_size})")
    s = ModelStats.measure(net, example)
    record = {
        "model": model,
        **kwargs,
        "input_size": input_size,
        **s.as_dict(),
        "gmacs": s.gmacs,
        "mparams": s.mparams,
        "float_mb": s.float_bytes / 1e6,
    }
    if as_json:
        print(json.dumps(record, sort_keys=True, allow_nan=False))
        return
    table = Table(title=f"{model} at {in_channels}x{input_size}x{input_size}")
    for col in ("params (M)", "GMACs", "float size (MB)", "packed size (MB)"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{s.mparams:.3f}",
        f"{s.gmacs:.4f}",
        f"{s.float_bytes / 1e6:.3f}",
        f"{s.packed_bytes / 1e6:.3f}",
    )
    Console().print(table)


def model_kwargs(model: str, *, width: float, num_classes: int, in_channels: int) -> dict:
    """The create_model keyword arguments the CLI options map to."""
    kwargs: dict = {"num_classes": num_classes}
    if model.startswith("tv:"):
        if width != 1.0:
            raise typer.BadParameter(
                f"--width {width} applies to netshrink's own models, not torchvision's {model}"
            )
        if in_channels != 3:
            raise typer.BadParameter("--in-channels must be 3 for torchvision models")
        return kwargs
    kwargs["in_channels"] = in_channels
    if width != 1.0:
        kwargs["width"] = width
    return kwargs


def models(
    torchvision: Annotated[
        bool, typer.Option(help="Also list the torchvision classifiers (tv:<name>).")
    ] = False,
) -> None:
    """List the model names that --model accepts."""
    for name in list_models(torchvision=torchvision):
        print(name)
