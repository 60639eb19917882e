"""Concurrent and interrupted table runs: the per-row lock (a second process waits, then reuses
the row; a different spec never deletes a folder in use; a killed holder frees the row), stale
temp files swept on claim, and atomic README / baseline / plot writes under a full disk."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.data import synthetic
from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import Profile, Row, Schedule, Table
from netshrink.bench.tables.runner import RowBusyError, RunContext, _claim_run_dir, run_table
from netshrink.core import FileLock
from netshrink.core.atomic import temp_name

WORKER = Path(__file__).with_name("table_worker.py")
DEADLINE_S = 300  # only a hang ends here: each process takes a few seconds
ONE = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=0.05, batch_size=64)


def _table(width: float = 0.1, *, again: bool = False) -> Table:
    rows = [Row("float", "float", model="nin", model_kwargs={"width": width}, schedule=ONE)]
    if again:
        rows.append(Row("again", "one more epoch", upstream="float", schedule=ONE))
    return Table(name="toy", title="Toy", baseline="float", dataset="synthetic",
                 rows=tuple(rows))


def _ctx(root: Path, table: Table, **kwargs) -> RunContext:
    """What table_worker.py builds: a tiny nin on 256 synthetic 16x16 images."""
    return RunContext(table=table, profile=Profile("smoke", width=1.0, channels_last=False),
                      env=DistEnv(), results_dir=root / "res", runs_dir=root / "runs",
                      train_data=synthetic("train", 256, num_classes=4, size=16),
                      test_data=synthetic("test", 64, num_classes=4, size=16),
                      show_progress=False, **kwargs)


# -- in one process ------------------------------------------------------------------------

def test_no_wait_stops_with_the_holder_and_lock_file_and_touches_nothing(tmp_path: Path):
    ctx = _ctx(tmp_path, _table(), wait_for_lock=False)
    other = FileLock(ctx.lock_path("float"))  # "another process" (flock is per open file)
    assert other.try_acquire()
    try:
        with pytest.raises(RowBusyError) as err:
            run_table(ctx, list(ctx.table.rows))
    finally:
        other.release()
    message = str(err.value)
    assert message.startswith("row toy/float is being trained by another process "
                              f"(pid {os.getpid()}, lock file {ctx.lock_path('float')})")
    assert "--no-wait" in message and err.value.pid == os.getpid()
    assert ctx.lock_path("float").parent == ctx.run_dir("float").parent  # beside, not inside
    assert not ctx.run_dir("float").exists() and not (tmp_path / "res").exists()


def test_claim_sweeps_dead_writers_temp_files_and_writes_the_marker(tmp_path: Path):
    run_dir = tmp_path / "runs" / "toy" / "float"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "spec_hash").write_text("aaaa\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run_dir / "checkpoints" / temp_name("epoch-0003.safetensors", pid=dead.pid)
    live = run_dir / "checkpoints" / temp_name("epoch-0004.safetensors")  # ours: in progress
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    (run_dir / "checkpoints" / "epoch-0002.safetensors").write_bytes(b"kept")
    _claim_run_dir(run_dir, "aaaa", DistEnv())  # same spec: a resume keeps the folder
    assert not stale.exists() and live.exists()
    assert (run_dir / "checkpoints" / "epoch-0002.safetensors").read_bytes() == b"kept"
    _claim_run_dir(run_dir, "bbbb", DistEnv())  # another spec starts afresh
    assert sorted(p.name for p in run_dir.iterdir()) == ["spec_hash"]
    assert (run_dir / "spec_hash").read_text() == "bbbb\n"


@pytest.mark.slow
def test_a_downstream_row_refuses_an_upstream_retrained_with_another_spec(tmp_path: Path):
    ctx = _ctx(tmp_path, _table(again=True))
    run_table(ctx, list(ctx.table.rows))
    # what another process with another spec for "float" leaves between our two rows
    (ctx.run_dir("float") / "spec_hash").write_text("0123456789abcdef\n")
    ctx.result_path(ctx.table.row("again")).unlink()
    with pytest.raises(RuntimeError, match="retrained the upstream row with a different spec"):
        run_table(ctx, list(ctx.table.rows))


# -- README, baseline and plot under a full disk -------------------------------------------

def _full_disk_after_half(monkeypatch) -> None:
    """Every Path.write_text writes half of its text, then the disk is full."""
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", write_text)


def _fake_results(tmp_path: Path, monkeypatch) -> Path:
    from netshrink.bench.tables import spec as spec_module

    table = Table(name="p", title="P", baseline="f", rows=(Row("f", "float"), Row("g", "g")))
    monkeypatch.setitem(spec_module.TABLES._items, "p", table)
    res = tmp_path / "res"
    (res / "p").mkdir(parents=True)
    for name, acc, size in (("f", 0.5, 4_000_000), ("g", 0.4, 1_000_000)):
        (res / "p" / f"{name}.json").write_text(json.dumps({
            "table": "p", "row": name, "label": name, "spec_hash": f"{name}0123456789abcde",
            "metrics": {"accuracy": acc, "gmacs": 0.01, "params": 1000, "size_bytes": size,
                        "latency_ms": {"batch1": 1.0, "batch64": 10.0}},
            "date": "2026-01-02T00:00:00", "profile": "quick", "device": "cpu",
            "world_size": 1, "torch": "x",
            "dataset": {"name": "d", "train_images": 1, "test_images": 1}}))
    return res


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_leaves_the_readme_byte_identical(tmp_path: Path, monkeypatch):
    res = _fake_results(tmp_path, monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:table:p:begin -->\nold\n<!-- bench:table:p:end -->\n"
                      "the rest of a long README\n" * 20)
    before = readme.read_bytes()
    _full_disk_after_half(monkeypatch)
    out = CliRunner().invoke(app, ["report", "--table", "p", "--results", str(res),
                                   "--write-readme", str(readme)])
    monkeypatch.undo()
    assert out.exit_code != 0 and "No space left on device" in out.output
    assert readme.read_bytes() == before and _temps(tmp_path) == []
    ok = CliRunner().invoke(app, ["report", "--table", "p", "--results", str(_fake_results(
        tmp_path / "again", monkeypatch)), "--write-readme", str(readme)])
    assert ok.exit_code == 0 and "| float | 50.00 |" in readme.read_text()


def test_full_disk_leaves_the_baseline_whole(tmp_path: Path, monkeypatch):
    res = _fake_results(tmp_path, monkeypatch)
    baseline = tmp_path / "base.json"
    baseline.write_text('{"rows": {}}\n')
    _full_disk_after_half(monkeypatch)
    out = CliRunner().invoke(app, ["check", "--table", "p", "--results", str(res),
                                   "--baseline", str(baseline), "--update"])
    monkeypatch.undo()
    assert out.exit_code != 0 and "No space left on device" in out.output
    assert baseline.read_text() == '{"rows": {}}\n' and _temps(tmp_path) == []
    ok = CliRunner().invoke(app, ["check", "--table", "p", "--results", str(_fake_results(
        tmp_path / "again", monkeypatch)), "--baseline", str(baseline), "--update"])
    assert ok.exit_code == 0 and set(json.loads(baseline.read_text())["rows"]) == {"f", "g"}


def test_plot_is_written_atomically(tmp_path: Path, monkeypatch):
    import matplotlib.figure

    from netshrink.bench.tables.report import load_results, plot

    res = _fake_results(tmp_path, monkeypatch)
    table = Table(name="p", title="P", baseline="f", rows=(Row("f", "float"), Row("g", "g")))
    results = load_results(res, table)
    png = plot(results, table, tmp_path / "plots" / "p.png")
    good = png.read_bytes()
    assert good[:8] == b"\x89PNG\r\n\x1a\n"  # the format given, though the temp ends in .tmp
    real = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        real(self, fname, *args, **kwargs)
        with open(fname, "r+b") as f:
            f.truncate(100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    with pytest.raises(OSError):
        plot(results, table, png)
    assert png.read_bytes() == good and _temps(png.parent) == []


# -- two processes -------------------------------------------------------------------------

@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:  # a failed test never leaves a worker behind
        if p.poll() is None:
            p.kill()
        p.wait()


def _start(procs: list, root: Path, tag: str, width: float = 0.1, *, gate: bool = False,
           wait: bool = True) -> subprocess.Popen:
    log = open(root / f"{tag}.log", "w")  # noqa: SIM115 (the child owns it)
    p = subprocess.Popen([sys.executable, str(WORKER), str(root), tag, str(width),
                          "gate" if gate else "plain", "wait" if wait else "no-wait"],
                         stdout=log, stderr=subprocess.STDOUT)
    log.close()
    procs.append(p)
    return p


def _until(condition, proc: subprocess.Popen, root: Path, tag: str, what: str) -> None:
    """Poll until ``condition()``; fail if ``proc`` exits first or nothing happens for long."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"{tag} exited (rc {proc.returncode}) before {what}:\n{_log(root, tag)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{tag}: no {what} after {DEADLINE_S} s:\n{_log(root, tag)}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, root: Path, tag: str) -> dict:
    assert proc.wait(timeout=DEADLINE_S) == 0, _log(root, tag)
    return json.loads((root / f"{tag}.result.json").read_text())


