"""Issue 16, item 5: a function that modifies the model it is given ends in ``_`` (and returns
that model); one without never modifies it. ``call_checked`` enforces it; here for core's own
public functions, in each package's tests for theirs."""

import dataclasses
import inspect
import warnings

import pytest
import torch
from torch import nn

import netshrink.core as core
from netshrink.core import Stage, call_checked, deprecated_alias, takes_a_model


@dataclasses.dataclass(frozen=True)
class _DoubleConfig:
    pass


class _Double(Stage):
    """An in-place stage: doubles every parameter."""

    config_class = _DoubleConfig

    def apply(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2.0)
        return model


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 2))


def _named(name, fn):
    fn.__name__ = name
    return fn


def _cases(tmp_path):
    x = torch.randn(2, 3, 6, 6)
    return {
        "apply_recipe_": (core.apply_recipe_, ([_Double(_DoubleConfig())],)),
        "applies_sign_to_input": (core.applies_sign_to_input, ()),
        "count_macs": (core.count_macs, (x,)),
        "count_params": (core.count_params, ()),
        "model_fingerprint": (core.model_fingerprint, ()),
        "state_bytes": (_named("state_bytes", lambda m: core.state_bytes(m, packed=True)), ()),
        "save_checkpoint": (_named("save_checkpoint", lambda m: core.save_checkpoint(
            tmp_path / "c.safetensors", m)), ()),
    }


def test_every_public_function_taking_a_model_is_checked(tmp_path):
    public = {n for n in core.__all__ if inspect.isfunction(getattr(core, n))
              and takes_a_model(getattr(core, n))} - {"call_checked", "takes_a_model"}
    assert public == set(_cases(tmp_path)), "classify the new function in _cases"


@pytest.mark.parametrize("name", sorted(_cases(None)))
def test_core_functions_keep_the_naming_rule(name, tmp_path):
    fn, args = _cases(tmp_path)[name]
    call_checked(fn, _net(), *args)


def test_the_check_catches_both_ways_of_breaking_the_rule():
    def scale(model):  # modifies its argument, no trailing '_'
        with torch.no_grad():
            next(model.parameters()).mul_(2)
        return model

    def copy_(model):  # trailing '_', returns a new model and leaves the argument alone
        return _net()

    with pytest.raises(AssertionError, match="no trailing '_' but modified"):
        call_checked(scale, _net())
    with pytest.raises(AssertionError, match="left the model it was given unchanged"):
        call_checked(copy_, _net())
    net = _net()
    with pytest.raises(AssertionError, match="returned the module it was given"):
        call_checked(lambda m: m, net)


def test_a_former_name_warns_and_forwards():
    old = deprecated_alias(core.count_params, "number_of_params")
    with pytest.warns(DeprecationWarning, match="number_of_params is renamed count_params"):
        assert old(_net()) == core.count_params(_net())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core.count_params(_net())  # the new name does not warn
    with pytest.warns(DeprecationWarning, match="apply_recipe is renamed apply_recipe_"):
        core.apply_recipe(_net(), [])
