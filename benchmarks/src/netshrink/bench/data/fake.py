"""Writers of small fake datasets in the real on-disk formats, for tests of the readers and of
code that needs a data root (engine, CLI) without the real data."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from netshrink.bench.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR10_DIR,
    META_FILE,
    TEST_FILES,
    TRAIN_FILES,
)
from netshrink.bench.data.mnist import FILES, IMAGES_MAGIC, LABELS_MAGIC, MNIST_RAW


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, *,
                      protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    """One batch file in the ``cifar-10-batches-py`` format from images uint8 (N, 3, 32, 32)."""
    n = images.shape[0]
    batch = {"batch_label": f"fake batch {path.name}", "labels": [int(v) for v in labels],
             "data": np.ascontiguousarray(images, dtype=np.uint8).reshape(n, 3 * 32 * 32),
             "filenames": [f"{path.name}_{i:05d}.png" for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def write_fake_cifar10(root: Path, *, per_train_batch: int = 8, test: int = 8,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A random ``root/cifar-10-batches-py`` with ``per_train_batch`` images in each of the five
    train files and ``test`` in the test file; returns {split: (images (N,3,32,32), labels)}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10_DIR
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"num_cases_per_batch": per_train_batch, "label_names": list(CIFAR10_CLASSES),
            "num_vis": 3072}
    (folder / META_FILE).write_bytes(pickle.dumps(meta))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, files, count in (("train", TRAIN_FILES, per_train_batch),
                                ("test", TEST_FILES, test)):
        parts = []
        for name in files:
            images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, 10, count).astype(np.int64)
            write_cifar_batch(folder / name, images, labels)
            parts.append((images, labels))
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An idx file's bytes: big-endian magic, one big-endian uint32 per dimension, then data."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fake_mnist(root: Path, *, train: int | None = 12, test: int = 10, gz: bool = True,
                     seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random idx files in ``root/MNIST/raw`` (``.gz`` if ``gz``); ``train=None`` writes only the
    test files. Returns {split: (images (N, 28, 28), labels)} for the splits written."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / MNIST_RAW
    raw.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, count in (("train", train), ("test", test)):
        if count is None:
            continue
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        for name, array, magic in zip(FILES[split], (images, labels), (IMAGES_MAGIC, LABELS_MAGIC),
                                      strict=True):
            data = idx_bytes(array, magic)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (raw / name).write_bytes(data)
        out[split] = (images, labels.astype(np.int64))
    return out
