"""Downloads through a local HTTP server only (never the internet): fetch, md5 check, safe and
atomic extraction, and the loaders' download=True paths."""

import functools
import gzip
import hashlib
import http.server
import io
import os
import tarfile
import threading
import tracemalloc
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


def test_safe_archive_extracts_with_ordinary_modes_and_never_overwrites(tmp_path: Path):
    archive = tmp_path / "a.tar.gz"
    setuid = tarfile.TarInfo("top/sub/file")
    setuid.mode = 0o4777
    folder = tarfile.TarInfo("top/sub")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o777
    _tar_with(archive, [(folder, None), (setuid, b"abc"), (tarfile.TarInfo("./top/x"), b"")])
    old = os.umask(0o022)
    try:
        paths = extract_tar_safely(archive, tmp_path / "dest")
    finally:
        os.umask(old)
    assert paths == [tmp_path / "dest" / "top"]
    assert (tmp_path / "dest" / "top" / "sub" / "file").read_bytes() == b"abc"
    assert (tmp_path / "dest" / "top" / "x").read_bytes() == b""
    assert (tmp_path / "dest" / "top" / "sub" / "file").stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "dest" / "top" / "sub").stat().st_mode & 0o7777 == 0o755
    with pytest.raises(FileExistsError, match="top already exist"):
        extract_tar_safely(archive, tmp_path / "dest")  # never overwrites
    assert _files(tmp_path / "dest") == ["top", "top/sub", "top/sub/file", "top/x"]


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


# -- hostile archives: refused whole, nothing written outside, nothing left behind -----------

