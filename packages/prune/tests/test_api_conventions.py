"""Issue 16, item 5: every public prune function that takes a model keeps the naming rule
(``netshrink.core.call_checked``): with a trailing ``_`` it modifies the model it is given
(and returns it, when it returns a module); without, the model is left exactly as it was."""

import copy
import inspect

import pytest
import torch
from torch import nn

import netshrink.prune as prune
from netshrink.core import call_checked, takes_a_model
from netshrink.prune import ChannelPruneConfig

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
CONFIG = ChannelPruneConfig(criterion="l1", amount=0.5)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _plan(model):
    return prune.plan_channels(model, X, CONFIG)


def _masked_and_moved() -> nn.Module:
    """Masked, then every weight moved (as an optimizer step does)."""
    model = prune.magnitude_prune_(_net(), 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model


def _structure() -> dict:
    model = _net()
    return prune.channel_structure(prune.prune_channels(model, X, CONFIG))


#: name -> (the model to call it on, the call's other arguments), built lazily
CASES = {
    "apply_masks_": lambda: (_masked_and_moved(), ()),
    "apply_plan_": lambda: ((m := _net()), (_plan(m),)),
    "apply_structure_": lambda: (_net(), (_structure(),)),
    "magnitude_prune_": lambda: (_net(), (0.5,)),
    "slice_channels_": lambda: (nn.BatchNorm2d(8), (torch.tensor([0, 2, 5]),)),
    "zero_filters_": lambda: ((m := _net()), (_plan(m),)),
    "channel_structure": lambda: (_net(), ()),
    "plan_channels": lambda: (_net(), (X, CONFIG)),
    "prune_channels": lambda: (_net(), (X, CONFIG)),
    "slimming_penalty": lambda: (_net(), (1e-4,)),
    "tensor_structure": lambda: ((m := _net()), (_plan(m),)),
    "trace": lambda: (_net(), ()),
    "weight_sparsity": lambda: (_net(), ()),
}


def test_every_public_function_taking_a_model_is_classified():
    public = {n for n in prune.__all__ if inspect.isfunction(getattr(prune, n))
              and takes_a_model(getattr(prune, n))}
    assert public == set(CASES), "add the new function to CASES (docs/api-conventions.md)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_prune_functions_keep_the_naming_rule(name):
    model, args = CASES[name]()
    call_checked(getattr(prune, name), model, *args)


def test_prune_channels_is_apply_plan_on_a_copy():
    model = _net()
    copied = prune.prune_channels(model, X, CONFIG)
    in_place = prune.apply_plan_(copy.deepcopy(model), _plan(model))
    assert prune.channel_structure(copied) == prune.channel_structure(in_place)


def test_the_former_names_still_work_and_warn():
    with pytest.warns(DeprecationWarning, match="magnitude_prune is renamed magnitude_prune_"):
        prune.magnitude_prune(_net(), 0.5)
    for old in ("apply_masks", "apply_plan", "apply_structure", "slice_channels",
                "zero_filters"):
        alias = getattr(prune, old)
        assert alias.__wrapped__ is getattr(prune, old + "_") and old not in prune.__all__
