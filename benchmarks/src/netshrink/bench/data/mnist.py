"""MNIST from idx files under ``<root>/MNIST/raw/`` (torchvision's layout), gzipped or not.

Where train and test come from (``mnist_split``):

- ``"official"``: the 60,000 train and 10,000 test images (needs all four files);
- ``"from-test"``: only the official *test* files are used and split deterministically, the
  first 80% (8,000 of 10,000) for training and the last 20% (2,000) for testing: for sites
  that have only the test split, such as the shared dataset folder;
- ``"auto"``: official when the train files exist (or ``download`` can fetch them), else
  from-test with a PartialDatasetWarning.
"""

from __future__ import annotations

import gzip
import math
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from netshrink.bench.data.dataset import (
    MNIST_SPLITS,
    DatasetFormatError,
    ImageData,
    LoadOptions,
    PartialDatasetWarning,
    register_dataset,
)
from netshrink.bench.data.download import MNIST_MD5, download_from_mirrors, mnist_mirrors
from netshrink.bench.data.root import where_hint

MNIST_RAW = Path("MNIST") / "raw"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FULL_SIZES = {"train": 60000, "test": 10000}
FROM_TEST_TRAIN_FRACTION = 0.8  # 8,000 of the 10,000 official test images
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(i) for i in range(10))
IMAGES_MAGIC = 0x00000803  # ubyte, 3 dimensions
LABELS_MAGIC = 0x00000801  # ubyte, 1 dimension


#: The most data bytes an idx file may declare: the largest real MNIST file (train images) holds
#: 47,040,000; anything past this bound is refused before it is read or decompressed.
MAX_IDX_BYTES = 64 * 2**20


