"""Atomic file writes: write a temporary file in the target folder, flush it to disk, rename.

A crash or an error mid-write never leaves a half-written file under the real name, and an
existing file there stays intact until the new one is complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it to ``path`` atomically.
    The result gets ordinary permissions (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_safetensors_atomic(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> Path:
    """safetensors ``save_file``, written atomically."""
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file (e.g. JSON results) atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
