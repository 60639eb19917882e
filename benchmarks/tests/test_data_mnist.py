"""MNIST idx reader (gz and raw), validation errors, and the mnist_split choices."""

import gzip
import struct
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from netshrink.bench.data import (
    DatasetFormatError,
    PartialDatasetWarning,
    load_dataset,
    load_mnist,
    read_idx,
    write_fake_mnist,
)

SHARED = Path("/work/shared/datasets")
RAW = Path("MNIST") / "raw"


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    raw = root / RAW
    raw.mkdir(parents=True, exist_ok=True)
    for name, blob in ((f"{prefix}-images-idx3-ubyte", _idx(images, 2051)),
                       (f"{prefix}-labels-idx1-ubyte", _idx(labels, 2049))):
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (raw / name).write_bytes(blob)


def _random(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.uint8))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("gz", [True, False])
def test_official_round_trip(tmp_path: Path, gz: bool):
    train, test = _random(12, 0), _random(7, 1)
    _write(tmp_path, "train", *train, gz=gz)
    _write(tmp_path, "t10k", *test, gz=gz)
    for split, (images, labels) in (("train", train), ("test", test)):
        data = _quiet(load_mnist, tmp_path, split, mnist_split="official")
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(labels), 1, 28, 28)
        assert np.array_equal(data.images[:, 0].numpy(), images)
        assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
        assert data.name == "mnist" and data.mean == (0.1307,) and data.num_classes == 10


def test_read_idx_shapes(tmp_path: Path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx(np.arange(6, dtype=np.uint8), 2049)))
    assert read_idx(path, 2049).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(("blob", "message"), [
    (_idx(np.zeros((2, 28, 28), np.uint8), 2049), r"bad magic number 0x00000801, expected "
                                                  r"0x00000803"),
    (_idx(np.zeros((2, 28, 28), np.uint8), 2051)[:-5], r"header says shape \(2, 28, 28\)"),
    (_idx(np.zeros((2, 28, 28), np.uint8), 2051) + b"\x00",
     r"\(1568 bytes of data\) but the file holds more"),
    (b"\x00\x00\x08", "too short"),
    (struct.pack(">II", 2051, 2), "truncated inside its header"),
    # mtime=0: the same bytes (and test id) in every pytest-xdist worker's collection
    (gzip.compress(_idx(np.zeros((2, 28, 28), np.uint8), 2051), mtime=0)[:40],
     "corrupt or truncated gzip"),
])
def test_bad_idx_files_are_clear_errors(tmp_path: Path, blob: bytes, message: str):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_idx(path, 2051)
    assert str(path) in str(info.value)


def test_dataset_level_checks(tmp_path: Path):
    images, labels = _random(5, 0)
    _write(tmp_path, "t10k", images, labels[:4], gz=False)
    with pytest.raises(DatasetFormatError, match="5 images but .* 4 labels"):
        load_mnist(tmp_path, "test", mnist_split="from-test")
    _write(tmp_path, "t10k", images, np.full(5, 10, np.uint8), gz=False)
    with pytest.raises(DatasetFormatError, match=r"0\.\.9"):
        load_mnist(tmp_path, "test", mnist_split="from-test")
    _write(tmp_path, "t10k", np.zeros((5, 20, 20), np.uint8), labels, gz=False)
    with pytest.raises(DatasetFormatError, match="28x28"):
        load_mnist(tmp_path, "test", mnist_split="from-test")


