"""Recipe files: every key checked against the stage / config / schedule registries, one clear
error per mistake, bounded size, nothing evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from netshrink.bench.recipefile import (
    MAX_BYTES,
    RecipeError,
    load_recipe,
    parse_recipe,
    recipe_table,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

GOOD = '''
title = "t"
model_kwargs = { width = 0.5 }

[[step]]
name = "float"
train = { epochs = 3, lr = 0.1 }

[[step]]
name = "pruned"
train = { epochs = 2, lr = 0.02, optimizer = "adam", batch_size = 64 }
[[step.stage]]
kind = "prune.channels"
prune = { criterion = "l1", amount = 0.5 }
[[step.stage]]
kind = "quant.quantize"
w = 4
a = "binary"

[[step]]
[[step.stage]]
kind = "bnfuse.fuse"
'''


def test_a_good_recipe_becomes_a_chain_of_table_rows():
    recipe = parse_recipe(GOOD)
    assert [s.name for s in recipe.steps] == ["float", "pruned", "step3"]
    assert recipe.steps[1].stages == (
        {"kind": "prune.channels", "config": {"prune": {"criterion": "l1", "amount": 0.5}}},
        {"kind": "quant.quantize", "config": {"w": 4, "a": "binary"}})
    table = recipe_table(recipe, "nin", "cifar10")
    first, second, third = table.rows
    assert (first.model, first.model_kwargs, first.upstream) == ("nin", {"width": 0.5}, None)
    assert (second.upstream, third.upstream) == ("float", "pruned")
    assert second.schedule.epochs == {"full": 2, "quick": 2, "smoke": 2}
    assert (second.schedule.lr, second.schedule.optimizer, second.schedule.batch_size) == (
        0.02, "adam", 64)
    assert third.schedule.epochs["full"] == 0  # no train table: no training


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path: Path):
    assert load_recipe(path).steps


def _step(body: str) -> str:
    return f'[[step]]\nname = "s"\n{body}\n'


@pytest.mark.parametrize("text, match", [
    ('titel = "x"\n' + _step("train = { epochs = 1 }"),
     r"unknown key 'titel'; allowed: title, model_kwargs, step"),
    (_step('trian = { epochs = 1 }'), r"step 1: unknown key 'trian'; allowed: name, train"),
    (_step('train = { epochs = 1, learning_rate = 0.1 }'),
     r"step 1 \('s'\), train: unknown key 'learning_rate'; allowed: epochs, lr"),
    (_step('train = { lr = 0.1 }'), r"train has no 'epochs'"),
    (_step('train = { epochs = -1 }'), r"epochs\['full'\]=-1"),
    (_step('train = { epochs = 1, optimizer = "adamw" }'),
     r"optimizer='adamw' is not allowed; choose one of: 'sgd', 'adam'"),
    (_step('[[step.stage]]\nkind = "quantise"'),
     r"stage 1: kind='quantise' is not a stage kind; allowed: .*quant\.quantize"),
    (_step('[[step.stage]]\nkind = "quant.quantize"\nw = 4\nbits = 4'),
     r"stage 1 \(quant\.quantize\): unknown key 'bits'; allowed: .*\bw\b"),
    (_step('[[step.stage]]\nkind = "quant.quantize"\nw = 5\na = 4'),
     r"stage 1 \(quant\.quantize\): w=5 is not allowed"),
    (_step('[[step.stage]]\nkind = "quant.quantize"\nw = 4'),
     r"stage 1 \(quant\.quantize\): missing key 'a' \(required\)"),
    (_step('[[step.stage]]\nkind = "prune.channels"\n'
           'prune = { criterion = "l1", amout = 0.5 }'),
     r"stage 1 \(prune\.channels\), prune: unknown key 'amout'; allowed: .*amount"),
    (_step('[[step.stage]]\nkind = "prune.channels"\nprune = { criterion = "l7" }'),
     r"criterion='l7'"),
    (_step(""), r"neither applies a stage nor trains"),
    (_step("train = { epochs = 1 }") + _step("train = { epochs = 1 }"),
     r"step 2 \('s'\): name 's' is used by an earlier step"),
    ('[[step]]\nname = "../up"\ntrain = { epochs = 1 }', r"name='../up' is not allowed"),
    (_step('teacher = "nobody"\ntrain = { epochs = 1 }'),
     r"teacher='nobody' is not an earlier step"),
    ('title = "no steps"', r"has no steps"),
    (_step('seed = -1\ntrain = { epochs = 1 }'), r"seed=-1 must be an integer >= 0"),
    (_step('model = "nin"\ntrain = { epochs = 1 }'),
     r"step 1 \('s'\): the first step's model is the command's --model"),
    ('[[step]]\ntrain = { epochs = 1 }\n' + _step('model = "nosuch"\ntrain = { epochs = 1 }'),
     r"step 2 \('s'\): model='nosuch' is not a registered model; allowed: .*\bnin\b"),
    ('[[step]]\ntrain = { epochs = 1 }\n' + _step('model_kwargs = { width = 0.5 }\n'
                                                  'train = { epochs = 1 }'),
     r"step 2 \('s'\): model_kwargs needs model = \"NAME\" in the same step"),
    ('[[step]]\ntrain = { epochs = 1 }\n' + _step('model = "nin"\nmodel_kwargs = 3\n'
                                                  'train = { epochs = 1 }'),
     r"model_kwargs=3 must be a table"),
    ("[[step]\n", r"is not valid TOML"),
])
def test_each_mistake_is_one_error_naming_it(text: str, match: str):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(text)


def test_a_step_with_its_own_model_starts_afresh_with_its_seed():
    recipe = parse_recipe('model_kwargs = { width = 0.5 }\n'
                          '[[step]]\nname = "teacher"\ntrain = { epochs = 2 }\n'
                          '[[step]]\nname = "student"\nmodel = "nin_gc"\n'
                          'model_kwargs = { width = 0.25 }\nteacher = "teacher"\nseed = 2\n'
                          'train = { epochs = 1 }\n[[step.stage]]\nkind = "distill.kd"\n'
                          '[[step]]\nname = "fused"\n[[step.stage]]\nkind = "bnfuse.fuse"\n')
    teacher, student, fused = recipe_table(recipe, "nin", "cifar10").rows
    assert (teacher.model, teacher.model_kwargs, teacher.upstream) == ("nin", {"width": 0.5},
                                                                         None)
    assert (student.model, student.model_kwargs, student.upstream) == (
        "nin_gc", {"width": 0.25}, None)
    assert (student.teacher, student.seed) == ("teacher", 2)
    assert (fused.upstream, fused.seed, fused.model_kwargs) == ("student", 0, {})


def test_size_is_bounded_before_parsing(tmp_path: Path):
    path = tmp_path / "big.toml"
    path.write_text("# " + "x" * MAX_BYTES + "\n" + _step("train = { epochs = 1 }"))
    with pytest.raises(RecipeError, match=f"larger than {MAX_BYTES} bytes"):
        load_recipe(path)


def test_nothing_in_the_file_is_imported_or_evaluated():
    # a kind naming a module is a lookup in the registry, never an import
    with pytest.raises(RecipeError, match="not a stage kind"):
        parse_recipe(_step('[[step.stage]]\nkind = "os.system"'))


def test_cli_reports_a_bad_recipe_as_one_error_line(tmp_path: Path):
    from netshrink.bench.cli import app

    recipe = tmp_path / "r.toml"
    recipe.write_text(_step('trian = { epochs = 1 }'))
    result = CliRunner().invoke(app, ["compress", "--model", "nin", "--recipe", str(recipe),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "unknown key 'trian'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ('model_kwargs = { width = 1000.0 }\n[[step]]\nname = "a"\ntrain = { epochs = 1 }\n',
     r"step 'a': model 'nin' with \{'width': 1000.0\} has [\d,]+ parameter and buffer "
     r"elements; a recipe may ask for at most 2,147,483,648"),
    ('[[step]]\nname = "a"\ntrain = { epochs = 1 }\n[[step]]\nname = "b"\nmodel = "nin"\n'
     'model_kwargs = { width = 5e3 }\ntrain = { epochs = 1 }\n',
     r"step 'b': model 'nin' .* has [\d,]+ parameter"),
    ('[[step]]\nname = "a"\ntrain = { epochs = 1 }\n[[step]]\nname = "b"\nmodel = "nin"\n'
     'model_kwargs = { depth = 3 }\ntrain = { epochs = 1 }\n',
     r"step 'b': model 'nin' with \{'depth': 3\}: .*unknown argument"),
])
def test_a_recipe_asking_for_a_huge_or_unbuildable_model_is_refused_before_allocation(
        text, message):
    """The model a recipe asks for is built on the meta device first: a width of 1000 (about
    1e12 parameters) is one RecipeError, not an attempt to allocate terabytes."""
    from netshrink.bench.recipefile import recipe_table

    with pytest.raises(RecipeError, match=message):
        recipe_table(parse_recipe(text), "nin", "cifar10")


def test_a_model_that_cannot_be_built_on_the_meta_device_is_left_to_its_real_build(
        monkeypatch):
    """A user's factory that needs real tensors to build (it raises on the meta device) is not
    refused by the size check: its real build decides; one that builds on meta is measured."""
    import netshrink.models as models
    from netshrink.bench.recipefile import check_model_size

    calls: list[str] = []

    def needs_real_tensors(name, num_classes, **kwargs):
        calls.append(name)
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")

    monkeypatch.setattr(models, "create_model", needs_real_tensors)
    check_model_size("user.mod:factory", {}, "step 'a'")  # no error
    assert calls == ["user.mod:factory"]

    def huge(name, num_classes, **kwargs):
        import torch
        return torch.nn.Linear(2**16, 2**16)  # 4.3e9 elements, on the meta device here

    monkeypatch.setattr(models, "create_model", huge)
    with pytest.raises(RecipeError, match=r"4,295,032,832 parameter and buffer elements"):
        check_model_size("user.mod:factory", {}, "step 'a'")
