"""Save and load whole models: the checkpoint records how to rebuild the structure.

``save_model`` writes the weights plus ``meta = {"model": model.netshrink_spec, "recipe": [stage
records]}``. ``load_model`` rebuilds the model with ``create_model``, re-creates each recipe
stage's structure with ``Stage.rebuild`` (importing the package that owns the stage kind; a
missing one is a ModuleNotFoundError naming it), then loads the weights strictly.

The records come from the file, so they are not trusted: ``load_model`` first builds the model
on the ``meta`` device (no memory behind any tensor) and compares every parameter and buffer with
the tensors the file actually holds; only when names and shapes all match is the model built for
real. A record asking for a model of width 4000 therefore costs nothing before it is refused.
Every malformed record or mismatch is a CheckpointError (a ValueError) naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.core import (
    CheckpointError,
    Stage,
    load_checkpoint,
    save_checkpoint,
    stage_from_description,
)
from netshrink.models.registry import SPEC_ATTR, create_model

_RESERVED_META = ("model", "recipe", "format", "version")


def save_model(path: str | os.PathLike[str], model: nn.Module, *,
               recipe: Sequence[Stage | Mapping[str, Any]] | None = None,
               extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (built by ``create_model``) and the recipe applied to it to ``path``.

    ``recipe`` holds stages or their ``describe()`` records, in the order they were applied.
    ``extra_meta`` adds JSON-able metadata; it may not use the keys ``model``, ``recipe``,
    ``format`` or ``version``.
    """
    spec = getattr(model, SPEC_ATTR, None)
    if not _is_spec(spec):
        raise ValueError(f"model {type(model).__name__} has no valid {SPEC_ATTR} record (got "
                         f"{spec!r}); build it with netshrink.models.create_model, or copy the "
                         f"record over when a stage returns a new module")
    clashes = sorted(set(extra_meta or {}) & set(_RESERVED_META))
    if clashes:
        raise ValueError(f"extra_meta key(s) {', '.join(clashes)} are reserved; "
                         f"reserved keys: {', '.join(_RESERVED_META)}")
    records = [s.describe() if isinstance(s, Stage) else dict(s) for s in recipe or []]
    meta = {**(extra_meta or {}), "model": spec, "recipe": records}
    return save_checkpoint(path, model, meta=meta)


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model saved at ``path``, apply its recipe's structure, load its weights
    (strictly) and return it in eval mode.

    A malformed model or recipe record, a structure that does not match the saved tensors, a
    model larger than the file can justify, or a model that cannot be built from the record
    raises CheckpointError; a stage kind whose package is not installed raises
    ModuleNotFoundError naming the package.
    """
    ckpt = load_checkpoint(path)
    name, kwargs = _model_record(path, ckpt.meta)
    records = _recipe_records(path, ckpt.meta)
    stored = sum(t.numel() for t in ckpt.model_state.values())
    skeleton = _skeleton(path, name, kwargs, records, stored)
    _check_structure(path, skeleton, ckpt.model_state)
    del skeleton
    model = _build(path, name, kwargs, records)  # for real: every step fit the ceiling on meta
    try:
        model.load_state_dict(ckpt.model_state, strict=True)
    except RuntimeError as err:  # a value-dependent stage that built differently for real
        raise CheckpointError(f"{path}: the saved tensors do not fit the rebuilt model "
                              f"(load_state_dict): {err}") from err
    return model.eval()


#: A model built from a record may hold at most this many times the elements its file holds
#: at any step of the rebuild (the unpruned model before a channel-pruning stage is larger than
#: the saved one), or ``_MIN_CEILING`` elements, whichever is more.
_MAX_GROWTH = 64
_MIN_CEILING = 1 << 24  # 16.7M elements (64 MiB of float32): every zoo model at width 1

# errors a factory or a stage may raise for values it cannot build from; ModuleNotFoundError
# (a stage's package is missing) is not among them and passes through unchanged
_BUILD_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError,
                 RuntimeError)


def _skeleton(path: Any, name: str, kwargs: dict[str, Any], records: list[dict[str, Any]],
              stored: int) -> nn.Module:
    """The model on the meta device, built step by step, each step's size checked against the
    ceiling before anything real is built.

    A stage whose rebuild needs values (BN folding decides from the BN scales) fails on meta;
    for it, the model up to and including that stage is built for real (every earlier step
    has passed the ceiling) and moved to meta to go on.
    """
    with torch.device("meta"):
        model = _create(path, name, kwargs)
    _check_ceiling(path, model, stored, "the model")
    for i, record in enumerate(records):
        try:
            with torch.device("meta"):
                model = _rebuild(path, i, record, model)
        except CheckpointError:
            model = _build(path, name, kwargs, records[: i + 1]).to("meta")
        _check_ceiling(path, model, stored, f"recipe stage {i} ({record['kind']!r})")
    return model


def _check_ceiling(path: Any, model: nn.Module, stored: int, what: str) -> None:
    total = sum(t.numel() for t in _unique_tensors(model))
    allowed = max(_MAX_GROWTH * stored, _MIN_CEILING)
    if total > allowed:
        raise CheckpointError(f"{path}: {what} rebuilt from the record has {total} elements; "
                              f"the file holds {stored}, which allows at most {allowed}")


def _create(path: Any, name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return create_model(name, **kwargs)
    except _BUILD_ERRORS as err:
        raise CheckpointError(f"{path}: cannot build model {name!r} from the saved arguments: "
                              f"{type(err).__name__}: {err}") from err


def _rebuild(path: Any, i: int, record: dict[str, Any], model: nn.Module) -> nn.Module:
    try:
        return stage_from_description(record).rebuild(model)
    except _BUILD_ERRORS as err:
        raise CheckpointError(f"{path}: cannot rebuild recipe stage {i} ({record['kind']!r}): "
                              f"{type(err).__name__}: {err}") from err


def _build(path: Any, name: str, kwargs: dict[str, Any],
           records: list[dict[str, Any]]) -> nn.Module:
    """``create_model`` then every record's ``rebuild``, on the current default device."""
    model = _create(path, name, kwargs)
    for i, record in enumerate(records):
        model = _rebuild(path, i, record, model)
    return model


