"""Save and load whole models: the checkpoint records how to rebuild the structure.

``save_model`` writes the weights plus ``meta = {"model": model.netshrink_spec, "recipe": [stage
records]}``. ``load_model`` rebuilds the model with ``create_model``, re-creates each recipe
stage's structure with ``Stage.rebuild`` (importing the package that owns the stage kind; a
missing one is a ModuleNotFoundError naming it), then loads the weights strictly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from netshrink.core import Stage, load_checkpoint, save_checkpoint, stage_from_description
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
    (strictly) and return it in eval mode."""
    ckpt = load_checkpoint(path)
    spec = ckpt.meta.get("model")
    if not _is_spec(spec):
        raise ValueError(f"{path}: checkpoint has no model record (meta['model'] = {spec!r}); "
                         "expected {'name': ..., 'kwargs': {...}} as written by save_model")
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    for record in ckpt.meta.get("recipe", []):
        model = stage_from_description(record).rebuild(model)
    model.load_state_dict(ckpt.model_state, strict=True)
    return model.eval()


def _is_spec(spec: Any) -> bool:
    return (isinstance(spec, Mapping) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("kwargs", {}), Mapping))
