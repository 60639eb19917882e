"""``bench fuse-check``: fold the BatchNorms of a saved model and show what changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from torch import nn

from netshrink.bench.cli import validate
from netshrink.bench.data import DeviceLoader, ImageData, load_dataset, resolve_data_root
from netshrink.bnfuse import compare, fuse, fuse_report
from netshrink.models import load_model


def fuse_check(
    checkpoint: Annotated[
        Path, typer.Argument(help="A model file (e.g. RUN_DIR/model.safetensors).")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset whose test split is compared.")] = "cifar10",
    data_dir: Annotated[
        Path | None, typer.Option(help="Data root; default $NETSHRINK_DATA.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Fuse CHECKPOINT's BatchNorms; print the fold report and the logit/accuracy comparison."""
    validate.check_dataset(dataset)
    validate.check_at_least("--batch-size", batch_size, 1)
    validate.check_in_file("CHECKPOINT", checkpoint,
                           "a model file such as RUN_DIR/model.safetensors")
    model = load_model(checkpoint).eval()
    test = load_dataset(dataset, "test", resolve_data_root(data_dir))
    example = test.images[:1].float()
    check_fits(model, test, str(checkpoint))
    validate.check_runs_on(model, example, f"the model in {checkpoint}")
    loader = DeviceLoader(test, batch_size, device="cpu", train=False)
    fused = fuse(model, example_input=example)
    fold_report = fuse_report(fused)
    cmp = compare(model, fused, loader)
    if as_json:
        print(json.dumps({"fuse": fold_report.as_dict(), "compare": cmp.as_dict()},
                         sort_keys=True, allow_nan=False))
    else:
        print(fold_report)
        print(cmp)
    if not cmp.ok:  # non-finite logits: the comparison means nothing (netshrink.bnfuse)
        raise typer.Exit(1)


def check_fits(model: nn.Module, data: ImageData, source: str) -> None:
    """The model's input channels and classes must be the dataset's: a 1-channel MNIST model
    run on 3-channel CIFAR images fails deep inside the fold's trace otherwise."""
    channels = data.image_shape[0]
    expected = input_channels(model)
    if expected is not None and expected != channels:
        raise typer.BadParameter(
            f"the model in {source} expects {expected} input channel(s), but dataset "
            f"{data.name!r} has {channels} ({'x'.join(map(str, data.image_shape))} images); "
            f"use the dataset it was trained on")
    classes = _spec_kwargs(model).get("num_classes")
    if isinstance(classes, int) and classes != data.num_classes:
        raise typer.BadParameter(
            f"the model in {source} has {classes} classes, but dataset {data.name!r} has "
            f"{data.num_classes}; use the dataset it was trained on")


def input_channels(model: nn.Module) -> int | None:
    """The channels the model takes: its recorded ``in_channels`` (our models), else the first
    convolution's (torchvision's), else None (unknown: the trial forward pass decides)."""
    recorded = _spec_kwargs(model).get("in_channels")
    if isinstance(recorded, int):
        return recorded
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else None


def _spec_kwargs(model: nn.Module) -> dict:
    spec = getattr(model, "netshrink_spec", None)
    kwargs = spec.get("kwargs") if isinstance(spec, dict) else None
    return kwargs if isinstance(kwargs, dict) else {}
