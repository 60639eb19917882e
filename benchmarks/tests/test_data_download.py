"""Downloads through a local HTTP server only (never the internet): fetch, md5 check, safe and
atomic extraction, and the loaders' download=True paths."""

import functools
import hashlib
import http.server
import io
import tarfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from netshrink.bench.data import (
    ChecksumError,
    PartialDatasetWarning,
    UnsafeArchiveError,
    download_and_extract,
    extract_tar_safely,
    load_dataset,
    load_mnist,
    write_fake_cifar10,
    write_fake_mnist,
)
from netshrink.bench.data.download import download_from_mirrors


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """(base URL ending in '/', folder it serves) on 127.0.0.1, an OS-chosen port."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")  # never route the local server through a proxy
    folder = tmp_path / "served"
    folder.mkdir()
    _Quiet.requests = []
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar_archive(tmp_path: Path, dest: Path) -> dict:
    src = tmp_path / "src"
    written = write_fake_cifar10(src, per_train_batch=3, test=4, seed=1)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return written


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_cifar_download_then_load(tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch):
    url, served = server
    archive = served / "cifar-10-python.tar.gz"
    written = _cifar_archive(tmp_path, archive)
    monkeypatch.setenv("NETSHRINK_CIFAR_URL", url + archive.name)
    monkeypatch.setenv("NETSHRINK_CIFAR_MD5", _md5(archive))
    root = tmp_path / "root"
    with pytest.warns(PartialDatasetWarning):
        data = load_dataset("cifar10", "train", root, download=True)
    assert np.array_equal(data.images.numpy(), written["train"][0])
    assert data.labels.tolist() == written["train"][1].tolist()
    assert _files(root)[0] == "cifar-10-batches-py"  # archive and temp files gone
    assert not any(f.endswith((".part", ".tar.gz")) or ".extract-" in f for f in _files(root))
    with pytest.warns(PartialDatasetWarning):  # present now: read without downloading again
        load_dataset("cifar10", "test", root, download=True)
    assert _Quiet.requests == ["/cifar-10-python.tar.gz"]


def test_md5_mismatch_raises_and_leaves_nothing(tmp_path: Path, server,
                                                 monkeypatch: pytest.MonkeyPatch):
    url, served = server
    archive = served / "cifar-10-python.tar.gz"
    _cifar_archive(tmp_path, archive)
    actual = _md5(archive)
    monkeypatch.setenv("NETSHRINK_CIFAR_URL", url + archive.name)
    monkeypatch.delenv("NETSHRINK_CIFAR_MD5", raising=False)  # so the official md5 applies
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="md5 mismatch") as info:
        load_dataset("cifar10", "train", root, download=True)
    assert isinstance(info.value, ChecksumError)
    message = str(info.value)
    assert "c58f30108f718f92721af3b95e74349a" in message and actual in message
    assert url + archive.name in message
    assert _files(root) == []


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


UNSAFE = {
    "dotdot": [(tarfile.TarInfo("cifar-10-batches-py/ok"), b"fine"),
               (tarfile.TarInfo("cifar-10-batches-py/../../escaped"), b"evil")],
    "absolute": [(tarfile.TarInfo("/tmp/netshrink-escaped"), b"evil")],
    "symlink-out": [(_symlink("cifar-10-batches-py/link", "../../escaped"), None)],
    "symlink-abs": [(_symlink("cifar-10-batches-py/link", "/etc/passwd"), None)],
    "hardlink-out": [(_hardlink("cifar-10-batches-py/link", "../escaped"), None)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_members_are_refused(tmp_path: Path, case: str):
    archive = tmp_path / "a.tar.gz"
    _tar_with(archive, UNSAFE[case])
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        extract_tar_safely(archive, dest)
    assert _files(dest) == []
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "dest" / "escaped").exists()
    assert not Path("/tmp/netshrink-escaped").exists()


def test_safe_archive_with_internal_symlink_extracts(tmp_path: Path):
    archive = tmp_path / "a.tar.gz"
    _tar_with(archive, [(tarfile.TarInfo("top/sub/file"), b"abc"),
                        (_symlink("top/link", "sub/file"), None)])
    paths = extract_tar_safely(archive, tmp_path / "dest")
    assert paths == [tmp_path / "dest" / "top"]
    assert (tmp_path / "dest" / "top" / "link").read_bytes() == b"abc"
    with pytest.raises(FileExistsError, match="top already exist"):
        extract_tar_safely(archive, tmp_path / "dest")  # never overwrites


def test_traversal_archive_via_download_leaves_nothing(tmp_path: Path, server):
    url, served = server
    archive = served / "evil.tar.gz"
    _tar_with(archive, UNSAFE["dotdot"])
    root = tmp_path / "root"
    with pytest.raises(UnsafeArchiveError, match=r"'cifar-10-batches-py/\.\./\.\./escaped'"):
        download_and_extract(url + archive.name, root, _md5(archive), "cifar-10-python.tar.gz")
    assert _files(root) == [] and not (tmp_path / "escaped").exists()


def test_mnist_download_checks_each_file(tmp_path: Path, server):
    url, served = server
    written = write_fake_mnist(served, train=12, test=10, gz=True)
    raw = served / "MNIST" / "raw"
    md5s = {p.name: _md5(p) for p in raw.iterdir()}
    root = tmp_path / "root"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        data = load_mnist(root, "train", mnist_split="official", download=True,
                          base_url=url + "MNIST/raw", md5s=md5s)
    assert np.array_equal(data.images[:, 0].numpy(), written["train"][0])
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(md5s)
    # with the official md5s the fake files are rejected, and nothing is kept
    other = tmp_path / "other"
    with pytest.raises(ChecksumError, match="9fb629c4189551a2d022fa330f9573f3"):
        load_mnist(other, "test", mnist_split="from-test", download=True,
                   base_url=url + "MNIST/raw")
    assert _files(other / "MNIST" / "raw") == []


def test_mirror_fallback_on_http_error(tmp_path: Path, server):
    url, served = server
    (served / "good").mkdir()
    (served / "good" / "f.gz").write_bytes(b"payload")
    dest = tmp_path / "f.gz"
    download_from_mirrors((url + "missing/", url + "good/"), "f.gz", dest,
                          hashlib.md5(b"payload").hexdigest())
    assert dest.read_bytes() == b"payload"
    with pytest.raises(OSError, match="could not download f.gz from any mirror"):
        download_from_mirrors((url + "missing/",), "f.gz", tmp_path / "g.gz", "0" * 32)
