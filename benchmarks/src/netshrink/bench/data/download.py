"""Fetching datasets: stream a URL to a temp file, check its md5, and extract archives safely
and atomically, so a failed or hostile download never leaves a half-written dataset behind.

Every URL the package may contact is a constant here; each can be overridden (a parameter, or
the environment variables below) so tests and air-gapped sites can serve files themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

_log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URL_ENV = "NETSHRINK_CIFAR_URL"  # full URL of a cifar-10-python.tar.gz
CIFAR10_MD5_ENV = "NETSHRINK_CIFAR_MD5"  # its md5, when it is not the official archive

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_URL_ENV = "NETSHRINK_MNIST_URL"  # a base URL (folder) replacing the mirror list
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A downloaded file's md5 is not the expected one (the file has been deleted)."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder, or is not a plain file/dir."""


def md5_file(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _temp_path(folder: Path, prefix: str) -> Iterator[Path]:
    """A temp file name in ``folder`` (same filesystem, so a rename is atomic); removed on error."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".part")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def download_url(url: str, dest: Path, md5: str, *, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` via a temp file, verifying ``md5`` before the atomic rename.

    On an md5 mismatch nothing is left behind and a ChecksumError (a ValueError) names the URL
    and both checksums.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _log.info("downloading %s -> %s", url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": "netshrink-bench"})
    with _temp_path(dest.parent, f".{dest.name}.") as tmp:
        h = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
        actual = h.hexdigest()
        if actual != md5.lower():
            raise ChecksumError(f"md5 mismatch for {url}: expected {md5.lower()}, got {actual}; "
                                f"the download was deleted")
        os.replace(tmp, dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse absolute paths, ``..`` components, links leaving the archive, and special files."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts:
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {member.name!r} would "
                                 f"be written outside the destination folder")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        # a symlink resolves relative to its own folder; a hard link relative to the archive root
        resolved = (name.parent / target) if member.issym() else target
        depth = 0
        for part in resolved.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if target.is_absolute() or depth < 0:
            raise UnsafeArchiveError(f"refusing to extract {archive}: link {member.name!r} -> "
                                     f"{member.linkname!r} points outside the destination folder")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {member.name!r} is not "
                                 f"a regular file or folder")


def extract_tar_safely(archive: Path, dest: Path) -> list[Path]:
    """Extract a (compressed) tar into ``dest`` atomically; returns the top-level paths created.

    Every member is checked before anything is written; extraction goes to a temp folder inside
    ``dest`` whose top-level entries are then renamed into place, so an error leaves ``dest`` as
    it was. Top-level entries that already exist in ``dest`` are an error (FileExistsError).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12, and 3.8-3.11 security releases
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - old interpreters; members were checked above
                tar.extractall(tmp, members=members)
        tops = sorted(p.name for p in tmp.iterdir())
        clashes = [t for t in tops if (dest / t).exists()]
        if clashes:
            raise FileExistsError(f"refusing to extract {archive} into {dest}: "
                                  f"{', '.join(clashes)} already exist")
        for top in tops:
            os.rename(tmp / top, dest / top)
        return [dest / t for t in tops]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_and_extract(url: str, root: Path, md5: str, filename: str, *,
                         keep_archive: bool = False, timeout: float = 60.0) -> list[Path]:
    """Download the tar archive at ``url`` to ``root/filename``, verify ``md5``, extract it into
    ``root`` safely and atomically, and (unless ``keep_archive``) delete the archive.

    Any failure (network, checksum, unsafe member) leaves ``root`` without the archive or a
    partial extraction. Returns the top-level paths extracted.
    """
    root = Path(root)
    archive = root / filename
    download_url(url, archive, md5, timeout=timeout)
    extracted = False
    try:
        paths = extract_tar_safely(archive, root)
        extracted = True
        return paths
    finally:
        if not (extracted and keep_archive):
            archive.unlink(missing_ok=True)


def cifar10_source(url: str | None = None, md5: str | None = None) -> tuple[str, str]:
    """(url, md5) of the CIFAR-10 archive: the arguments, else the environment, else official."""
    return (url or os.environ.get(CIFAR10_URL_ENV) or CIFAR10_URL,
            md5 or os.environ.get(CIFAR10_MD5_ENV) or CIFAR10_MD5)


def mnist_mirrors(base_url: str | None = None) -> tuple[str, ...]:
    """Base URLs to try in order for MNIST files: the argument, else the environment, else the
    official mirrors."""
    base = base_url or os.environ.get(MNIST_URL_ENV)
    if base:
        return (base if base.endswith("/") else base + "/",)
    return MNIST_MIRRORS


def download_from_mirrors(mirrors: tuple[str, ...], filename: str, dest: Path, md5: str, *,
                          timeout: float = 60.0) -> Path:
    """Try each mirror for ``filename`` until one works; a checksum mismatch is not retried."""
    errors: list[str] = []
    for base in mirrors:
        try:
            return download_url(base + filename, dest, md5, timeout=timeout)
        except ChecksumError:
            raise
        except OSError as e:  # URLError, HTTPError, timeouts
            errors.append(f"{base + filename}: {e}")
    raise OSError(f"could not download {filename} from any mirror: " + "; ".join(errors))
