"""Recipe files: a compression recipe in TOML, read with the standard library and validated key
by key before anything runs.

A recipe is an ordered list of steps; each step applies its stages (in order) to the model the
previous step ended with, then trains it on its schedule (no ``train`` table: no training)::

    title = "slimming, prune 50 %, W4A4, fuse"
    model_kwargs = { width = 0.5 }        # optional: arguments of the model factory

    [[step]]
    name = "float"
    train = { epochs = 30, lr = 0.1 }

    [[step]]
    name = "pruned"
    train = { epochs = 20, lr = 0.02 }
    [[step.stage]]
    kind = "prune.channels"
    prune = { criterion = "l1", amount = 0.5 }

In a step, put ``name`` / ``train`` / ``teacher`` before the ``[[step.stage]]`` blocks (TOML
puts every key after a ``[[step.stage]]`` header into that stage). A stage is its ``kind`` (a
registered stage kind, ``netshrink.core.STAGES``) plus the fields of that kind's config class;
nested configs (``prune``) are tables. ``train`` takes the keys of the tables' ``Schedule``:
``epochs`` (required), ``lr``, ``optimizer``, ``weight_decay``, ``batch_size``, ``schedule``,
``recalibrate_bn``. ``teacher`` names an earlier step whose model teaches this step's
distillation stage.

Every unknown key or bad value is one ``RecipeError`` (a ValueError) naming where it is, the
key or value, and what is allowed. Nothing in the file is imported or evaluated: kinds are
looked up in the stage registry, values go to the config classes' validation.

A recipe becomes a chain of results-table rows (``recipe_table``), each step one row whose
upstream is the step before, so ``bench compress`` runs it with the tables' runner (one code
path: same engine, caching, checkpoints, resume, TensorBoard), and a table row is expressible
as a recipe file (``recipes/smoke_w4a4.toml`` is the smoke table's ``nin-w4a4`` row).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netshrink.bench.engine import TrainConfig
from netshrink.bench.tables.spec import PROFILES, Row, Schedule, Table
from netshrink.core import STAGES, stage_from_description

MAX_BYTES = 64 * 1024  # a recipe is a few dozen lines; anything this big is not one
MAX_STEPS = 64
TOP_KEYS = ("title", "model_kwargs", "step")
STEP_KEYS = ("name", "train", "teacher", "stage")
TRAIN_KEYS = ("epochs", "lr", "optimizer", "weight_decay", "batch_size", "schedule",
              "recalibrate_bn")
# packages whose stages a recipe may name; imported (when installed) to fill the registry
STAGE_PACKAGES = ("netshrink.quant", "netshrink.prune", "netshrink.bnfuse", "netshrink.distill",
                  "netshrink.lowrank")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class RecipeError(ValueError):
    """A recipe file that cannot be read or holds an unknown key or a bad value."""


@dataclass(frozen=True)
class Step:
    """One step: stage records (``{"kind", "config"}``, as core describes stages), then
    training on ``schedule`` (``epochs`` 0: none)."""

    name: str
    stages: tuple[dict[str, Any], ...]
    schedule: Schedule
    teacher: str | None = None


@dataclass(frozen=True)
class Recipe:
    title: str
    steps: tuple[Step, ...]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "<recipe>"


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate the recipe file ``path`` (at most ``MAX_BYTES``)."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise RecipeError(f"recipe {path} is larger than {MAX_BYTES} bytes; a recipe file is a "
                          "few dozen lines of TOML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"recipe {path} is not UTF-8 text: {err}") from None
    return parse_recipe(text, source=str(path))


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate recipe TOML ``text`` (``source`` names it in errors)."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise RecipeError(f"recipe {source} is larger than {MAX_BYTES} bytes")
    doc = _load_toml(text, source)
    _check_keys(doc, TOP_KEYS, f"recipe {source}")
    title = doc.get("title", Path(source).stem)
    if not isinstance(title, str):
        raise RecipeError(f"recipe {source}: title={title!r} must be a string")
    model_kwargs = doc.get("model_kwargs", {})
    if not isinstance(model_kwargs, dict):
        raise RecipeError(f"recipe {source}: model_kwargs={model_kwargs!r} must be a table of "
                          "the model factory's arguments, e.g. model_kwargs = { width = 0.5 }")
    raw_steps = doc.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RecipeError(f"recipe {source} has no steps; add at least one [[step]] table")
    if len(raw_steps) > MAX_STEPS:
        raise RecipeError(f"recipe {source} has {len(raw_steps)} steps; at most {MAX_STEPS}")
    _import_stage_packages()
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        steps.append(_step(raw, i, [s.name for s in steps], source))
    return Recipe(title=title, steps=tuple(steps), model_kwargs=dict(model_kwargs),
                  source=source)


def _load_toml(text: str, source: str) -> dict[str, Any]:
    """``tomllib`` (the standard library's TOML reader, Python 3.11+; its backport ``tomli``,
    a dependency on 3.10) on ``text``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same reader, from PyPI
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"recipe {source} is not valid TOML: {err}") from None


