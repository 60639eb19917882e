"""The model registry: ``@register_model`` fills it, ``create_model`` builds by name.

``create_model`` checks keyword arguments against the factory's signature, so a typo is a
ValueError rather than a silently ignored option, and stamps every model with
``netshrink_spec = {"name": ..., "kwargs": ...}``: the name and *all* arguments, defaults filled
in, as JSON. Checkpoints store that record, so a model can be rebuilt even if defaults change.
Names starting with ``tv:`` are torchvision classification models (see
``netshrink.models.torchvision_adapter``).
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from netshrink.core import Registry
from netshrink.models.torchvision_adapter import (
    TV_PREFIX,
    build_torchvision,
    check_torchvision_name,
    torchvision_names,
)

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")
SPEC_ATTR = "netshrink_spec"


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a factory taking keyword arguments only (JSON-able values)."""
    if not isinstance(name, str) or not name or name.startswith(TV_PREFIX):
        raise ValueError(f"model name {name!r} must be a non-empty string not starting with "
                         f"{TV_PREFIX!r} (reserved for torchvision)")
    return MODELS.register(name)


def list_models(*, torchvision: bool = True) -> list[str]:
    """Our registered names (sorted), then every ``tv:<name>`` torchvision classification model
    (sorted) unless ``torchvision=False``."""
    names = MODELS.names()
    if torchvision:
        names += [TV_PREFIX + n for n in torchvision_names()]
    return names


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``kwargs`` and record how in ``model.netshrink_spec``.

    Unknown names, unknown arguments and bad values raise ValueError naming the value and what
    is allowed.
    """
    factory = _factory(name)
    resolved = _resolve_kwargs(name, factory, kwargs)
    model = factory(**resolved)
    setattr(model, SPEC_ATTR, {"name": name, "kwargs": resolved})
    return model


def _factory(name: str) -> ModelFactory:
    if not isinstance(name, str):
        raise ValueError(f"model name {name!r} must be a string")
    if name.startswith(TV_PREFIX):
        tv_name = name[len(TV_PREFIX):]
        check_torchvision_name(tv_name)
        return functools.partial(build_torchvision, tv_name)
    if name not in MODELS:
        known = ", ".join(MODELS.names())
        raise ValueError(f"unknown model {name!r}; registered: {known}; or 'tv:<name>' for a "
                         "torchvision classification model (list_models() shows all)")
    return MODELS.get(name)


def _resolve_kwargs(name: str, factory: ModelFactory, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check argument names against the signature; return all of them with defaults, as JSON."""
    params = inspect.signature(factory).parameters.values()
    allowed = [p.name for p in params
               if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown and not open_ended:
        raise ValueError(f"model {name!r} got unknown argument(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(allowed) or '(none)'}")
    missing = [p.name for p in params if p.name in allowed and p.default is p.empty
               and p.name not in kwargs]
    if missing:
        raise ValueError(f"model {name!r} needs argument(s) {', '.join(missing)}")
    resolved = {p.name: p.default for p in params
                if p.name in allowed and p.default is not p.empty}
    resolved.update(kwargs)
    try:
        return json.loads(json.dumps(resolved))
    except (TypeError, ValueError) as err:
        raise ValueError(f"model {name!r}: arguments must be JSON values (str, int, float, "
                         f"bool, None, lists, dicts) so checkpoints can record them; "
                         f"got {resolved!r}: {err}") from err
