"""``bench fuse-check``: fold the BatchNorms of a saved model and show what changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from netshrink.bench.data import DeviceLoader, load_dataset, resolve_data_root
from netshrink.bnfuse import compare, fuse_with_report
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
    model = load_model(checkpoint).eval()
    test = load_dataset(dataset, "test", resolve_data_root(data_dir))
    loader = DeviceLoader(test, batch_size, device="cpu", train=False)
    fused, fold_report = fuse_with_report(model, example_input=test.images[:1].float())
    cmp = compare(model, fused, loader)
    if as_json:
        print(json.dumps({"fuse": fold_report.as_dict(), "compare": cmp.as_dict()}, sort_keys=True))
        return
    print(fold_report)
    print(cmp)