def _link_chain_escape(path: Path, *, via_hardlink: bool) -> None:
    """The CVE-2025-4517 shape: folders with 247-character names reached through one-letter
    symlinks, so the real path of ``a/b/.../p/lll...`` exceeds PATH_MAX and os.path.realpath
    (which tarfile's data filter trusts) stops resolving; a symlink there points back up, and
    ``escape`` then points three levels above the extraction folder. A file is then written
    through ``escape`` (directly, or through a hard link to ``escape/sentinel``). With the
    previous extract_tar_safely (checks on link text, then extractall(filter="data")), this
    overwrote a file two levels above the data root on Python 3.11.7."""
    comp, steps, cur = "d" * 247, "abcdefghijklmnop", ""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for step in steps:
        folder = tarfile.TarInfo(os.path.join(cur, comp))
        folder.type = tarfile.DIRTYPE
        members += [(folder, None), (_symlink(os.path.join(cur, step), comp), None)]
        cur = os.path.join(cur, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    members += [(_symlink(linkpath, "../" * len(steps)), None),
                (_symlink("escape", linkpath + "/../../.."), None)]
    if via_hardlink:
        members += [(_hardlink("flaglink", "escape/sentinel"), None),
                    (tarfile.TarInfo("flaglink"), b"pwned\n")]
    else:
        members += [(tarfile.TarInfo("escape/sentinel"), b"pwned\n")]
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


MORE_UNSAFE = {
    "internal-symlink": ([(tarfile.TarInfo("top/sub/file"), b"abc"),
                          (_symlink("top/link", "sub/file"), None)], "is a symbolic link"),
    "internal-hardlink": ([(tarfile.TarInfo("top/a"), b"abc"), (_hardlink("top/b", "top/a"), None)],
                          "is a hard link"),
    "symlink-then-file-through-it": ([(_symlink("top/up", ".."), None),
                                      (tarfile.TarInfo("top/up/x"), b"evil")],
                                     "is a symbolic link"),
    "fifo": ([(_special("top/fifo", tarfile.FIFOTYPE), None)], "is a device, fifo"),
    "char-device": ([(_special("top/null", tarfile.CHRTYPE), None)], "is a device, fifo"),
    "block-device": ([(_special("top/sda", tarfile.BLKTYPE), None)], "is a device, fifo"),
    "gnu-long-name-dotdot": ([(tarfile.TarInfo("top/" + "n" * 120 + "/../../../x"), b"evil")],
                             "outside the destination folder"),
    "duplicate-file": ([(tarfile.TarInfo("top/a"), b"1"), (tarfile.TarInfo("top/a"), b"2")],
                       "appears twice"),
    "file-then-folder-of-same-name": ([(tarfile.TarInfo("top/a"), b"1"),
                                       (tarfile.TarInfo("top/a/b"), b"2")],
                                      "already made a file"),
}


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(data root, a file two levels above it) that every hostile archive must leave as is."""
    root = tmp_path / "x" / "root"
    root.mkdir(parents=True)
    guard = tmp_path / "sentinel"
    guard.write_text("original\n")
    yield root, guard
    assert guard.read_text() == "original\n"


@pytest.mark.parametrize("via_hardlink", [False, True])
def test_link_chain_escape_is_refused(tmp_path: Path, sentinel, via_hardlink: bool):
    root, guard = sentinel
    archive = tmp_path / "a.tar.gz"
    _link_chain_escape(archive, via_hardlink=via_hardlink)
    with pytest.raises(UnsafeArchiveError, match="member 'a' is a symbolic link"):
        extract_tar_safely(archive, root)
    assert guard.read_text() == "original\n" and _files(root) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "sentinel", "x"]


@pytest.mark.parametrize("case", sorted(MORE_UNSAFE))
def test_links_special_files_and_clashes_are_refused(tmp_path: Path, sentinel, case: str):
    root, _ = sentinel
    members, message = MORE_UNSAFE[case]
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    with pytest.raises(UnsafeArchiveError, match=f"refusing to extract .*{message}"):
        extract_tar_safely(archive, root)
    assert _files(root) == []
    assert not (tmp_path / "x" / "x").exists() and not (tmp_path / "x" / "up").exists()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_inside_the_folder_extract(tmp_path: Path, fmt: int):
    name = "top/" + "/".join(["n" * 200] * 3) + "/file"
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w", format=fmt) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert extract_tar_safely(archive, tmp_path / "dest") == [tmp_path / "dest" / "top"]
    assert (tmp_path / "dest" / name).read_bytes() == b"abc"


def test_member_count_and_byte_bounds(tmp_path: Path):
    archive = tmp_path / "a.tar.gz"
    _tar_with(archive, [(tarfile.TarInfo(f"top/{i}"), b"0123456789") for i in range(3)])
    with pytest.raises(UnsafeArchiveError, match="more than 2 members"):
        extract_tar_safely(archive, tmp_path / "d1", max_members=2)
    with pytest.raises(UnsafeArchiveError, match="hold more than 29 bytes"):
        extract_tar_safely(archive, tmp_path / "d2", max_bytes=29)
    assert _files(tmp_path / "d1") == [] and _files(tmp_path / "d2") == []
    assert len(extract_tar_safely(archive, tmp_path / "d3", max_members=3, max_bytes=30)) == 1


def _gzip_zeros(mib: int) -> bytes:
    """gzip members of zeros, concatenated: ``mib`` MiB of zeros in about mib KiB."""
    return gzip.compress(bytes(64 * 2**20), compresslevel=9) * (mib // 64)


def test_header_declaring_a_gigabyte_is_refused_with_bounded_memory(tmp_path: Path):
    # a pax header declaring 1 GiB of records, followed by 1 GiB of zeros in ~1 MB of gzip:
    # tarfile reads a pax header in one piece (before: the whole GiB went into memory)
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 2**30
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT))
                        + _gzip_zeros(1024))
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchiveError, match="asks to read 1073741824 bytes at once"):
            extract_tar_safely(archive, tmp_path / "dest")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak} bytes"
    assert _files(tmp_path / "dest") == []


def test_file_data_bomb_stops_at_the_byte_bound(tmp_path: Path):
    # one member declaring 1 GiB of zeros (~1 MB of gzip); the bound is 16 MiB
    info = tarfile.TarInfo("top/zeros")
    info.size = 2**30
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + _gzip_zeros(1024))
    with pytest.raises(UnsafeArchiveError, match="hold more than 16777216 bytes"):
        extract_tar_safely(archive, tmp_path / "dest", max_bytes=16 * 2**20)
    assert _files(tmp_path / "dest") == []


@pytest.mark.parametrize("blob", [b"", b"not a tar at all" * 100, b"\x1f\x8b\x08\x00garbage"])
def test_corrupt_archive_is_an_unsafe_archive_error(tmp_path: Path, blob: bytes):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(blob)
    with pytest.raises(UnsafeArchiveError, match="not a readable tar archive"):
        extract_tar_safely(archive, tmp_path / "dest")
    assert _files(tmp_path / "dest") == []


def test_link_chain_escape_via_download_leaves_nothing(tmp_path: Path, server, sentinel):
    url, served = server
    root, guard = sentinel
    archive = served / "evil.tar.gz"
    _link_chain_escape(archive, via_hardlink=True)
    with pytest.raises(UnsafeArchiveError, match="is a symbolic link"):
        download_and_extract(url + archive.name, root, _md5(archive), "cifar-10-python.tar.gz")
    assert guard.read_text() == "original\n"
    assert _files(root) == []  # neither the archive nor a temp folder


class _NoLength(http.server.BaseHTTPRequestHandler):
    """Streams 3 MiB without a Content-Length header (a server that does not announce it)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        for _ in range(3):
            self.wfile.write(bytes(2**20))


@pytest.mark.parametrize("announced", [True, False])
def test_download_larger_than_the_bound_is_refused_and_leaves_nothing(
        tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch, announced: bool):
    from netshrink.bench.data import DownloadTooLargeError, download_url
    if announced:
        url, served = server
        (served / "big.bin").write_bytes(bytes(3 * 2**20))
        url = url + "big.bin"
    else:
        httpd = http.server.HTTPServer(("127.0.0.1", 0), _NoLength)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/big.bin"
    dest = tmp_path / "out" / "big.bin"
    try:
        with pytest.raises(DownloadTooLargeError, match="2097152"):
            download_url(url, dest, "0" * 32, max_bytes=2 * 2**20)
        assert _files(dest.parent) == []  # no partial file, no temp file
        assert download_url(url, dest, hashlib.md5(bytes(3 * 2**20)).hexdigest(),
                            max_bytes=4 * 2**20) == dest  # a large enough bound: same URL works
    finally:
        if not announced:
            httpd.shutdown()
            httpd.server_close()