def _log(root: Path, tag: str) -> str:
    path = root / f"{tag}.log"
    return path.read_text()[-3000:] if path.exists() else ""


def _states(root: Path, tag: str) -> list[str]:
    path = root / f"{tag}.states"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _waiting(root: Path, tag: str) -> bool:
    return any("being trained by another process" in s for s in _states(root, tag))


@pytest.mark.slow
def test_a_second_process_waits_for_the_row_then_reuses_it(tmp_path: Path, procs):
    a = _start(procs, tmp_path, "a", gate=True)
    _until(lambda: (tmp_path / "a.claimed").exists(), a, tmp_path, "a", "claiming the row")
    b = _start(procs, tmp_path, "b")
    _until(lambda: _waiting(tmp_path, "b"), b, tmp_path, "b", "waiting for the row")
    message = _states(tmp_path, "b")[0]
    lock = tmp_path / "runs" / "toy" / ".float.lock"
    assert message == (f"row toy/float is being trained by another process (pid {a.pid}, "
                       f"lock file {lock}); waiting")
    (tmp_path / "go").write_text("")
    result_a = _finish(a, tmp_path, "a")
    result_b = _finish(b, tmp_path, "b")
    assert _states(tmp_path, "a") == ["running"]
    assert _states(tmp_path, "b") == [message, "cached"]  # trained once, by a
    assert result_b == result_a


