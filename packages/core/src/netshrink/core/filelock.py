"""Exclusive locks between processes on a lock file (``fcntl.flock``), released by the OS when
the holder exits or dies (kill -9 included), so a crash never leaves a stale lock behind.

The holder writes its pid into the lock file, for messages only ("being trained by pid N"):
whether the lock is held is decided by the OS, never by the file's content. Lock files are
left in place on release; deleting them would let two processes lock two different files of
the same name. POSIX only (Linux, macOS): on a platform without ``fcntl`` acquiring fails
with a clear error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: not a target platform
    fcntl = None  # type: ignore[assignment]


class LockHeldError(BlockingIOError):
    """The lock is held by another process (and the caller chose not to wait). A
    BlockingIOError, as the non-blocking ``flock`` that found it busy reports it."""

    def __init__(self, path: Path, pid: int | None, message: str | None = None) -> None:
        self.path, self.pid = path, pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(message or f"{path} is locked by another process ({holder})")


class FileLock:
    """An exclusive lock on ``path`` (created if missing, with its folder).

    ``try_acquire()`` never blocks; ``acquire(wait=True)`` polls until the lock is free, calling
    ``on_wait(holder_pid)`` once first; ``release()`` (or leaving the ``with`` block) frees it.
    Two ``FileLock`` objects on the same path exclude each other even inside one process.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return whether this object holds it now."""
        if self._fd is not None:
            return True
        flock = _fcntl()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            flock.flock(fd, flock.LOCK_EX | flock.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def acquire(self, *, wait: bool = True, on_wait: Callable[[int | None], None] | None = None,
                poll_seconds: float = 0.5) -> None:
        """Take the lock; if another process holds it, raise LockHeldError (``wait=False``) or
        poll every ``poll_seconds`` until it is free."""
        if self.try_acquire():
            return
        if not wait:
            raise LockHeldError(self.path, self.holder_pid())
        if on_wait is not None:
            on_wait(self.holder_pid())
        while not self.try_acquire():
            time.sleep(poll_seconds)

    def release(self) -> None:
        """Free the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no stale pid in the file for the next message
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def holder_pid(self) -> int | None:
        """The pid the current holder wrote into the lock file (None if unknown or free)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _fcntl():
    if fcntl is None:
        raise RuntimeError("netshrink's file locks need fcntl.flock, which this platform "
                           "lacks; run on Linux or macOS")
    return fcntl
