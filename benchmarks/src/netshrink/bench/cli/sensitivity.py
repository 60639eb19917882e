"""``bench sensitivity``: per-layer sensitivity of a saved model, as JSON and a plot.

``bench sensitivity RUN_DIR/model.safetensors`` prunes one layer group at a time to each
``--ratios`` and quantizes one layer's weights at a time to each ``--precisions``, without
fine-tuning (``netshrink.auto.analyze_sensitivity``), and writes ``sensitivity.json`` (atomic)
and ``sensitivity.png`` beside the model (``--out`` for another folder).

Accuracy is measured on held-out batches drawn from the *training* split (a seeded random
sample; the test split stays untouched for reporting), and before each evaluation the
BatchNorm statistics are re-estimated on other training images (``--bn-batches``, 0 to skip):
no weight changes, but the measured drop is then the layer's, not stale statistics'.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import Progress
from torch import nn

from netshrink.auto import SensitivityConfig, SensitivityResult, analyze_sensitivity
from netshrink.bench.cli import validate
from netshrink.bench.cli.fuse import check_fits
from netshrink.bench.data import DeviceLoader, ImageData, load_dataset, resolve_data_root
from netshrink.bench.engine.evaluation import evaluate, recalibrate_bn
from netshrink.models import load_model

JSON_FILE = "sensitivity.json"
PLOT_FILE = "sensitivity.png"


def held_out(train: ImageData, eval_images: int, bn_images: int,
             seed: int = 0) -> tuple[ImageData, ImageData]:
    """Two disjoint seeded samples of the training split: images to evaluate on and images to
    re-estimate BatchNorm statistics on."""
    need = eval_images + bn_images
    if need > len(train):
        raise typer.BadParameter(f"{eval_images} evaluation + {bn_images} BatchNorm images are "
                                 f"more than the {len(train)} of {train.name}'s training split; "
                                 "use fewer --batches / --bn-batches or a smaller --batch-size")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))

    def take(idx: torch.Tensor) -> ImageData:
        return dataclasses.replace(train, images=train.images[idx], labels=train.labels[idx])

    return take(order[:eval_images]), take(order[eval_images:need])


def accuracy_fn(data: ImageData, batch_size: int) -> Callable[[nn.Module], float]:
    """Top-1 accuracy of a model on ``data`` (eval mode, CPU)."""
    loader = DeviceLoader(data, batch_size, device="cpu", train=False)
    return lambda model: evaluate(model, loader)[1]


def recalibrate_fn(data: ImageData, batch_size: int,
                   batches: int) -> Callable[[nn.Module], None] | None:
    """BatchNorm re-estimation on ``data`` (None when ``batches`` is 0)."""
    if batches == 0:
        return None
    loader = DeviceLoader(data, batch_size, device="cpu", train=False)

    def prepare(model: nn.Module) -> None:
        recalibrate_bn(model, loader, batches)

    return prepare


def parse_precisions(text: str) -> tuple[Any, ...]:
    """"8,4,ternary" -> (8, 4, "ternary")."""
    return tuple(int(p) if p.strip().isdigit() else p.strip()
                 for p in text.split(",") if p.strip())


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError as err:
        raise typer.BadParameter(f"--ratios {text!r}: {err}; give numbers such as "
                                 "0.25,0.5,0.75") from err


def sensitivity(
    checkpoint: Annotated[Path, typer.Argument(
        help="A model file (e.g. RUN_DIR/model.safetensors).")],
    dataset: Annotated[str, typer.Option(
        help="Dataset the model was trained on; held-out batches come from its training "
             "split.")] = "cifar10",
    data_dir: Annotated[Path | None, typer.Option(help="Data root; default $NETSHRINK_DATA.")
                        ] = None,
    ratios: Annotated[str, typer.Option(
        help="Fractions of each group's channels to prune, comma-separated (empty: skip "
             "pruning).")] = "0.25,0.5,0.75",
    precisions: Annotated[str, typer.Option(
        help="Weight precisions to try per layer, comma-separated (16, 8, 4, 3, 2, ternary, "
             "binary; empty: skip).")] = "8,4,2,ternary,binary",
    criterion: Annotated[str, typer.Option(help="Channel importance criterion.")] = "l1",
    batches: Annotated[int, typer.Option(help="Held-out batches evaluated per setting.")] = 4,
    bn_batches: Annotated[int, typer.Option(
        help="Training batches to re-estimate BatchNorm statistics on before each evaluation "
             "(0: keep the saved statistics).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the held-out sample.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Folder for sensitivity.json / .png; default: the model's folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON result.")] = False,
) -> None:
    """Accuracy of CHECKPOINT with one layer group pruned / one layer quantized at a time."""
    validate.check_dataset(dataset)
    validate.check_in_file("CHECKPOINT", checkpoint,
                           "a model file such as RUN_DIR/model.safetensors")
    validate.check_at_least("--batches", batches, 1)
    validate.check_at_least("--bn-batches", bn_batches, 0)
    validate.check_at_least("--batch-size", batch_size, 1)
    folder = Path(out) if out is not None else Path(checkpoint).parent
    validate.check_out_folder("--out", folder)
    try:
        config = SensitivityConfig(prune_ratios=parse_ratios(ratios),
                                   precisions=parse_precisions(precisions), criterion=criterion)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    model = load_model(checkpoint).eval()
    train = load_dataset(dataset, "train", resolve_data_root(data_dir))
    check_fits(model, train, str(checkpoint))
    example = train.images[:1].float()
    validate.check_runs_on(model, example, f"the model in {checkpoint}")
    held, calib = held_out(train, batches * batch_size, bn_batches * batch_size, seed)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("sensitivity", total=None)

        def progress(label: str) -> None:
            bar.update(task, description=label, advance=1)

        result = analyze_sensitivity(model, example, accuracy_fn(held, batch_size), config,
                                     prepare=recalibrate_fn(calib, batch_size, bn_batches),
                                     progress=progress)
    json_path = result.save_json(folder / JSON_FILE)
    plot_path = _plot(result, folder / PLOT_FILE, f"{checkpoint} on {dataset}", console)
    if as_json:
        print(json.dumps(result.as_dict(), sort_keys=True, allow_nan=False))
        return
    console.print(f"baseline accuracy {result.baseline:.4f} on {len(held)} held-out training "
                  f"images; {result.seconds:.1f} s")
    for kind in ("prune", "quant"):
        ranked = result.ranking(kind)
        if ranked:
            shown = ", ".join(f"{name} ({loss:+.3f})" for name, loss in ranked[:5])
            console.print(f"most sensitive to {kind}: {shown}")
    console.print(f"wrote {json_path}" + (f" and {plot_path}" if plot_path else ""))


def _plot(result: SensitivityResult, path: Path, title: str, console: Console) -> Path | None:
    try:
        return result.plot(path, title=title)
    except ImportError:
        console.print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
