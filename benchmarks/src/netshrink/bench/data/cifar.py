"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (the python-pickle release).

The batch files are pickles, and unpickling runs code chosen by whoever wrote the file, so they
are read with an unpickler that resolves only the few numpy globals an array needs.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netshrink.bench.data.dataset import (
    DatasetFormatError,
    ImageData,
    LoadOptions,
    PartialDatasetWarning,
    register_dataset,
)
from netshrink.bench.data.download import CIFAR10_ARCHIVE, cifar10_source, download_and_extract
from netshrink.bench.data.root import where_hint

CIFAR10_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
FULL_SIZES = {"train": 50000, "test": 10000}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# per-channel mean and std of the 50,000 training images, in [0, 1] units
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_ROW = 3 * 32 * 32


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch may name: numpy's array reconstruction (under its numpy 1
    and numpy 2 module names), and ``_codecs.encode``, which protocol-2 pickles written by
    Python 3 use for bytes."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    import _codecs

    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_allowed_globals``; any other global aborts the load before it is used."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DatasetFormatError(f"refusing to unpickle {module}.{name} from {self._source}: "
                                     f"not a CIFAR batch") from None


def _unpickle(path: Path) -> Any:
    """Load one pickle with the restricted unpickler; errors name the file."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DatasetFormatError:
        raise
    except OSError:
        raise
    except Exception as e:  # a malformed pickle can raise almost anything
        raise DatasetFormatError(f"{path} is corrupt or truncated (not a readable CIFAR "
                                 f"pickle): {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict")
    # Python 2 pickles read with latin1 give str keys; read as bytes they would be b"data"
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3072), labels int64 (N,)) from one batch file, validated."""
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DatasetFormatError(f"{path} is not a CIFAR batch: keys {sorted(map(str, batch))}, "
                                 f"expected 'data' and 'labels'")
    data = batch["data"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != _ROW):
        shape = getattr(data, "shape", None)
        raise DatasetFormatError(f"{path}: 'data' must be a uint8 array of shape (N, {_ROW}); "
                                 f"got {type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    labels = np.asarray(batch["labels"])
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DatasetFormatError(f"{path}: 'labels' must be a list of ints; "
                                 f"got dtype {labels.dtype} shape {labels.shape}")
    if labels.shape[0] != data.shape[0]:
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(f"{path}: labels must lie in 0..9; "
                                 f"got {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def _read_classes(folder: Path) -> tuple[str, ...]:
    """Class names from ``batches.meta`` if present, else the standard ten."""
    path = folder / META_FILE
    if not path.exists():
        return CIFAR10_CLASSES
    names = _unpickle(path).get("label_names")
    if (not isinstance(names, list) or len(names) != 10
            or not all(isinstance(n, (str, bytes)) for n in names)):
        raise DatasetFormatError(f"{path}: 'label_names' must list 10 class names; got {names!r}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def load_cifar10(root: Path, split: str, *, download: bool = False, url: str | None = None,
                 md5: str | None = None) -> ImageData:
    """CIFAR-10 ``split`` ("train" or "test") from ``root/cifar-10-batches-py``.

    A missing folder is downloaded when ``download`` (from ``url``/``md5``, else
    $NETSHRINK_CIFAR_URL/$NETSHRINK_CIFAR_MD5, else the official archive), otherwise a
    FileNotFoundError says where it looked. An existing folder is read as is (no checksum), and
    a subset smaller than the official split loads with a PartialDatasetWarning.
    """
    files = {"train": TRAIN_FILES, "test": TEST_FILES}.get(split)
    if files is None:
        raise ValueError(f"split={split!r} is not allowed; choose one of: 'train', 'test'")
    root = Path(root).expanduser()
    folder = root / CIFAR10_DIR
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(f"CIFAR-10 not found: no folder {folder}; "
                                    + where_hint(root))
        src_url, src_md5 = cifar10_source(url, md5)
        download_and_extract(src_url, root, src_md5, CIFAR10_ARCHIVE)
        if not folder.is_dir():
            raise DatasetFormatError(f"the archive from {src_url} did not contain {CIFAR10_DIR}/")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)} needed for "
                                f"the {split} split; delete the folder to re-download it, or "
                                + where_hint(root, downloadable=False))
    parts = [_read_batch(folder / f) for f in files]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    n = data.shape[0]
    if n < FULL_SIZES[split]:
        warnings.warn(f"CIFAR-10 at {folder} is not the full set: its {split} split has {n} "
                      f"images (the full one has {FULL_SIZES[split]}); fine for tests and smoke "
                      f"runs, not for reported accuracy", PartialDatasetWarning, stacklevel=2)
    # each row is the R plane, then G, then B, each 32x32 row-major: exactly (3, 32, 32)
    images = torch.from_numpy(data.reshape(n, 3, 32, 32).copy())
    return ImageData(name="cifar10", images=images, labels=torch.from_numpy(labels),
                     num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                     classes=_read_classes(folder))


@register_dataset("cifar10")
def _load_registered(split: str, root: Path, options: LoadOptions) -> ImageData:
    return load_cifar10(root, split, download=options.download)
