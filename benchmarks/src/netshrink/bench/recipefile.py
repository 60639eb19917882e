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

In a step, put ``name`` / ``train`` / ``teacher`` / ``model`` / ``seed`` before the
``[[step.stage]]`` blocks (TOML puts every key after a ``[[step.stage]]`` header into that
stage). A stage is its ``kind`` (a
registered stage kind, ``netshrink.core.STAGES``) plus the fields of that kind's config class;
nested configs (``prune``) are tables. ``train`` takes the keys of the tables' ``Schedule``:
``epochs`` (required), ``lr``, ``optimizer``, ``weight_decay``, ``batch_size``, ``schedule``,
``recalibrate_bn``. ``teacher`` names an earlier step whose model teaches this step's
distillation stage. ``model`` (with optional ``model_kwargs``; not on the first step, whose
model is the command's) starts a step from a fresh model instead of the step before: a teacher
of another architecture beside its student. ``seed`` is added to the run's seed.

Every unknown key or bad value is one ``RecipeError`` (a ValueError) naming where it is, the
key or value, and what is allowed. Nothing in the file is imported or evaluated: kinds are
looked up in the stage registry, values go to the config classes' validation.

A recipe becomes a chain of results-table rows (``recipe_table``), each step one row whose
upstream is the step before, so ``bench compress`` runs it with the tables' runner (one code
path: same engine, caching, checkpoints, resume, TensorBoard). The other way, ``row_recipe``
writes any table row, with the rows it starts from, as a recipe file (``bench recipe``) that
gives the row's model bit for bit; ``dump_recipe`` writes a ``Recipe`` (TOML written by
``netshrink.bench.tomlwriter``).
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
from netshrink.bench.tables.profiles import PROFILE_SETTINGS
from netshrink.bench.tables.spec import NO_TRAINING, PROFILES, Row, Schedule, Table
from netshrink.bench.tomlwriter import toml_comment, toml_key, toml_value
from netshrink.core import STAGES, stage_from_description

MAX_BYTES = 64 * 1024  # a recipe is a few dozen lines; anything this big is not one
MAX_STEPS = 64
# the largest model a recipe may ask for (parameters + buffers, counted on the meta device
# before anything is allocated): 2^31 elements, 8 GiB in float32; torchvision's largest
# convolutional classifiers have under 2^28
MAX_MODEL_ELEMENTS = 2**31
TOP_KEYS = ("title", "model_kwargs", "step")
STEP_KEYS = ("name", "train", "teacher", "seed", "model", "model_kwargs", "stage")
TRAIN_KEYS = ("epochs", "lr", "optimizer", "weight_decay", "batch_size", "schedule",
              "recalibrate_bn")
# packages whose stages a recipe may name; imported (when installed) to fill the registry
STAGE_PACKAGES = ("netshrink.quant", "netshrink.prune", "netshrink.bnfuse", "netshrink.distill",
                  "netshrink.lowrank", "netshrink.auto", "netshrink.share")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class RecipeError(ValueError):
    """A recipe file that cannot be read or holds an unknown key or a bad value."""


@dataclass(frozen=True)
class Step:
    """One step: stage records (``{"kind", "config"}``, as core describes stages), then
    training on ``schedule`` (``epochs`` 0: none). ``model`` (a later step only): the step
    starts from that model, built afresh with ``model_kwargs``, not from the step before (a
    teacher's chain beside the student's). ``seed`` is added to the run's seed."""

    name: str
    stages: tuple[dict[str, Any], ...]
    schedule: Schedule
    teacher: str | None = None
    seed: int = 0
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


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
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RecipeError(f"{where}: seed={seed!r} must be an integer >= 0 (added to the run's "
                          "--seed)")
    model, model_kwargs = _step_model(raw, i, where)
    stages = tuple(_stage(s, f"{where}, stage {j + 1}") for j, s in enumerate(raw_stages))
    schedule = _schedule(raw.get("train"), f"{where}, train")
    if not stages and schedule.epochs[PROFILES[0]] == 0:
        raise RecipeError(f"{where} neither applies a stage nor trains; give it [[step.stage]] "
                          "tables, a train = { epochs = N } table, or both")
    return Step(name=name, stages=stages, schedule=schedule, teacher=teacher, seed=seed,
                model=model, model_kwargs=model_kwargs)


