"""Atomic file writes: write a temporary file in the target folder, flush it to disk, rename.

A crash or an error mid-write (a full disk included) never leaves a half-written file under the
real name, and an existing file there stays intact until the new one is complete.

A process killed mid-write (kill -9, the OOM killer, a lost node) cannot remove its temporary
file, so temporary names say who owns them: ``.NAME.PID.HOST.RANDOM.tmp`` (HOST: 8 hex digits
of this machine's name). ``write_atomic`` first removes the temporary files of the same target
left by dead processes of this machine, and ``sweep_stale_temp_files(folder)`` does so for a
whole folder (the table runner calls it when it takes over a run folder). A temporary file of a
live process, or of another machine (a shared filesystem), is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[0-9a-f]{8})\.[0-9a-f]{8}\.tmp$")


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it to ``path`` atomically.

    ``tmp_path`` exists (empty) when ``write`` is called and ends in ``.tmp``: a writer that
    infers the format from the extension (matplotlib's ``savefig``) must be told the format.
    The result gets ordinary permissions (0666 less the umask). Temporary files of this same
    target left by dead processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path.parent, name=path.name)
    tmp = path.parent / temp_name(path.name)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = tmp.stat().st_mode & 0o777  # 0666 less the umask, as the kernel applied it
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer may replace the file (safetensors' gets 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def save_safetensors_atomic(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> Path:
    """safetensors ``save_file``, written atomically."""
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write a text file (JSON results, a README) atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))


def temp_name(name: str, pid: int | None = None) -> str:
    """The temporary name ``write_atomic`` uses for target ``name``, owned by ``pid`` (default:
    this process) on this machine."""
    pid = os.getpid() if pid is None else pid
    return f".{name}.{pid}.{_host_tag()}.{secrets.token_hex(4)}.tmp"


def sweep_stale_temp_files(folder: str | os.PathLike[str], *, recursive: bool = False
                           ) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes in ``folder`` (and below it,
    if ``recursive``) whose writer, a process of this machine, is dead. Returns what was
    removed. A missing folder is fine (nothing to do)."""
    folder = Path(folder)
    if not recursive:
        return _sweep(folder)
    removed: list[Path] = []
    for dirpath, _, _ in os.walk(folder):
        removed += _sweep(Path(dirpath))
    return removed


def _sweep(folder: Path, name: str | None = None) -> list[Path]:
    """One listdir of ``folder``; remove dead processes' temp files (of target ``name`` only,
    if given)."""
    removed = []
    prefix = "." if name is None else f".{name}."
    try:
        entries = [e for e in os.listdir(folder) if e.startswith(prefix) and e.endswith(".tmp")]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    host = _host_tag()
    for entry in entries:
        m = _TEMP.match(entry)
        if m is None or m["host"] != host or (name is not None and m["name"] != name):
            continue
        if not _alive(int(m["pid"])):
            with contextlib.suppress(FileNotFoundError):  # another sweeper was first
                (folder / entry).unlink()
                removed.append(folder / entry)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists here. Only a definite "no such process" counts as dead:
    a pid we may not signal (another user's) is alive, and so is a reused pid (conservative)."""
    if pid <= 0:  # 0 and negative numbers address process groups: never ours to judge
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