@pytest.mark.slow
def test_another_spec_never_deletes_the_folder_of_a_running_row(tmp_path: Path, procs):
    a = _start(procs, tmp_path, "a", width=0.1, gate=True)
    _until(lambda: (tmp_path / "a.claimed").exists(), a, tmp_path, "a", "claiming the row")
    run_dir = tmp_path / "runs" / "toy" / "float"
    hash_a = (run_dir / "spec_hash").read_text().strip()
    (run_dir / "in-use").write_text("a is training here")
    b = _start(procs, tmp_path, "b", width=0.15)  # another spec for the same row
    _until(lambda: _waiting(tmp_path, "b"), b, tmp_path, "b", "waiting for the row")
    assert (run_dir / "in-use").exists() and (run_dir / "spec_hash").read_text() == hash_a + "\n"
    (tmp_path / "go").write_text("")
    assert _finish(a, tmp_path, "a")["spec_hash"] == hash_a
    hash_b = _finish(b, tmp_path, "b")["spec_hash"]
    assert hash_b != hash_a and _states(tmp_path, "b")[1:] == ["running"]
    # only now, with the row's lock, did b start the folder afresh for its spec
    assert (run_dir / "spec_hash").read_text() == hash_b + "\n"
    assert not (run_dir / "in-use").exists()


@pytest.mark.slow
def test_a_killed_holder_frees_the_row_and_its_temp_files_are_swept(tmp_path: Path, procs):
    a = _start(procs, tmp_path, "a", gate=True)
    _until(lambda: (tmp_path / "a.claimed").exists(), a, tmp_path, "a", "claiming the row")
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    # what a kill -9 during a checkpoint write leaves
    orphan = (tmp_path / "runs" / "toy" / "float" / "checkpoints"
              / temp_name("epoch-0001.safetensors", pid=a.pid))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"\0" * 4096)
    b = _start(procs, tmp_path, "b")
    _finish(b, tmp_path, "b")
    assert _states(tmp_path, "b") == ["running"]  # no wait: the OS freed the dead lock
    assert not orphan.exists()
    assert (tmp_path / "runs" / "toy" / "float" / "final.safetensors").is_file()
