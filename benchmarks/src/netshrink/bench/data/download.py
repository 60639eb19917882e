"""Fetching datasets: stream a URL to a temp file, check its md5, and extract archives safely
and atomically, so a failed or hostile download never leaves a half-written dataset behind.

Every URL the package may contact is a constant here; each can be overridden (a parameter, or
the environment variables below) so tests and air-gapped sites can serve files themselves.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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
    """An archive that is not extracted: a member that would land outside the extraction
    folder, a link, device or fifo, more members or bytes than the bounds, or a corrupt
    archive. Nothing of it is left behind."""


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


#: The most bytes one download may bring (the CIFAR-10 archive is 163 MB, MNIST's largest file
#: 9.5 MB); a hostile or wrong URL cannot fill the disk before its md5 is checked.
MAX_DOWNLOAD_BYTES = 1 * 2**30


class DownloadTooLargeError(ValueError):
    """A download that sent more bytes than allowed (the partial file has been deleted)."""


def download_url(url: str, dest: Path, md5: str, *, timeout: float = 60.0,
                 max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Stream ``url`` to ``dest`` via a temp file, verifying ``md5`` before the atomic rename.

    On an md5 mismatch nothing is left behind and a ChecksumError (a ValueError) names the URL
    and both checksums. A response longer than ``max_bytes`` (announced or sent) is a
    DownloadTooLargeError, also leaving nothing behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _log.info("downloading %s -> %s", url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": "netshrink-bench"})
    with _temp_path(dest.parent, f".{dest.name}.") as tmp:
        h = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            announced = response.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) > max_bytes:
                raise DownloadTooLargeError(
                    f"{url} announces {int(announced)} bytes, more than the {max_bytes} allowed "
                    f"(max_bytes); nothing was written")
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                received += len(chunk)
                if received > max_bytes:
                    raise DownloadTooLargeError(
                        f"{url} sent more than the {max_bytes} bytes allowed (max_bytes); the "
                        f"partial download was deleted")
                h.update(chunk)
                out.write(chunk)
        actual = h.hexdigest()
        if actual != md5.lower():
            raise ChecksumError(f"md5 mismatch for {url}: expected {md5.lower()}, got {actual}; "
                                f"the download was deleted")
        os.replace(tmp, dest)
    return dest


#: Bounds on one archive's extraction (CIFAR-10's is 170 MB in ~10 members); keyword
#: arguments of ``extract_tar_safely`` override them.
MAX_EXTRACT_BYTES = 4 * 2**30
MAX_EXTRACT_MEMBERS = 100_000
#: The largest single read tarfile may make for a header (a GNU long name, a pax record):
#: tarfile reads a declared size in one piece, so a header declaring gigabytes inside a
#: compressed archive would otherwise be decompressed into memory whole.
_MAX_HEADER_READ = 4 * 2**20
_NAME_MAX = 255


class _BoundedReader(io.RawIOBase):
    """The decompressed archive as tarfile sees it: reads larger than ``max_read`` are refused
    (tarfile asks for a header's declared size in one read; member data is read by
    ``_extract_members`` in chunks)."""

    def __init__(self, stream: BinaryIO, archive: Path, max_read: int) -> None:
        super().__init__()
        self._stream, self._archive, self._max_read = stream, archive, max_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self._max_read:
            raise UnsafeArchiveError(f"refusing to extract {self._archive}: a header asks to "
                                     f"read {size} bytes at once (limit {self._max_read})")
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


@contextlib.contextmanager
def _open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    """The archive (plain, gzip, bzip2 or xz, told apart by their magic bytes) as a TarFile
    reading through ``_BoundedReader``."""
    with open(archive, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        with contextlib.ExitStack() as stack:
            stream: BinaryIO
            if magic.startswith(b"\x1f\x8b"):
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            elif magic.startswith(b"BZh"):
                stream = stack.enter_context(bz2.BZ2File(raw, mode="rb"))
            elif magic.startswith(b"\xfd7zXZ\x00"):
                stream = stack.enter_context(lzma.LZMAFile(raw, mode="rb"))
            else:
                stream = raw
            bounded = _BoundedReader(stream, archive, _MAX_HEADER_READ)
            with tarfile.TarFile(fileobj=bounded, mode="r") as tar:  # type: ignore[arg-type]
                yield tar


def _refuse(archive: Path, member: tarfile.TarInfo, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"refusing to extract {archive}: member {member.name!r} {why}")


def _member_parts(member: tarfile.TarInfo, archive: Path) -> tuple[str, ...]:
    """The member's path as checked components: relative, no ``..``, no NUL or backslash,
    each component a legal file name."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts:
        raise _refuse(archive, member, "would be written outside the destination folder")
    if "\x00" in name or "\\" in name:
        raise _refuse(archive, member, "has a NUL or backslash in its name")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if any(len(p.encode("utf-8", "surrogateescape")) > _NAME_MAX for p in parts):
        raise _refuse(archive, member, f"has a path component over {_NAME_MAX} bytes")
    return parts