def _check_structure(path: Any, skeleton: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    """Compare the (meta) model's parameters and persistent buffers with the file's tensors,
    name by name and shape by shape; the first difference is a CheckpointError."""
    expected = skeleton.state_dict()
    for key, tensor in expected.items():
        if key not in saved:
            raise CheckpointError(f"{path}: the model rebuilt from its record needs tensor "
                                  f"{key!r} of shape {tuple(tensor.shape)}, which the file "
                                  f"lacks (a recipe stage missing from the record?)")
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(saved[key].shape)} "
                                  f"in the file but {tuple(tensor.shape)} in the model rebuilt "
                                  f"from its record")
    unexpected = [k for k in saved if k not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: the file holds tensor {unexpected[0]!r} (and "
                              f"{len(unexpected) - 1} more) that the model rebuilt from its "
                              f"record does not have (a recipe stage missing from the record?)")


def _unique_tensors(model: nn.Module) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


_SCALARS = (str, int, float, bool, type(None))


def _model_record(path: Any, meta: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, kwargs) from ``meta["model"]``: a string name and an object of JSON scalars or
    lists of them."""
    spec = meta.get("model")
    if not _is_spec(spec):
        raise CheckpointError(f"{path}: checkpoint has no model record (meta['model'] = "
                              f"{_short(spec)}); expected {{'name': ..., 'kwargs': {{...}}}} as "
                              f"written by save_model")
    kwargs = dict(spec.get("kwargs", {}))
    for key, value in kwargs.items():
        if not _is_plain(value):
            raise CheckpointError(f"{path}: model argument {key!r} = {_short(value)} is not a "
                                  f"JSON scalar or a list of them")
    return spec["name"], kwargs


def _recipe_records(path: Any, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``meta["recipe"]``: a list of objects, each with a string ``kind`` and an object
    ``config`` (when present)."""
    records = meta.get("recipe", [])
    if not isinstance(records, list):
        raise CheckpointError(f"{path}: meta['recipe'] must be a list of stage records; got "
                              f"{_short(records)}")
    for i, record in enumerate(records):
        if (not isinstance(record, dict) or not isinstance(record.get("kind"), str)
                or not isinstance(record.get("config", {}), dict)):
            raise CheckpointError(f"{path}: recipe stage {i} must be an object with a string "
                                  f"'kind' and an object 'config'; got {_short(record)}")
    return records


def _is_plain(value: Any) -> bool:
    """A JSON scalar, or a list of plain values (the depth is bounded by load_checkpoint)."""
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _SCALARS)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_spec(spec: Any) -> bool:
    return (isinstance(spec, Mapping) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("kwargs", {}), Mapping)
            and all(isinstance(k, str) for k in spec.get("kwargs", {})))
