"""Checkpoints that are safe to load: tensors in safetensors, everything else as JSON.

One file holds the model's tensors (``model.`` prefix), optional extra tensors such as the
optimizer state (any other prefix) and a JSON metadata record (model name and arguments, the
recipe as described by its stages, training progress) in the safetensors header. Loading never
unpickles anything. Files are written to a temporary name in the same folder and renamed, so a
crash never leaves a half-written checkpoint under the real name.
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

FORMAT = "netshrink-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "netshrink"
MODEL_PREFIX = "model."


class CheckpointError(RuntimeError):
    """A file that is not a readable netshrink checkpoint."""


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
    header = {_META_KEY: json.dumps(record, sort_keys=True)}
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
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: metadata is not valid JSON: {err}") from err
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
    """Inverse of ``flatten_optimizer_state``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix):
            continue
        idx, key = name[len(prefix):].split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, st in record.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
