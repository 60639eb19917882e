"""``row_recipe`` / ``bench recipe``: every results-table row is a recipe file that reads back
as the same rows (stages, schedules, chain, teacher, seed, the model the runner builds); the
TOML writer round-trips every value it accepts; a row a recipe cannot express is one error
naming it and why."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.recipefile import (
    RecipeError,
    load_recipe,
    parse_recipe,
    recipe_table,
    row_as_recipe,
    row_recipe,
)
from netshrink.bench.tables import PROFILE_SETTINGS, PROFILES, TABLES, Row, Schedule, Table
from netshrink.bench.tomlwriter import toml_comment, toml_key, toml_value

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _built_kwargs(row: Row, width: float) -> dict[str, Any]:
    """The arguments the runner builds a first row's model with under a profile of ``width``
    (as ``runner._starting_model``)."""
    kwargs = dict(row.model_kwargs)
    if not row.model.startswith("tv:"):
        kwargs["width"] = kwargs.get("width", 1.0) * width
    return kwargs


def _check_round_trip(table: Table, name: str, profile: str) -> None:
    text = row_recipe(table, name, profile)
    _, model = row_as_recipe(table, name, profile)
    rows = recipe_table(parse_recipe(text), model, table.dataset).rows
    assert {r.name for r in rows} == {r.name for r in table.closure([name])}
    assert rows[-1].name == name
    for got in rows:
        want = table.row(got.name)
        where = f"{table.name}/{name} ({profile}), step {got.name}"
        assert got.stages == want.stages, where
        epochs = want.schedule.epochs[profile]
        assert got.schedule == dataclasses.replace(
            want.schedule, epochs={p: epochs for p in PROFILES}), where
        assert (got.upstream, got.teacher, got.seed) == (want.upstream, want.teacher,
                                                         want.seed), where
        if want.upstream is None:  # bench compress runs at the full profile's width
            assert got.model == want.model, where
            assert _built_kwargs(got, PROFILE_SETTINGS["full"].width) == _built_kwargs(
                want, PROFILE_SETTINGS[profile].width), where


def test_every_row_of_every_table_reads_back_as_the_same_rows():
    count = 0
    for table_name in TABLES.names():  # extra and CI-only tables too
        table = TABLES.get(table_name)
        for row in table.rows:
            for profile in PROFILES:
                _check_round_trip(table, row.name, profile)
                count += 1
    assert count >= 3 * 100  # the registry was filled: every table module was imported


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(table_name=st.sampled_from(TABLES.names()), data=st.data(),
       profile=st.sampled_from(PROFILES), title=_TEXT, label=_TEXT,
       lr=st.floats(min_value=1e-12, max_value=1e6, allow_subnormal=False),
       weight_decay=st.floats(min_value=0.0, max_value=1.0, allow_subnormal=False),
       epochs=st.integers(0, 10_000), batch_size=st.integers(1, 4096),
       recalibrate=st.integers(0, 100), optimizer=st.sampled_from(["sgd", "adam"]))
def test_a_row_with_any_schedule_and_any_text_reads_back(table_name, data, profile, title,
                                                         label, lr, weight_decay, epochs,
                                                         batch_size, recalibrate, optimizer):
    """Any title / label text (quotes, backslashes, newlines, control characters) and any
    schedule values survive the file."""
    table = TABLES.get(table_name)
    row = data.draw(st.sampled_from(table.rows))
    schedule = Schedule(epochs={p: epochs for p in PROFILES}, lr=lr, optimizer=optimizer,
                        weight_decay=weight_decay, batch_size=batch_size,
                        recalibrate_bn=recalibrate)
    if not row.stages and epochs == 0:
        schedule = dataclasses.replace(schedule, epochs={p: 1 for p in PROFILES})
    changed = dataclasses.replace(row, label=label, schedule=schedule)
    rows = tuple(changed if r.name == row.name else r for r in table.rows)
    table = dataclasses.replace(table, title=title, rows=rows)
    _check_round_trip(table, row.name, profile)
    assert parse_recipe(row_recipe(table, row.name, profile)).title == f"{title}: {label}"


_SCALARS = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT
            | st.floats(allow_nan=True, allow_infinity=True))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=12)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(key=_TEXT.filter(bool), value=_VALUES, comment=_TEXT)
def test_the_toml_writer_round_trips_every_value(key, value, comment):
    text = f"{toml_comment(comment)}\n{toml_key(key)} = {toml_value(value)}\n"
    assert _same(value, tomllib.loads(text)[key]), text


def test_the_toml_writer_refuses_what_toml_cannot_hold():
    for value, match in ((None, "has no TOML form"), (2**63, "64-bit"), ({1: 2}, "keys are"),
                         ("\ud800", "not valid Unicode"), (object(), "has no TOML form")):
        with pytest.raises((TypeError, ValueError), match=match):
            toml_value(value)


def test_a_row_a_recipe_cannot_express_is_one_error_naming_it():
    schedule = Schedule(epochs={"full": 2, "quick": 1, "smoke": 0})
    table = Table("t", "t", baseline="a", rows=(
        Row("a", "a", model="nin", schedule=schedule),
        # the teacher starts from a: the student's step could not follow a directly
        Row("t", "t", upstream="a", stages=({"kind": "bnfuse.fuse", "config": {}},)),
        Row("b", "b", upstream="a", teacher="t",
            stages=({"kind": "distill.kd", "config": {}},), schedule=schedule),
    ))
    with pytest.raises(RecipeError, match=r"row 'b' cannot be written as a recipe: .*starts "
                                          r"from the step before it"):
        row_recipe(table, "b")
    with pytest.raises(RecipeError, match=r"row 'a'.* neither applies a stage nor trains"):
        row_recipe(table, "a", "smoke")  # no epochs under smoke, no stage
    with pytest.raises(RecipeError, match="has no row 'nosuch'; rows: a, t, b"):
        row_recipe(table, "nosuch")
    with pytest.raises(RecipeError, match="'huge' is not a profile"):
        row_recipe(table, "a", "huge")


def test_the_hand_written_smoke_recipe_is_the_generated_one():
    """recipes/smoke_w4a4.toml says the same as ``bench recipe --table smoke --row nin-w4a4
    --profile smoke`` (step names and title aside)."""
    hand = load_recipe(RECIPES / "smoke_w4a4.toml")
    generated = parse_recipe(row_recipe(TABLES.get("smoke"), "nin-w4a4", "smoke"))
    assert hand.model_kwargs == generated.model_kwargs
    assert len(hand.steps) == len(generated.steps)
    for ours, theirs in zip(hand.steps, generated.steps, strict=True):
        assert dataclasses.replace(ours, name=theirs.name) == theirs


def _bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_cli_writes_the_recipe_atomically_or_prints_it(tmp_path: Path):
    out = tmp_path / "r" / "binary.toml"
    code, output = _bench("recipe", "--table", "micronet", "--row", "nin-wbin-abin",
                          "--profile", "quick", "--out", str(out))
    assert code == 0, output
    assert out.read_text() == row_recipe(TABLES.get("micronet"), "nin-wbin-abin", "quick")
    assert [p.name for p in out.parent.iterdir()] == ["binary.toml"]  # no temp file left
    recipe = load_recipe(out)
    assert [s.name for s in recipe.steps] == ["nin-bacp-float", "nin-wbin-abin"]
    assert recipe.model_kwargs == {"block_order": "bacp", "width": 0.25}
    code, printed = _bench("recipe", "--table", "micronet", "--row", "nin-wbin-abin",
                           "--profile", "quick")
    assert code == 0 and printed == out.read_text()


@pytest.mark.parametrize(("args", "message"), [
    (("--table", "nosuch", "--row", "x"), "--table 'nosuch' is not a table; allowed: "),
    (("--table", "smoke", "--row", "x"), "--row 'x' is not a row of table 'smoke'; its rows: "
                                         "nin-float, "),
    (("--table", "smoke", "--row", "nin-float", "--profile", "big"), "--profile 'big' is not "
                                                                     "allowed"),
])
def test_cli_names_what_is_allowed(args: tuple[str, ...], message: str):
    code, output = _bench("recipe", *args)
    assert code == 2 and message in " ".join(output.split()), output
