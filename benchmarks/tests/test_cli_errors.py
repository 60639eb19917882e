"""Every expected user mistake is one ``error:`` line on stderr, exit code 2, no traceback.

Each case runs through the real typer app (CliRunner keeps stdout and stderr apart); a few run
as real processes to prove the exit code and stderr of ``python -m netshrink.bench``. The
mistakes are built in one module-scoped folder: fake data folders (missing, empty, truncated,
foreign), files that are not checkpoints, a finished run, results and broken baselines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netshrink.bench.cli import app
from netshrink.bench.cli import stats as stats_module
from netshrink.bench.cli.errors import message_of
from netshrink.bench.data import write_fake_cifar10, write_fake_mnist
from netshrink.bench.engine import checkpoint_path
from netshrink.models import create_model, save_model
from netshrink.quant import save_packed

runner = CliRunner()
TINY = ["--model", "nin", "--width", "0.1", "--epochs", "1", "--batch-size", "256", "--device",
        "cpu", "--no-progress"]
TRAIN = ["train", *TINY, "--dataset", "synthetic"]


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One folder holding every broken input the cases below point at."""
    t = tmp_path_factory.mktemp("mistakes")
    (t / "afile").write_text("not a folder\n")
    (t / "empty").mkdir()
    # CIFAR-10: truncated batch, a folder of foreign files, a folder missing the train files
    write_fake_cifar10(t / "trunc", per_train_batch=2, test=2)
    _cut_in_half(t / "trunc" / "cifar-10-batches-py" / "data_batch_1")
    foreign = t / "foreign" / "cifar-10-batches-py"
    foreign.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (foreign / name).write_text("these are my holiday notes\n")
    (t / "partial" / "cifar-10-batches-py").mkdir(parents=True)
    (t / "partial" / "cifar-10-batches-py" / "test_batch").write_text("x")
    (t / "other").mkdir()
    (t / "other" / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    # MNIST with a truncated gzip
    write_fake_mnist(t / "mnist")
    _cut_in_half(t / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    # model files: a 1-channel model, a cut one, a text file, a packed model
    save_model(t / "gray.safetensors", create_model("nin", width=0.1, in_channels=1))
    (t / "cut.safetensors").write_bytes((t / "gray.safetensors").read_bytes()[:100])
    (t / "text.safetensors").write_text("hello\n")
    save_packed(create_model("nin", width=0.1), t / "model.packed")
    # a run folder that holds a checkpoint (its name is all the up-front check looks at)
    ckpt = checkpoint_path(t / "run", 1)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    # results of the smoke table, and broken baselines for `bench check`
    row = {"metrics": {"accuracy": 0.4, "params": 100, "size_bytes": 400, "gmacs": 0.01},
           "spec_hash": "x", "profile": "smoke", "device": "cpu", "torch": "x", "world_size": 1,
           "date": "2026-01-02T00:00:00", "dataset": {"name": "synthetic", "train_images": 1,
                                                      "test_images": 1}}
    (t / "res" / "smoke").mkdir(parents=True)
    (t / "res" / "smoke" / "nin-float.json").write_text(json.dumps(row))
    (t / "cut.json").write_text('{"rows": {"nin-fl')
    (t / "list.json").write_text("[1, 2, 3]\n")
    head = {"profile": "smoke", "device": "cpu", "torch": "x"}
    (t / "other-table.json").write_text(json.dumps({**head, "table": "micronet", "rows": {
        "nin-float-w1": {"accuracy": 0.5, "params": 1, "size_bytes": 4, "spec_hash": "x"}}}))
    (t / "wrong-type.json").write_text(json.dumps({**head, "table": "smoke", "rows": {
        "nin-float": {"accuracy": "high", "params": 1, "size_bytes": 4, "spec_hash": "x"}}}))
    (t / "README.md").write_text("# no table markers here\n")
    return t


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real one-epoch run to resume (the only training here: seconds on a busy 2-core CPU)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    first = runner.invoke(app, [*TRAIN, "--out", str(out)])
    assert first.exit_code == 0, first.output
    return out


# (arguments with {T} for the folder above, a piece of the message that names the bad value)
CASES = {
    # names, checked before any data is loaded (the data root given is empty)
    "train-unknown-model": (["train", *TINY, "--model", "nope", "--dataset", "cifar10",
                             "--data-dir", "{T}/empty", "--out", "{T}/o"], "--model 'nope'"),
    "train-unknown-tv-model": (["train", "--model", "tv:nope", "--dataset", "synthetic",
                                "--out", "{T}/o"], "'tv:nope' is not a torchvision"),
    "train-unknown-dataset": ([*TRAIN, "--dataset", "imagenet", "--out", "{T}/o"],
                              "--dataset 'imagenet' is not allowed"),
    "train-width-0": ([*TRAIN, "--width", "0", "--out", "{T}/o"], "--width 0.0"),
    "train-width-negative": ([*TRAIN, "--width", "-2", "--out", "{T}/o"], "--width -2.0"),
    "train-bad-block-order": ([*TRAIN, "--block-order", "xyz", "--out", "{T}/o"], "'xyz'"),
    "train-block-order-on-resnet": ([*TRAIN, "--model", "resnet18_cifar", "--block-order",
                                     "cbap", "--out", "{T}/o"], "block_order"),
    "train-bad-mnist-split": ([*TRAIN, "--mnist-split", "half", "--out", "{T}/o"], "'half'"),
    "train-epochs-0": ([*TRAIN, "--epochs", "0", "--out", "{T}/o"], "epochs=0"),
    "train-bad-optimizer": ([*TRAIN, "--optimizer", "rmsprop", "--out", "{T}/o"], "rmsprop"),
    "train-unknown-device": ([*TRAIN, "--device", "tpu", "--out", "{T}/o"], "--device 'tpu'"),
    # --out
    "train-out-is-a-file": ([*TRAIN, "--out", "{T}/afile"], "{T}/afile is a file"),
    "train-out-under-a-file": ([*TRAIN, "--out", "{T}/afile/run"], "{T}/afile is a file"),
    "train-out-has-checkpoints": ([*TRAIN, "--out", "{T}/run"], "pass --resume"),
    "train-resume-changed-settings": ([*TRAIN, "--out", "{RUN}", "--resume", "--lr", "0.5"],
                                      "0.5"),
    # data folders
    "cifar-missing-folder": ([*TRAIN, "--dataset", "cifar10", "--data-dir", "{T}/nothere",
                              "--out", "{T}/o"], "{T}/nothere/cifar-10-batches-py"),
    "cifar-empty-folder": ([*TRAIN, "--dataset", "cifar10", "--data-dir", "{T}/empty",
                            "--out", "{T}/o"], "--download"),
    "cifar-foreign-folder": ([*TRAIN, "--dataset", "cifar10", "--data-dir", "{T}/other",
                              "--out", "{T}/o"], "{T}/other"),
    "cifar-lacks-train-files": ([*TRAIN, "--dataset", "cifar10", "--data-dir", "{T}/partial",
                                 "--out", "{T}/o"], "data_batch_1"),
    "cifar-truncated-batch": ([*TRAIN, "--dataset", "cifar10", "--data-dir", "{T}/trunc",
                               "--out", "{T}/o"], "data_batch_1 is corrupt or truncated"),
    "cifar-foreign-files": ([*TRAIN, "--dataset", "cifar10", "--data-dir", "{T}/foreign",
                             "--out", "{T}/o"], "{T}/foreign/cifar-10-batches-py/data_batch_1"),
    "mnist-truncated-gzip": ([*TRAIN, "--dataset", "mnist", "--data-dir", "{T}/mnist",
                              "--out", "{T}/o"], "train-images-idx3-ubyte.gz"),
    "mnist-missing": ([*TRAIN, "--dataset", "mnist", "--data-dir", "{T}/empty", "--out",
                       "{T}/o"], "{T}/empty/MNIST/raw"),
    # stats with bad numbers
    "stats-unknown-model": (["stats", "--model", "nope"], "--model 'nope'"),
    "stats-width-0": (["stats", "--width", "0"], "--width 0.0"),
    "stats-num-classes-0": (["stats", "--num-classes", "0"], "--num-classes 0"),
    "stats-input-size-0": (["stats", "--input-size", "-3"], "--input-size -3"),
    "stats-in-channels-0": (["stats", "--in-channels", "0"], "--in-channels 0"),
    "stats-torchvision-width": (["stats", "--model", "tv:resnet18", "--width", "0.5"],
                                "--width 0.5"),
    "stats-input-too-small": (["stats", "--model", "tv:alexnet", "--input-size", "8"],
                              "3x8x8"),
    # fuse-check
    "fuse-missing-file": (["fuse-check", "{T}/nope.safetensors", "--dataset", "synthetic"],
                          "{T}/nope.safetensors does not exist"),
    "fuse-folder": (["fuse-check", "{T}/empty", "--dataset", "synthetic"], "is a folder"),
    "fuse-text-file": (["fuse-check", "{T}/text.safetensors", "--dataset", "synthetic"],
                       "{T}/text.safetensors"),
    "fuse-truncated-file": (["fuse-check", "{T}/cut.safetensors", "--dataset", "synthetic"],
                            "{T}/cut.safetensors"),
    "fuse-packed-file": (["fuse-check", "{T}/model.packed", "--dataset", "synthetic"],
                         "{T}/model.packed"),
    "fuse-channels-do-not-fit": (["fuse-check", "{T}/gray.safetensors", "--dataset",
                                  "synthetic"], "expects 1 input channel(s), but dataset "
                                                "'synthetic' has 3"),
    "fuse-unknown-dataset": (["fuse-check", "{T}/gray.safetensors", "--dataset", "nope"],
                             "--dataset 'nope'"),
    "fuse-batch-size-0": (["fuse-check", "{T}/gray.safetensors", "--dataset", "synthetic",
                           "--batch-size", "0"], "--batch-size 0"),
    # reproduce / report
    "reproduce-unknown-table": (["reproduce", "--table", "nope"], "unknown table 'nope'"),
    "reproduce-unknown-row": (["reproduce", "--table", "smoke", "--rows", "nin-float,nope",
                               "--data-dir", "{T}/empty"], "no row 'nope'"),
    "reproduce-unknown-profile": (["reproduce", "--profile", "fast"], "--profile 'fast'"),
    "reproduce-results-is-a-file": (["reproduce", "--table", "smoke", "--device", "cpu",
                                     "--results", "{T}/afile"], "--results {T}/afile"),
    "reproduce-missing-data": (["reproduce", "--table", "smoke", "--device", "cpu",
                                "--data-dir", "{T}/empty", "--results", "{T}/r",
                                "--runs", "{T}/runs"], "{T}/empty"),
    "report-unknown-table": (["report", "--table", "nope"], "unknown table 'nope'"),
    "report-missing-readme": (["report", "--table", "smoke", "--results", "{T}/res",
                               "--write-readme", "{T}/NOPE.md"], "{T}/NOPE.md does not exist"),
    "report-readme-without-markers": (["report", "--table", "smoke", "--results", "{T}/res",
                                       "--write-readme", "{T}/README.md"], "{T}/README.md"),
    "report-plot-dir-is-a-file": (["report", "--table", "smoke", "--results", "{T}/res",
                                   "--plot-dir", "{T}/afile"], "--plot-dir {T}/afile"),
    # check
    "check-truncated-baseline": (["check", "--results", "{T}/res", "--baseline",
                                  "{T}/cut.json"], "{T}/cut.json"),
    "check-list-baseline": (["check", "--results", "{T}/res", "--baseline", "{T}/list.json"],
                            "{T}/list.json"),
    "check-other-tables-baseline": (["check", "--results", "{T}/res", "--baseline",
                                     "{T}/other-table.json"], "{T}/other-table.json"),
    "check-wrongly-typed-baseline": (["check", "--results", "{T}/res", "--baseline",
                                      "{T}/wrong-type.json"], "{T}/wrong-type.json"),
    "check-missing-baseline": (["check", "--results", "{T}/res", "--baseline",
                                "{T}/nope.json"], "{T}/nope.json"),
    "check-no-results": (["check", "--results", "{T}/empty"], "no results for table 'smoke'"),
    "check-negative-tolerance": (["check", "--results", "{T}/res", "--tolerance", "-1"],
                                 "--tolerance -1"),
    "check-update-under-a-file": (["check", "--results", "{T}/res", "--update", "--baseline",
                                   "{T}/afile/base.json"], "{T}/afile is a file"),
}


def _param(case: str):
    needs_training = any("{RUN}" in a for a in CASES[case][0])
    return pytest.param(case, marks=[pytest.mark.slow] if needs_training else [])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_mistake_is_one_line_and_exit_code_2(world: Path, case: str, request):
    args, named = CASES[case]
    if any("{RUN}" in a for a in args):
        run = str(request.getfixturevalue("finished_run"))
        args = [a.replace("{RUN}", run) for a in args]
    result = runner.invoke(app, [a.replace("{T}", str(world)) for a in args])
    err = result.stderr
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), err
    assert named.replace("{T}", str(world)) in err


@pytest.mark.parametrize("args", [
    [*TRAIN, "--model", "nope"], [*TRAIN, "--model", "nin", "--width", "0"],
    [*TRAIN, "--block-order", "xyz"], [*TRAIN, "--dataset", "nope"],
    [*TRAIN, "--device", "tpu"], [*TRAIN, "--mnist-split", "x"],
    ["fuse-check", "{T}/gray.safetensors", "--dataset", "nope"],
    ["fuse-check", "{T}/nope.safetensors", "--dataset", "synthetic"],
    ["reproduce", "--table", "smoke", "--rows", "nope"],
    ["reproduce", "--table", "smoke", "--profile", "fast"],
], ids=lambda a: "-".join(a[:1] + a[-2:]))
def test_names_are_checked_before_any_data_is_loaded(world: Path, monkeypatch, args):
    def no_data(*_args, **_kwargs):
        raise AssertionError("data was loaded before the options were checked")

    from netshrink.bench.cli import fuse, tables, train

    monkeypatch.setattr(train, "load_dataset", no_data)
    monkeypatch.setattr(fuse, "load_dataset", no_data)
    monkeypatch.setattr(tables, "load_table_data", no_data)
    args = [a.replace("{T}", str(world)) for a in args]
    result = runner.invoke(app, [*args, "--out", str(world / "o")] if args[0] == "train" else args)
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.exception


def test_read_only_out_folder(world: Path):
    locked = world / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (the file/sub case covers "
                        "an --out that cannot be made)")
        result = runner.invoke(app, [*TRAIN, "--out", str(locked / "run")])
        assert result.exit_code == 2 and f"cannot write in {locked}" in result.stderr
    finally:
        locked.chmod(0o755)


def test_cuda_without_a_gpu(monkeypatch, world: Path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = runner.invoke(app, [*TRAIN, "--device", "cuda", "--out", str(world / "o")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --device cuda: torch sees no CUDA GPU")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unexpected_bug_keeps_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug, not a user mistake")

    monkeypatch.setattr(stats_module, "create_model", broken)
    result = runner.invoke(app, ["stats"])
    assert isinstance(result.exception, ZeroDivisionError)
    assert result.exit_code == 1 and "error:" not in result.stderr


def test_message_of_a_chain_and_of_an_os_error():
    try:
        try:
            raise ValueError("the useful part")
        except ValueError as inner:
            raise ValueError() from inner
    except ValueError as outer:
        assert message_of(outer) == "the useful part"
    err = NotADirectoryError(20, "Not a directory", "/x/file/sub")
    assert message_of(err) == "/x/file/sub: Not a directory"
    assert message_of(ValueError("a\nb\nc")) == "a b c"


# -- real processes: the exit code and stderr a shell sees ------------------------------------

def _bench(*args: str, env: dict | None = None, code: str | None = None):
    command = [sys.executable, "-m", "netshrink.bench", *args] if code is None else \
        [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NETSHRINK_DEBUG": "", **(env or {})})


def test_real_process_exit_code_and_one_line():
    done = _bench("stats", "--model", "nope")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: --model 'nope' is not a model") and done.stdout == ""


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how: str):
    args, env = (["--debug", "stats"], None) if how == "flag" else (["stats"],
                                                                   {"NETSHRINK_DEBUG": "1"})
    done = _bench(*args, "--width", "0", env=env)
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --width 0.0")


def test_real_process_bug_keeps_its_traceback():
    code = ("import sys; from netshrink.bench.cli import main, stats\n"
            "def broken(*a, **k): raise ZeroDivisionError('a bug')\n"
            "stats.create_model = broken; sys.argv[0] = 'bench'; main()")
    done = _bench("stats", code=code)
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and "Traceback" in done.stderr
    assert "error:" not in done.stderr
