"""``bench compress``: run a recipe file on any model, with the tables' engine.

The recipe (``netshrink.bench.recipefile``) becomes a chain of table rows, one per step, run by
the tables' runner into ``OUT/runs/compress/<step>/`` (checkpoints every epoch, TensorBoard,
``final.safetensors``, the packed file) and ``OUT/results/compress/<step>.json``. Running the
same command again resumes: finished steps are reused (cached by their spec), an interrupted
step continues from its last epoch; a step whose recipe entry changed is rerun, with every
step after it. The end is a before / after table (the first step against the last) and
``OUT/compress.json``.

MODEL is a registered name (``bench models``), ``tv:<torchvision name>``, or your own factory
``package.module:function``: the module is imported (it must be importable, e.g. on
PYTHONPATH) and the function called with ``num_classes`` and the recipe's ``model_kwargs``.

``run_recipe`` is the whole command as a function; ``bench train --recipe`` calls it too (one
engine). ``bench recipe`` writes a table row as a recipe file for this command.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from torch import nn

from netshrink.bench.cli import validate
from netshrink.bench.data import resolve_data_root
from netshrink.bench.engine import DistEnv, write_summary
from netshrink.bench.recipefile import Recipe, load_recipe, recipe_table
from netshrink.bench.tables import PROFILE_SETTINGS, Table
from netshrink.bench.tables.runner import RunContext, load_table_data, run_table
from netshrink.models import MODELS, register_model

TABLE_NAME = "compress"
_FACTORY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


def user_model(spec: str) -> str:
    """Make ``--model`` buildable by name: a ``package.module:function`` is imported and
    registered (once per process) under ``spec`` itself; other names are checked. Returns
    the name to build."""
    if ":" not in spec or spec.startswith("tv:"):
        validate.check_model_name(spec)
        return spec
    if not _FACTORY.fullmatch(spec):
        raise typer.BadParameter(f"--model {spec!r} is not 'package.module:function' (a Python "
                                 "module path, a colon, a function name)")
    if spec in MODELS:
        return spec
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise typer.BadParameter(f"--model {spec!r}: cannot import {module_name!r} ({err}); "
                                 "is its folder on PYTHONPATH?") from err
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise typer.BadParameter(f"--model {spec!r}: {module_name} has no function "
                                 f"{func_name!r}")
    register_model(spec)(_adapt(spec, factory))
    return spec


def _adapt(spec: str, factory: Any):
    """The user's factory with the signature the runner calls: ``num_classes``, ``width``
    (netshrink's models scale with it; a factory without it must be left at 1.0) and the
    recipe's ``model_kwargs``."""
    params = inspect.signature(factory).parameters
    takes_width = "width" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def build(num_classes: int, width: float = 1.0, **kwargs: Any) -> nn.Module:
        if takes_width:
            kwargs["width"] = width
        elif width != 1.0:
            raise ValueError(f"model {spec!r} takes no 'width' argument; width={width!r} is "
                             "not allowed (only 1.0)")
        model = factory(num_classes=num_classes, **kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {spec!r} returned a {type(model).__name__}, not an "
                             "nn.Module")
        return model

    build.__doc__ = f"The user's model factory {spec}."
    return build


def compress(
    model: Annotated[str, typer.Option(help="A registered model (`bench models`), "
                                            "tv:<torchvision name>, or your own "
                                            "package.module:function (called with "
                                            "num_classes).")],
    recipe: Annotated[Path, typer.Option(help="The recipe TOML file (see docs/compress.md; "
                                              "examples in recipes/).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, TensorBoard, results; "
                                           "run again to resume.")],
    dataset: Annotated[str, typer.Option(help="A registered dataset.")] = "cifar10",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="Data root; default $NETSHRINK_DATA, "
                                                       "else ~/.cache/netshrink/data.")] = None,
    download: Annotated[bool, typer.Option(help="Download the dataset if absent.")] = False,
    train_limit: Annotated[int | None, typer.Option(help="Use only the first N training "
                                                         "images (quick trials).")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Use only the first N test "
                                                        "images.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (weights, data order).")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Compress MODEL with the RECIPE file's steps on DATASET; print the before / after
    table (accuracy, MACs, params, packed size)."""
    run_recipe(model, recipe, out, dataset=dataset, device=device, data_dir=data_dir,
               download=download, train_limit=train_limit, test_limit=test_limit, seed=seed,
               progress=progress)


def run_recipe(model: str, recipe: Path, out: Path, *, dataset: str = "cifar10",
               device: str = "auto", data_dir: Path | None = None, download: bool = False,
               train_limit: int | None = None, test_limit: int | None = None, seed: int = 0,
               progress: bool = True) -> dict[str, Any] | None:
    """What ``bench compress`` (and ``bench train --recipe``) run: check every option and the
    recipe, run its steps as table rows, write ``OUT/compress.json`` and print the before /
    after table. Returns the summary (None on the ranks other than 0)."""
    validate.check_in_file("--recipe", recipe, "a recipe TOML file")
    parsed = load_recipe(recipe)  # every key and value checked before anything is built
    name = user_model(model)
    validate.check_dataset(dataset)
    validate.check_device(device)
    validate.check_out_folder("--out", out)
    for option, value in (("--train-limit", train_limit), ("--test-limit", test_limit)):
        if value is not None:
            validate.check_at_least(option, value, 1)
    validate.check_at_least("--seed", seed, 0)
    table = recipe_table(parsed, name, dataset, name=TABLE_NAME)
    profile = dataclasses.replace(PROFILE_SETTINGS["full"], train_limit=train_limit,
                                  test_limit=test_limit)
    env = DistEnv.from_environment(device)
    try:
        root = resolve_data_root(data_dir)
        if env.is_main:
            train, test = load_table_data(table, profile, root, download=download)
        env.barrier()
        if not env.is_main:
            train, test = load_table_data(table, profile, root)
        ctx = RunContext(table=table, profile=profile, env=env, results_dir=out / "results",
                         runs_dir=out / "runs", train_data=train, test_data=test,
                         show_progress=progress and env.is_main, seed=seed)

        def on_row(row, state):
            if env.is_main:
                print(f"step {row.name}: {state}")

        results = run_table(ctx, list(table.rows), on_row=on_row)
        if not env.is_main:
            return None
        summary = compress_summary(parsed, table, results, model=model, dataset=dataset)
        write_summary(out / "compress.json", summary)
        print(before_after(summary))
        print(f"\nfinal model: {out / 'runs' / TABLE_NAME / table.rows[-1].name}"
              "/final.safetensors (load with netshrink.models.load_model); packed file "
              "beside it")
        return summary
    finally:
        env.close()


def compress_summary(recipe: Recipe, table: Table, results: list[dict[str, Any]], *,
                     model: str, dataset: str) -> dict[str, Any]:
    """The JSON record of a compress run: per step its metrics, and before (the first step)
    and after (the last)."""
    steps = [{"step": row.name, "stages": [s["kind"] for s in row.stages],
              "epochs": row.schedule.epochs["full"],
              **{k: r["metrics"][k] for k in ("accuracy", "macs", "params", "size_bytes")}}
             for row, r in zip(table.rows, results, strict=True)]
    return {"model": model, "dataset": dataset, "recipe": recipe.source, "title": recipe.title,
            "steps": steps, "before": steps[0], "after": steps[-1]}


def before_after(summary: dict[str, Any]) -> str:
    """A markdown table of every step, then before -> after with the ratios."""
    head = "| step | stages | epochs | accuracy (%) | MMACs | params | packed size (kB) |"
    lines = [f"{summary['title']} ({summary['model']} on {summary['dataset']})", "", head,
             "|" + "---|" * 7]
    for s in summary["steps"]:
        lines.append(f"| {s['step']} | {', '.join(s['stages']) or '-'} | {s['epochs']} | "
                     f"{100 * s['accuracy']:.2f} | {s['macs'] / 1e6:.2f} | {s['params']:,} | "
                     f"{s['size_bytes'] / 1e3:.1f} |")
    b, a = summary["before"], summary["after"]

    def ratio(key: str) -> str:
        return f"{b[key] / a[key]:.2f}x smaller" if a[key] else "-"

    lines += ["", f"before ({b['step']}) -> after ({a['step']}): accuracy "
              f"{100 * b['accuracy']:.2f}% -> {100 * a['accuracy']:.2f}%, MACs {ratio('macs')}, "
              f"params {ratio('params')}, packed size {ratio('size_bytes')}"]
    return "\n".join(lines)