def _step_model(raw: dict[str, Any], i: int, where: str) -> tuple[str | None, dict[str, Any]]:
    """A step's own ``model`` / ``model_kwargs`` (a fresh start; not on the first step, whose
    model is the command's --model)."""
    model, kwargs = raw.get("model"), raw.get("model_kwargs")
    if model is None:
        if kwargs is not None:
            raise RecipeError(f"{where}: model_kwargs needs model = \"NAME\" in the same step "
                              "(the first step's model arguments are the top-level "
                              "model_kwargs)")
        return None, {}
    if i == 0:
        raise RecipeError(f"{where}: the first step's model is the command's --model; "
                          "'model' is for a later step that starts afresh from another model")
    from netshrink.models import MODELS

    if not isinstance(model, str) or not (model in MODELS or model.startswith("tv:")):
        raise RecipeError(f"{where}: model={model!r} is not a registered model; allowed: "
                          f"{', '.join(MODELS.names())}, or tv:<torchvision name>")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise RecipeError(f"{where}: model_kwargs={kwargs!r} must be a table of the model "
                          "factory's arguments, e.g. model_kwargs = { width = 0.5 }")
    return model, dict(kwargs)


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
        fresh = i == 0 or step.model is not None
        kwargs = recipe.model_kwargs if i == 0 else step.model_kwargs
        rows.append(Row(step.name, step.name,
                        model=(model if i == 0 else step.model or "") if fresh else "",
                        model_kwargs=dict(kwargs) if fresh else {},
                        stages=step.stages, schedule=step.schedule,
                        upstream=None if fresh else recipe.steps[i - 1].name,
                        teacher=step.teacher, seed=step.seed))
    for row in rows:
        if row.model:
            check_model_size(row.model, row.model_kwargs, f"step {row.name!r}")
    return Table(name=name, title=recipe.title, rows=tuple(rows), baseline=rows[0].name,
                 dataset=dataset, ci_only=True)


def check_model_size(model: str, kwargs: dict[str, Any], where: str) -> None:
    """Refuse a model whose parameters and buffers exceed ``MAX_MODEL_ELEMENTS`` (a recipe's
    ``model_kwargs = { width = 1000 }``) by building it on the meta device, where no memory is
    behind any tensor; bad arguments surface here too, as one RecipeError."""
    import torch

    from netshrink.models import create_model

    try:
        with torch.device("meta"):
            built = create_model(model, num_classes=10, **kwargs)
    except ValueError as err:
        raise RecipeError(f"{where}: model {model!r} with {kwargs!r}: {err}") from err
    except (NotImplementedError, RuntimeError):
        return  # a user's factory that needs real tensors to build: its real build decides
    elements = sum(t.numel() for t in (*built.parameters(), *built.buffers()))
    if elements > MAX_MODEL_ELEMENTS:
        raise RecipeError(f"{where}: model {model!r} with {kwargs!r} has {elements:,} "
                          f"parameter and buffer elements; a recipe may ask for at most "
                          f"{MAX_MODEL_ELEMENTS:,}")


def dump_recipe(recipe: Recipe, header: str = "") -> str:
    """``recipe`` as recipe-file TOML (``header``: comment lines at the top).
    ``parse_recipe`` of the text gives the recipe back (tuples in configs as lists)."""
    out = [toml_comment(header)] if header else []
    out.append(f"title = {toml_value(recipe.title)}")
    if recipe.model_kwargs:
        out.append(f"model_kwargs = {toml_value(recipe.model_kwargs)}")
    for step in recipe.steps:
        out += ["", "[[step]]", f"name = {toml_value(step.name)}"]
        if step.model is not None:
            out.append(f"model = {toml_value(step.model)}")
            if step.model_kwargs:
                out.append(f"model_kwargs = {toml_value(step.model_kwargs)}")
        if step.teacher is not None:
            out.append(f"teacher = {toml_value(step.teacher)}")
        if step.seed:
            out.append(f"seed = {toml_value(step.seed)}")
        train = _train_table(step.schedule)
        if train is not None:
            out.append(f"train = {toml_value(train)}")
        for stage in step.stages:
            out += ["[[step.stage]]", f"kind = {toml_value(stage['kind'])}"]
            out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in stage["config"].items()]
    return "\n".join(out) + "\n"


def _train_table(schedule: Schedule) -> dict[str, Any] | None:
    """The ``train`` table of a step's schedule (one epoch count for every profile); None for
    no training with the default options (the table left out)."""
    epochs = {schedule.epochs[p] for p in PROFILES}
    if len(epochs) != 1:
        raise ValueError(f"schedule {schedule!r} has different epochs per profile; a recipe "
                         "step has one epoch count (pick a profile: row_recipe's profile)")
    if schedule == NO_TRAINING:
        return None
    return {"epochs": epochs.pop(), **{k: getattr(schedule, k) for k in TRAIN_KEYS[1:]}}