def _step(raw: Any, i: int, earlier: list[str], source: str) -> Step:
    where = f"recipe {source}, step {i + 1}"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a table ([[step]])")
    _check_keys(raw, STEP_KEYS, where)
    name = raw.get("name", f"step{i + 1}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RecipeError(f"{where}: name={name!r} is not allowed; use 1-64 letters, digits, "
                          "'_', '-' or '.', starting with a letter or digit (it names a folder)")
    where = f"recipe {source}, step {i + 1} ({name!r})"
    if name in earlier:
        raise RecipeError(f"{where}: name {name!r} is used by an earlier step; names must be "
                          "unique")
    teacher = raw.get("teacher")
    if teacher is not None and teacher not in earlier:
        raise RecipeError(f"{where}: teacher={teacher!r} is not an earlier step; earlier "
                          f"steps: {', '.join(earlier) or '(none)'}")
    raw_stages = raw.get("stage", [])
    if not isinstance(raw_stages, list):
        raise RecipeError(f"{where}: 'stage' must be an array of tables ([[step.stage]])")
    stages = tuple(_stage(s, f"{where}, stage {j + 1}") for j, s in enumerate(raw_stages))
    schedule = _schedule(raw.get("train"), f"{where}, train")
    if not stages and schedule.epochs[PROFILES[0]] == 0:
        raise RecipeError(f"{where} neither applies a stage nor trains; give it [[step.stage]] "
                          "tables, a train = { epochs = N } table, or both")
    return Step(name=name, stages=stages, schedule=schedule, teacher=teacher)


def _stage(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a table ([[step.stage]])")
    kind = raw.get("kind")
    if kind not in STAGES:
        raise RecipeError(f"{where}: kind={kind!r} is not a stage kind; allowed: "
                          f"{', '.join(STAGES.names())}")
    where = f"{where} ({kind})"
    config = {k: v for k, v in raw.items() if k != "kind"}
    _check_fields(config, STAGES.get(kind).config_class, where)
    record = {"kind": kind, "config": config}
    try:
        stage_from_description(record)  # the config class validates every value
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {err}") from None
    return record


def _check_fields(values: dict[str, Any], config_class: type, where: str) -> None:
    """Every key names a field of ``config_class``; a table given for a field whose default
    is itself a config dataclass is checked against that class, recursively."""
    if not dataclasses.is_dataclass(config_class):
        return
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    _check_keys(values, tuple(fields), where)
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RecipeError(f"{where}: missing key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(repr, missing))} (required)")
    for key, value in values.items():
        if isinstance(value, dict):
            f = fields[key]
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else None)
            if dataclasses.is_dataclass(default):
                _check_fields(value, type(default), f"{where}, {key}")


def _schedule(raw: Any, where: str) -> Schedule:
    if raw is None:
        return Schedule(epochs={p: 0 for p in PROFILES})
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a table, e.g. train = {{ epochs = 10, lr = 0.02 }}")
    _check_keys(raw, TRAIN_KEYS, where)
    if "epochs" not in raw:
        raise RecipeError(f"{where} has no 'epochs'; give the number of epochs to train")
    options = {k: v for k, v in raw.items() if k != "epochs"}
    try:
        epochs = raw["epochs"]
        schedule = Schedule(epochs={p: epochs for p in PROFILES}, **options)
        # the values the Schedule does not check itself (optimizer, schedule names)
        TrainConfig(epochs=max(epochs, 1), **options)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {err}") from None
    return schedule


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise RecipeError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def _import_stage_packages() -> None:
    """Register the stage kinds of every installed netshrink package."""
    for module in STAGE_PACKAGES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def recipe_table(recipe: Recipe, model: str, dataset: str, name: str = "compress") -> Table:
    """The recipe as a results table: one row per step, each starting from the step before
    (the first from ``model`` built with ``recipe.model_kwargs``)."""
    rows = []
    for i, step in enumerate(recipe.steps):
        rows.append(Row(step.name, step.name, model=model if i == 0 else "",
                        model_kwargs=dict(recipe.model_kwargs) if i == 0 else {},
                        stages=step.stages, schedule=step.schedule,
                        upstream=recipe.steps[i - 1].name if i else None, teacher=step.teacher))
    return Table(name=name, title=recipe.title, rows=tuple(rows), baseline=rows[0].name,
                 dataset=dataset, ci_only=True)
