"""Where datasets live: one root folder laid out like torchvision's
(``<root>/cifar-10-batches-py/``, ``<root>/MNIST/raw/``), so one setting serves every dataset."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "NETSHRINK_DATA"
DEFAULT_DATA_ROOT = "~/.cache/netshrink/data"


def resolve_data_root(data_dir: str | Path | None = None) -> Path:
    """The data root: ``data_dir`` (``--data-dir``) if given, else ``$NETSHRINK_DATA`` if set and
    non-empty, else ``~/.cache/netshrink/data``. ``~`` is expanded; the folder need not exist."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "")
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_DATA_ROOT).expanduser()


def where_hint(looked_in: Path, *, downloadable: bool = True) -> str:
    """The sentence every "data not found" error ends with: how to point elsewhere or download."""
    hint = (f"looked in {looked_in}; point elsewhere with --data-dir or the {DATA_ENV} "
            f"environment variable")
    if downloadable:
        hint += ", or pass download=True (CLI: --download) to fetch it there"
    return hint