def row_recipe(table: Table, row_name: str, profile: str = "full") -> str:
    """Table ``table``'s row ``row_name`` under ``profile`` as recipe-file TOML: the row with
    every row it depends on (upstream chain, teacher), one step each, with the profile's epochs
    and model width. A header comment says how to run it: ``bench compress --model MODEL`` on
    the profile's data gives the row's model bit for bit. RecipeError (naming the row and the
    reason) for a row a recipe cannot express."""
    recipe, model = row_as_recipe(table, row_name, profile)
    settings = PROFILE_SETTINGS[profile]
    row = table.row(row_name)
    limits = "".join(f" --{flag} {n}" for flag, n in (("train-limit", settings.train_limit),
                                                       ("test-limit", settings.test_limit))
                     if n is not None)
    lines = [f"The {table.name} table's row {row.name} ({row.label}), profile {profile},",
             "with every row it starts from, one step each; written by",
             f"  bench recipe --table {table.name} --row {row.name} --profile {profile}",
             "Run it on the profile's data (gives the row's model bit for bit):",
             f"  bench compress --model {model} --recipe THIS_FILE --dataset {table.dataset}"
             f"{limits} --out RUN_DIR"]
    measured = [what for what, on in (
        ("latency", row.latency), ("ONNX deployment", row.name in table.deploy_rows),
        ("accuracy before training", table.before_training and bool(row.stages))) if on]
    if measured:
        lines.append(f"The table also measures {', '.join(measured)} for this row; bench "
                     "compress does not (the model is the same).")
    return dump_recipe(recipe, header="\n".join(lines))


def row_as_recipe(table: Table, row_name: str, profile: str = "full") -> tuple[Recipe, str]:
    """The ``Recipe`` of ``row_recipe`` and the model to give ``bench compress`` (the first
    step's)."""
    if profile not in PROFILES:
        raise RecipeError(f"profile {profile!r} is not a profile; allowed: {', '.join(PROFILES)}")
    settings = PROFILE_SETTINGS[profile]
    if settings.channels_last != PROFILE_SETTINGS["full"].channels_last:
        raise RecipeError(f"profile {profile!r} trains with channels_last="
                          f"{settings.channels_last}, bench compress with "
                          f"{PROFILE_SETTINGS['full'].channels_last}; its rows cannot be "
                          "reproduced by a recipe")
    where = f"table {table.name!r}, row {row_name!r}"
    names = [r.name for r in table.rows]
    if row_name not in names:
        raise RecipeError(f"table {table.name!r} has no row {row_name!r}; rows: "
                          f"{', '.join(names)}")
    order = _recipe_order(table, row_name)
    steps = []
    for i, name in enumerate(order):
        row = table.row(name)
        if row.upstream is not None and (i == 0 or order[i - 1] != row.upstream):
            raise RecipeError(
                f"{where} cannot be written as a recipe: its chain needs row {name!r} to start "
                f"from {row.upstream!r}, but a recipe step starts from the step before it "
                f"({order[i - 1]!r}) and {row.upstream!r} must come earlier for another row "
                "(a teacher); run that part with bench reproduce --rows")
        bad = [s for s in row.stages if set(s) != {"kind", "config"} or "kind" in s["config"]]
        if bad:
            raise RecipeError(f"{where} cannot be written as a recipe: row {name!r} has the "
                              f"stage record {bad[0]!r}; a recipe stage is its kind plus its "
                              "config's fields")
        epochs = row.schedule.epochs[profile]
        schedule = dataclasses.replace(row.schedule, epochs={p: epochs for p in PROFILES})
        if not row.stages and epochs == 0:
            raise RecipeError(f"{where} cannot be written as a recipe: under profile "
                              f"{profile!r} row {name!r} neither applies a stage nor trains "
                              "(a recipe step must do one of them)")
        fresh = row.upstream is None
        kwargs = _profile_kwargs(row, settings.width) if fresh else {}
        steps.append(Step(name=row.name, stages=tuple(row.stages), schedule=schedule,
                          teacher=row.teacher, seed=row.seed,
                          model=row.model if fresh and i > 0 else None,
                          model_kwargs=kwargs if i > 0 else {}))
    first = table.row(order[0])
    recipe = Recipe(title=f"{table.title}: {table.row(row_name).label}", steps=tuple(steps),
                    model_kwargs=_profile_kwargs(first, settings.width),
                    source=f"{table.name}/{row_name}")
    return recipe, first.model


def _recipe_order(table: Table, row_name: str) -> list[str]:
    """``row_name`` and the rows it depends on, each after its teacher and its upstream, a
    row's upstream placed last before it where possible (teacher first)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        row = table.row(name)
        for dependency in (row.teacher, row.upstream):  # the upstream last: right before
            if dependency is not None:
                visit(dependency)
        order.append(name)

    visit(row_name)
    return order


def _profile_kwargs(row: Row, width: float) -> dict[str, Any]:
    """A first row's model arguments with the profile's width folded in, as the runner builds
    it (``bench compress`` runs at width 1: the recipe carries the width)."""
    kwargs = dict(row.model_kwargs)
    if not row.model.startswith("tv:") and (width != 1.0 or "width" in kwargs):
        kwargs["width"] = kwargs.get("width", 1.0) * width
    return kwargs
