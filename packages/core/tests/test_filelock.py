"""FileLock: exclusive between processes (and between lock objects), the holder's pid for
messages, released by the OS when the holder is killed, waiting, and no fcntl."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netshrink.core import FileLock, LockHeldError
from netshrink.core import filelock as filelock_module

DEADLINE_S = 120  # only a hang ends here: a normal run takes a few seconds

_HOLDER = """
import sys, time
from pathlib import Path
from netshrink.core import FileLock

lock_path, ready, go = (Path(a) for a in sys.argv[1:4])
lock = FileLock(lock_path)
assert lock.try_acquire()
ready.write_text("")
while not go.exists():  # hold the lock until told to go (or killed)
    time.sleep(0.05)
lock.release()
"""


def _start_holder(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / ".row.lock"),
                             str(ready), str(go)])
    deadline = time.monotonic() + DEADLINE_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the lock holder never got ready")
        time.sleep(0.05)
    return proc, go


def test_two_locks_on_one_path_exclude_each_other(tmp_path: Path):
    first, second = FileLock(tmp_path / ".x.lock"), FileLock(tmp_path / ".x.lock")
    assert first.try_acquire() and first.held
    assert not second.try_acquire() and not second.held
    assert second.holder_pid() == os.getpid()
    with pytest.raises(LockHeldError, match=f"pid {os.getpid()}") as err:
        second.acquire(wait=False)
    assert isinstance(err.value, BlockingIOError) and err.value.path == tmp_path / ".x.lock"
    first.release()
    assert second.holder_pid() is None  # the released lock holds no stale pid
    with second:
        assert second.held and not first.try_acquire()
    assert first.try_acquire()
    first.release()
    assert (tmp_path / ".x.lock").exists()  # left in place: never two files of one name


@pytest.mark.slow  # a subprocess that imports torch
def test_a_lock_held_by_a_killed_process_is_free_again(tmp_path: Path):
    proc, _ = _start_holder(tmp_path)
    lock = FileLock(tmp_path / ".row.lock")
    try:
        assert not lock.try_acquire()
        assert lock.holder_pid() == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert lock.try_acquire()  # the OS released the dead holder's lock
    lock.release()


@pytest.mark.slow  # a subprocess that imports torch
def test_acquire_waits_until_the_holder_releases(tmp_path: Path):
    proc, go = _start_holder(tmp_path)
    seen: list[int | None] = []

    def on_wait(pid: int | None) -> None:
        seen.append(pid)
        go.write_text("")  # let the holder release, now that we are waiting

    lock = FileLock(tmp_path / ".row.lock")
    try:
        lock.acquire(on_wait=on_wait, poll_seconds=0.05)
        assert lock.held and seen == [proc.pid]
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        lock.release()
        proc.kill()
        proc.wait()


def test_without_fcntl_acquiring_fails_clearly(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(filelock_module, "fcntl", None)
    with pytest.raises(RuntimeError, match="need fcntl.flock"):
        FileLock(tmp_path / ".x.lock").try_acquire()
