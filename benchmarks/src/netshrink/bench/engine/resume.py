"""What a checkpoint records about how its run was made, and the check ``--resume`` runs.

A resumed run must be the same run: same training config, model, recipe, dataset (its name,
its split sizes and a fingerprint of its contents, so a different subset or a synthetic stand-in
is caught), seed, and anything else the caller recorded in the trainer's ``meta``. Every
difference is listed with its saved and current value; none is ignored silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import torch

from netshrink.bench.data import ImageData

#: TrainConfig fields that may change between a run and its resumption (bookkeeping only).
RESUMABLE_CHANGES = ("keep_checkpoints",)
#: How many sample images the data fingerprint hashes (evenly spaced; all labels are hashed).
FINGERPRINT_IMAGES = 256
_MISSING = "<not recorded>"
_SHOWN = 8  # differences listed in one error message


class ConfigMismatchError(ValueError):
    """``--resume`` found a checkpoint made with different settings."""


def data_record(train: ImageData, test: ImageData) -> dict[str, Any]:
    """The dataset a run trains on: name, split sizes, image shape, classes and a fingerprint
    (SHA-256 of both splits' labels and a few evenly spaced images)."""
    digest = hashlib.sha256()
    for split in (train, test):
        digest.update(split.labels.cpu().numpy().tobytes())
        n = len(split)
        if n:
            idx = torch.linspace(0, n - 1, min(n, FINGERPRINT_IMAGES)).long()
            digest.update(split.images[idx.to(split.images.device)].cpu().numpy().tobytes())
    return {"name": train.name, "train_images": len(train), "test_images": len(test),
            "image_shape": list(train.image_shape), "num_classes": train.num_classes,
            "fingerprint": digest.hexdigest()[:16]}


def _normal(value: Any) -> Any:
    """The value as it reads back from a checkpoint's JSON metadata (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True))


def _differences(saved: Any, now: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now), key=str):
            yield from _differences(saved.get(key, _MISSING), now.get(key, _MISSING),
                                    f"{path}.{key}")
    elif isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        for i, (a, b) in enumerate(zip(saved, now, strict=True)):
            yield from _differences(a, b, f"{path}[{i}]")
    elif saved != now:
        yield path, saved, now


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def resume_differences(saved_meta: dict[str, Any], *, config: dict[str, Any],
                       data: dict[str, Any], stages: list[dict[str, Any]],
                       meta: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, saved, now) for everything recorded that differs: the training ``config``
    (except ``RESUMABLE_CHANGES``), the ``data`` record, the ``stages`` records (the recipe the
    trainer was given) and every key of the caller's ``meta`` (model, recipe, dataset...)."""
    train = saved_meta.get("train", {})
    saved_config = {k: v for k, v in train.get("config", {}).items()
                    if k not in RESUMABLE_CHANGES}
    now_config = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    found = list(_differences(_normal(saved_config), _normal(now_config), "config"))
    found += _differences(train.get("data", _MISSING), _normal(data), "data")
    found += _differences(train.get("stages", _MISSING), _normal(stages), "stages")
    for key in sorted(meta):
        found += _differences(saved_meta.get(key, _MISSING), _normal(meta[key]), key)
    return found


def check_resumable(run_dir: Any, saved_meta: dict[str, Any], *, config: dict[str, Any],
                    data: dict[str, Any], stages: list[dict[str, Any]],
                    meta: dict[str, Any]) -> None:
    """Raise ConfigMismatchError naming each differing field with its saved and current
    value (see ``resume_differences``)."""
    diff = resume_differences(saved_meta, config=config, data=data, stages=stages, meta=meta)
    if not diff:
        return
    shown = "; ".join(f"{field}: saved {_short(a)}, now {_short(b)}"
                      for field, a, b in diff[:_SHOWN])
    more = f"; and {len(diff) - _SHOWN} more" if len(diff) > _SHOWN else ""
    raise ConfigMismatchError(f"cannot resume {run_dir}: it was made with different settings "
                              f"({shown}{more}); use the same settings or a new --out")