def test_from_test_split_is_first_80_percent_then_rest(tmp_path: Path):
    images, labels = _random(10, 2)
    _write(tmp_path, "t10k", images, labels, gz=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # explicitly asked for: no warning
        train = load_mnist(tmp_path, "train", mnist_split="from-test")
        test = load_mnist(tmp_path, "test", mnist_split="from-test")
    assert np.array_equal(train.images[:, 0].numpy(), images[:8])
    assert np.array_equal(test.images[:, 0].numpy(), images[8:])
    assert train.labels.tolist() + test.labels.tolist() == labels.tolist()


def test_official_needs_train_files_and_hints_from_test(tmp_path: Path):
    write_fake_mnist(tmp_path, train=None, test=10)
    with pytest.raises(FileNotFoundError, match=r"MNIST train files .*not found in .*"
                                                r"NETSHRINK_DATA.*mnist_split='from-test'"):
        load_mnist(tmp_path, "test", mnist_split="official")
    with pytest.raises(FileNotFoundError, match="MNIST test files"):
        load_mnist(tmp_path / "empty", "test", mnist_split="auto")


def test_auto_picks_official_when_train_files_exist(tmp_path: Path):
    written = write_fake_mnist(tmp_path, train=12, test=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset("mnist", "train", tmp_path)  # mnist_split="auto"
    assert len(data) == 12 and data.labels.tolist() == written["train"][1].tolist()
    assert not any("splitting" in str(w.message) for w in caught)


def test_auto_falls_back_to_from_test_with_a_warning(tmp_path: Path):
    write_fake_mnist(tmp_path, train=None, test=10, gz=False)
    with pytest.warns(PartialDatasetWarning, match=r"splitting the 10 official test images.*"
                                                   r"first 8 -> train, last 2 -> test"):
        data = load_dataset("mnist", "test", tmp_path)
    assert len(data) == 2


@pytest.mark.skipif(not (SHARED / RAW).is_dir(),
                    reason=f"shared MNIST test split not present at {SHARED / RAW}")
def test_shared_mnist_from_test_sizes():
    with pytest.warns(PartialDatasetWarning, match="first 8000 -> train, last 2000 -> test"):
        train = load_dataset("mnist", "train", SHARED)
    test = load_dataset("mnist", "test", SHARED, mnist_split="from-test")
    assert train.images.shape == (8000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert train.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the famous first t10k digits
    assert torch.bincount(test.labels, minlength=10).min() > 150
    with pytest.raises(FileNotFoundError, match="train files"):
        load_dataset("mnist", "train", SHARED, mnist_split="official")


def _gzip_bomb(header: bytes, gib: int = 1) -> bytes:
    """~1 MB of gzip that expands to ``header`` then ``gib`` GiB of zeros: concatenated gzip
    members (one valid gzip stream to every reader), each 64 MiB of zeros in ~64 KiB."""
    member = gzip.compress(bytes(64 * 2**20), compresslevel=9)
    return gzip.compress(header) + member * (16 * gib)


def test_gzip_bomb_fails_fast_with_bounded_memory(tmp_path: Path):
    # the header declares 1000 images (784,000 bytes); the stream holds 1 GiB after it. Before,
    # the whole file was decompressed (1 GiB in memory) before its size was checked.
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(_gzip_bomb(struct.pack(">IIII", 2051, 1000, 28, 28)))
    assert path.stat().st_size < 1.1e6
    tracemalloc.start()
    try:
        with pytest.raises(DatasetFormatError, match=r"shape \(1000, 28, 28\) \(784000 bytes of "
                                                     r"data\) but the file holds more") as info:
            read_idx(path, 2051)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 8 * 2**20, f"peak {peak} bytes"


@pytest.mark.parametrize("dims", [(2**32 - 1,) * 3, (2**21, 2**21, 2**22), (100_000, 28, 28)])
@pytest.mark.parametrize("gz", [True, False])
def test_header_declaring_a_huge_shape_is_refused_before_reading(tmp_path: Path, dims, gz):
    # (2**21, 2**21, 2**22) overflows int64 to 0: before, np.prod said 0 bytes and the file
    # then failed with a bare ValueError from reshape (or was accepted when empty)
    blob = struct.pack(">IIII", 2051, *dims) + bytes(100)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(gzip.compress(blob) if gz else blob)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetFormatError, match=r"more than the 67108864 an MNIST file may "
                                                     r"hold") as info:
            read_idx(path, 2051)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and peak < 2**20


def test_read_idx_bound_is_a_parameter(tmp_path: Path):
    path = tmp_path / "x"
    path.write_bytes(_idx(np.zeros((3, 28, 28), np.uint8), 2051))
    assert read_idx(path, 2051, max_bytes=3 * 28 * 28).shape == (3, 28, 28)
    with pytest.raises(DatasetFormatError, match="more than the 2351"):
        read_idx(path, 2051, max_bytes=3 * 28 * 28 - 1)