def _inside(root: Path, path: Path) -> bool:
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root


def _make_dirs(root: Path, parts: tuple[str, ...], archive: Path,
               member: tarfile.TarInfo) -> Path:
    """Create ``root/parts...`` one folder at a time (mode 0755), never through a link."""
    current = root
    for part in parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise _refuse(archive, member, f"needs the folder {part!r}, which the archive "
                                               f"already made a file") from None
    if not _inside(root, current):
        raise _refuse(archive, member, "would be written outside the destination folder")
    return current


def _extract_members(tar: tarfile.TarFile, archive: Path, root: Path, max_bytes: int,
                     max_members: int) -> None:
    """Write every member into ``root`` ourselves: folders with os.mkdir, regular files with
    O_EXCL|O_NOFOLLOW opens filled from ``tar.extractfile``; tarfile's own extraction (with
    its link and long-name flaws) is never used. Links, devices and fifos are refused."""
    written = 0
    for count, member in enumerate(tar, start=1):
        if count > max_members:
            raise UnsafeArchiveError(f"refusing to extract {archive}: more than {max_members} "
                                     f"members")
        parts = _member_parts(member, archive)
        if not (member.isdir() or member.isreg()):
            kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
                    else "a device, fifo or other special file")
            raise _refuse(archive, member, f"is {kind}; only regular files and folders are "
                                           f"extracted")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12, and 3.8-3.11 security releases
            try:  # a second opinion on the name; its link checks never apply here
                tarfile.data_filter(member, str(root))
            except tarfile.FilterError as e:
                raise _refuse(archive, member, f"is refused by tarfile's data filter: {e}") from e
        if member.isdir():
            _make_dirs(root, parts, archive, member)
            continue
        if not parts:
            raise _refuse(archive, member, "has an empty name")
        if written + member.size > max_bytes:
            raise UnsafeArchiveError(f"refusing to extract {archive}: its files hold more than "
                                     f"{max_bytes} bytes")
        folder = _make_dirs(root, parts[:-1], archive, member)
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise _refuse(archive, member, "has no data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(folder / parts[-1], flags, 0o644)
        except FileExistsError:
            raise _refuse(archive, member, "appears twice (or names an existing folder)") from None
        with os.fdopen(fd, "wb") as out, source:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise UnsafeArchiveError(f"refusing to extract {archive}: its files hold "
                                             f"more than {max_bytes} bytes")
                out.write(chunk)


def extract_tar_safely(archive: Path, dest: Path, *, max_bytes: int = MAX_EXTRACT_BYTES,
                       max_members: int = MAX_EXTRACT_MEMBERS) -> list[Path]:
    """Extract a (compressed) tar into ``dest`` atomically; returns the top-level paths created.

    Only regular files and folders are extracted, each written by this function into a path it
    builds from the member's checked name (see ``_extract_members``); a link, device or fifo, a
    name leaving the folder, more than ``max_members`` members or ``max_bytes`` of file data,
    and a corrupt archive raise UnsafeArchiveError. Extraction goes to a temp folder inside
    ``dest`` whose top-level entries are then renamed into place, so an error leaves ``dest``
    as it was. Top-level entries that already exist in ``dest`` are an error (FileExistsError).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    moved: list[Path] = []
    try:
        try:
            with _open_tar(archive) as tar:
                _extract_members(tar, archive, tmp, max_bytes, max_members)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as e:
            raise UnsafeArchiveError(f"refusing to extract {archive}: not a readable tar "
                                     f"archive ({type(e).__name__}: {e})") from e
        tops = sorted(p.name for p in tmp.iterdir())
        clashes = [t for t in tops if os.path.lexists(dest / t)]
        if clashes:
            raise FileExistsError(f"refusing to extract {archive} into {dest}: "
                                  f"{', '.join(clashes)} already exist")
        for top in tops:
            os.rename(tmp / top, dest / top)
            moved.append(dest / top)
        return moved
    except BaseException:
        for path in moved:  # a later rename failed: take back the earlier ones
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
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
