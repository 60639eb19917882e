"""Issue 16, item 5: the public models functions that take a model keep the naming rule
(``netshrink.core.call_checked``): none of them modifies its argument."""

import inspect

import netshrink.models as models
from netshrink.core import call_checked, takes_a_model


def test_every_public_function_taking_a_model_leaves_it_alone(tmp_path):
    public = {n for n in models.__all__ if inspect.isfunction(getattr(models, n))
              and takes_a_model(getattr(models, n))}
    assert public == {"save_model"}, "classify the new function (docs/api-conventions.md)"

    def save_model(model):
        return models.save_model(tmp_path / "m.safetensors", model)

    call_checked(save_model, models.create_model("nin", width=0.125))