def read_idx(path: Path, expected_magic: int, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """An idx file (gzip detected from its content) as a uint8 array; the magic number and the
    byte count implied by the header are checked exactly, with errors naming the file.

    The header is read first and its shape checked against ``max_bytes``; then exactly the
    declared bytes are read (decompressed as a stream), plus one to detect trailing data, so a
    gzip bomb or a header declaring a huge shape costs at most ``max_bytes`` of memory. Every
    malformed file raises DatasetFormatError; a missing one, FileNotFoundError.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            if f.read(2) == b"\x1f\x8b":
                f.seek(0)
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    return _parse_idx(path, stream, expected_magic, max_bytes)
            f.seek(0)
            return _parse_idx(path, f, expected_magic, max_bytes)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise DatasetFormatError(f"{path} is a corrupt or truncated gzip file: {e}") from e


def _parse_idx(path: Path, stream: BinaryIO, expected_magic: int,
               max_bytes: int) -> np.ndarray:
    """Header, bounds, then exactly the declared data from ``stream`` (see ``read_idx``)."""
    head = stream.read(4)
    if len(head) < 4:
        raise DatasetFormatError(f"{path} is too short ({len(head)} bytes) to be an idx file")
    magic = int.from_bytes(head, "big")
    if magic != expected_magic:
        raise DatasetFormatError(f"{path}: bad magic number 0x{magic:08x}, expected "
                                 f"0x{expected_magic:08x} (an idx{expected_magic & 0xFF} "
                                 f"ubyte file)")
    ndim = magic & 0xFF
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetFormatError(f"{path} is truncated inside its header")
    dims = tuple(int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
    expected = math.prod(dims)  # Python ints: a header cannot overflow this
    if expected > max_bytes:
        raise DatasetFormatError(f"{path}: header says shape {dims} ({expected} bytes of data), "
                                 f"more than the {max_bytes} an MNIST file may hold")
    data = stream.read(expected)
    extra = stream.read(1)
    if len(data) != expected or extra:
        held = "more (trailing data)" if extra else str(len(data))
        raise DatasetFormatError(f"{path}: header says shape {dims} ({expected} bytes of data) "
                                 f"but the file holds {held}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find(raw_dir: Path, base: str) -> Path | None:
    """``base`` or ``base.gz`` in ``raw_dir`` (uncompressed preferred), or None."""
    for candidate in (raw_dir / base, raw_dir / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_pair(raw_dir: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28), labels (N,)) of the official ``which`` files, validated."""
    image_base, label_base = FILES[which]
    image_path, label_path = _find(raw_dir, image_base), _find(raw_dir, label_base)
    if image_path is None or label_path is None:
        missing = image_base if image_path is None else label_base
        raise FileNotFoundError(f"MNIST file {missing}[.gz] not found in {raw_dir}")
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DatasetFormatError(f"{image_path}: images must be 28x28; got {images.shape[1:]}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{image_path} has {images.shape[0]} images but {label_path} "
                                 f"has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DatasetFormatError(f"{label_path}: labels must lie in 0..9; got up to "
                                 f"{labels.max()}")
    return images, labels


def _has(raw_dir: Path, which: str) -> bool:
    return all(_find(raw_dir, base) is not None for base in FILES[which])


def _download(raw_dir: Path, which: str, base_url: str | None,
              md5s: Mapping[str, str] | None) -> None:
    """Fetch the two .gz files of ``which`` that are missing, each checked against its md5."""
    sums = {**MNIST_MD5, **(md5s or {})}
    mirrors = mnist_mirrors(base_url)
    for base in FILES[which]:
        if _find(raw_dir, base) is None:
            name = f"{base}.gz"
            download_from_mirrors(mirrors, name, raw_dir / name, sums[name])


def load_mnist(root: Path, split: str, *, mnist_split: str = "auto", download: bool = False,
               base_url: str | None = None, md5s: Mapping[str, str] | None = None) -> ImageData:
    """MNIST ``split`` ("train"/"test") from ``root/MNIST/raw``, images (N, 1, 28, 28) uint8.

    ``mnist_split`` picks the source (see the module doc). ``download`` fetches missing files
    from ``base_url`` (else $NETSHRINK_MNIST_URL, else the official mirrors), checking each
    against ``md5s`` (default: the official md5s).
    """
    if split not in FILES:
        raise ValueError(f"split={split!r} is not allowed; choose one of: 'train', 'test'")
    if mnist_split not in MNIST_SPLITS:
        allowed = ", ".join(repr(s) for s in MNIST_SPLITS)
        raise ValueError(f"mnist_split={mnist_split!r} is not allowed; choose one of: {allowed}")
    root = Path(root).expanduser()
    raw_dir = root / MNIST_RAW
    mode = mnist_split
    if mode == "auto":
        mode = "official" if (_has(raw_dir, "train") or download) else "from-test"
    needed = ("train", "test") if mode == "official" else ("test",)
    for which in needed:
        if not _has(raw_dir, which):
            if download:
                _download(raw_dir, which, base_url, md5s)
            else:
                hint = where_hint(root)
                if mode == "official" and which == "train" and _has(raw_dir, "test"):
                    hint += "; or use mnist_split='from-test' to split the test files"
                raise FileNotFoundError(f"MNIST {which} files ({' and '.join(FILES[which])}, "
                                        f"optionally .gz) not found in {raw_dir}; {hint}")
    if mode == "official":
        images, labels = _read_pair(raw_dir, split)
        if images.shape[0] < FULL_SIZES[split]:
            warnings.warn(f"MNIST at {raw_dir} is not the full set: its {split} split has "
                          f"{images.shape[0]} images (the full one has {FULL_SIZES[split]})",
                          PartialDatasetWarning, stacklevel=2)
    else:
        images, labels = _read_pair(raw_dir, "test")
        cut = int(images.shape[0] * FROM_TEST_TRAIN_FRACTION)
        if mnist_split == "auto":
            warnings.warn(f"MNIST training files not found in {raw_dir}: splitting the "
                          f"{images.shape[0]} official test images instead (first {cut} -> "
                          f"train, last {images.shape[0] - cut} -> test); not comparable with "
                          f"published MNIST accuracy", PartialDatasetWarning, stacklevel=2)
        part = slice(0, cut) if split == "train" else slice(cut, None)
        images, labels = images[part], labels[part]
    return ImageData(name="mnist",
                     images=torch.from_numpy(np.ascontiguousarray(images)[:, None].copy()),
                     labels=torch.from_numpy(labels.astype(np.int64)),
                     num_classes=10, mean=MNIST_MEAN, std=MNIST_STD, classes=MNIST_CLASSES)


@register_dataset("mnist")
def _load_registered(split: str, root: Path, options: LoadOptions) -> ImageData:
    return load_mnist(root, split, mnist_split=options.mnist_split, download=options.download)
