"""Checkpoints that are safe to load: tensors in safetensors, everything else as JSON.

One file holds the model's tensors (``model.`` prefix), optional extra tensors such as the
optimizer state (any other prefix) and a JSON metadata record (model name and arguments, the
recipe as described by its stages, training progress) in the safetensors header. Loading never
unpickles anything. Files are written to a temporary name in the same folder and renamed, so a
crash never leaves a half-written checkpoint under the real name.

A checkpoint may come from anyone, so every reader here (``load_checkpoint``,
``restore_optimizer_state``) raises CheckpointError for a malformed file or record: metadata that
is not a JSON object, nests too deep or is too long, optimizer records of the wrong shape.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from netshrink.core.atomic import save_safetensors_atomic
from netshrink.core.bounded_json import loads_bounded

FORMAT = "netshrink-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "netshrink"
MODEL_PREFIX = "model."


class CheckpointError(ValueError, RuntimeError):
    """A file that is not a readable netshrink checkpoint, or whose records are malformed.

    A ValueError (bad input, which the CLI reports in one line) and, as before, a RuntimeError.
    """


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: model tensors, other tensors, metadata."""

    model_state: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module | dict[str, torch.Tensor], *,
                    meta: dict[str, Any] | None = None,
                    extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model``'s state dict, ``extra`` tensors and JSON ``meta`` to ``path`` atomically."""
    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        tensors[MODEL_PREFIX + name] = t.detach().to("cpu").contiguous()
    for name, t in (extra or {}).items():
        if name.startswith(MODEL_PREFIX):
            raise ValueError(f"extra tensor name {name!r} must not start with {MODEL_PREFIX!r}")
        tensors[name] = t.detach().to("cpu").contiguous()
    _dedupe_shared(tensors)
    record = {**(meta or {}), "format": FORMAT, "version": FORMAT_VERSION}
    header = {_META_KEY: json.dumps(record, sort_keys=True, allow_nan=False)}
    return save_safetensors_atomic(path, tensors, metadata=header)


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> None:
    """safetensors refuses tensors sharing storage; store copies (tied weights are rare here)."""
    seen: dict[int, str] = {}
    for name, t in list(tensors.items()):
        if t.numel() == 0:
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            tensors[name] = t.clone()
        else:
            seen[key] = name


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; anything else raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable netshrink checkpoint (truncated, corrupt, or another "
            f"format such as a pickled torch.save file, which is never loaded): {err}") from err
    raw = header.get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a netshrink checkpoint "
                              f"(no '{_META_KEY}' metadata)")
    try:
        meta = loads_bounded(raw)
    except ValueError as err:
        raise CheckpointError(f"{path}: unreadable '{_META_KEY}' metadata: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: '{_META_KEY}' metadata is a JSON "
                              f"{type(meta).__name__}, expected an object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('version')} is newer than this "
                              f"netshrink-core understands ({FORMAT_VERSION}); upgrade it")
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items()
                   if k.startswith(MODEL_PREFIX)}
    extra = {k: v for k, v in tensors.items() if not k.startswith(MODEL_PREFIX)}
    return Checkpoint(model_state=model_state, extra=extra, meta=meta)


def flatten_optimizer_state(optimizer: torch.optim.Optimizer,
                            prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into tensors (for safetensors) and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                            record: dict[str, Any], prefix: str = "optim.") -> None:
    """Inverse of ``flatten_optimizer_state``. ``tensors`` and ``record`` come from a file, so a
    record of the wrong shape, or one the optimizer refuses, raises CheckpointError."""
    if not isinstance(record, dict) or not isinstance(record.get("param_groups"), list):
        raise CheckpointError(f"optimizer record must be an object with a 'param_groups' list; "
                              f"got {_short(record)}")
    if not all(isinstance(g, dict) for g in record["param_groups"]):
        raise CheckpointError(f"optimizer 'param_groups' must be a list of objects; got "
                              f"{_short(record['param_groups'])}")
    scalars = record.get("scalars", {})
    if not isinstance(scalars, dict) or not all(isinstance(v, dict) for v in scalars.values()):
        raise CheckpointError(f"optimizer 'scalars' must map parameter indices to objects; got "
                              f"{_short(scalars)}")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix):
            continue
        idx, _, key = name[len(prefix):].partition(".")
        state.setdefault(_param_index(idx, name), {})[key] = value
    for idx, st in scalars.items():
        state.setdefault(_param_index(idx, f"scalars[{idx!r}]"), {}).update(st)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"the optimizer state does not fit this optimizer: "
                              f"{type(err).__name__}: {err}") from err


def _param_index(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise CheckpointError(f"optimizer state {where!r}: {text!r} is not a parameter index")
    return int(text)


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters, for error messages about file contents."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
