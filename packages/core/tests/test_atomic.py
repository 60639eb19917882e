"""Atomic writes: owned temp names, the sweep of dead writers' temp files (same target on each
write, a whole folder on request), kill -9 mid-write, a full disk mid-write."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netshrink.core import sweep_stale_temp_files, write_atomic, write_text_atomic
from netshrink.core.atomic import _TEMP, temp_name

DEADLINE_S = 120  # only a hang ends here: a normal run takes a few seconds


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free (and is not reused within this test)
    return proc.pid


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_leaves_no_temp_and_names_are_owned(tmp_path: Path):
    out = write_text_atomic(tmp_path / "sub" / "a.json", '{"x": 1}\n')
    assert out.read_text() == '{"x": 1}\n' and _temps(out.parent) == []
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    name = temp_name("epoch-0003.safetensors", pid=1234)
    m = _TEMP.match(name)
    assert m is not None and m["name"] == "epoch-0003.safetensors" and m["pid"] == "1234"


def test_write_removes_only_the_dead_writers_temp_files_of_its_target(tmp_path: Path):
    dead, live = _dead_pid(), os.getpid()
    planted = {
        "dead": temp_name("a.json", pid=dead),
        "live": temp_name("a.json", pid=live),
        "other_target": temp_name("a.json.bak", pid=dead),  # a different file's temp
        "foreign_host": f".a.json.{dead}.00000000.0123abcd.tmp",  # another machine's writer
        "legacy": ".a.json.k2j4_x9q.tmp",  # the old mkstemp name: owner unknown
    }
    if _TEMP.match(planted["foreign_host"])["host"] == _TEMP.match(planted["dead"])["host"]:
        pytest.skip("this machine's host tag happens to be 00000000")
    for name in planted.values():
        (tmp_path / name).write_bytes(b"partial")
    write_text_atomic(tmp_path / "a.json", "new\n")
    assert (tmp_path / "a.json").read_text() == "new\n"
    assert _temps(tmp_path) == sorted(v for k, v in planted.items() if k != "dead")
    # the folder sweep takes every dead writer's temp file of this machine, any target
    removed = sweep_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [planted["other_target"]]
    assert _temps(tmp_path) == sorted([planted["live"], planted["foreign_host"],
                                       planted["legacy"]])


def test_recursive_sweep_and_missing_folder(tmp_path: Path):
    nested = tmp_path / "run" / "checkpoints"
    nested.mkdir(parents=True)
    stale = nested / temp_name("epoch-0003.safetensors", pid=_dead_pid())
    stale.write_bytes(b"x")
    assert sweep_stale_temp_files(tmp_path / "run") == []  # not recursive: only the top
    assert sweep_stale_temp_files(tmp_path / "run", recursive=True) == [stale]
    assert not stale.exists()
    assert sweep_stale_temp_files(tmp_path / "absent", recursive=True) == []


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from netshrink.core import write_atomic

target, ready = Path(sys.argv[1]), Path(sys.argv[2])

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"\\0" * (8 << 20))  # the first 8 MB of a big file
        f.flush()
    ready.write_text("")
    time.sleep(600)  # killed here

write_atomic(target, write)
"""


@pytest.mark.slow  # a subprocess that imports torch
def test_kill_9_mid_write_leaves_a_temp_that_the_next_write_removes(tmp_path: Path):
    target, ready = tmp_path / "model.safetensors", tmp_path / "ready"
    target.write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target), str(ready)])
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not ready.exists():
            assert proc.poll() is None, "the writer exited before it was ready"
            assert time.monotonic() < deadline, "the writer never got ready"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    orphans = _temps(tmp_path)
    assert len(orphans) == 1 and _TEMP.match(orphans[0])["pid"] == str(proc.pid)
    assert (tmp_path / orphans[0]).stat().st_size == 8 << 20
    assert target.read_bytes() == b"old"  # the killed write never touched the real name
    write_atomic(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new" and _temps(tmp_path) == []


def test_full_disk_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path,
                                                                   monkeypatch):
    target = tmp_path / "README.md"
    target.write_text("old text, whole\n")
    real_write_text = Path.write_text

    def full_disk(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError) as err:
        write_text_atomic(target, "new text " * 1000)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_text() == "old text, whole\n" and _temps(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
