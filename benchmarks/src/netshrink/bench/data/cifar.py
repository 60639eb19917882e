"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (the python-pickle release).

The batch files are pickles, and unpickling runs code chosen by whoever wrote the file, so they
are read with an unpickler that resolves only the few numpy globals an array needs, each
replaced by a checked stand-in. Unpickling can also allocate whatever sizes the file declares,
so a batch is read only when it is at most ``MAX_PICKLE_BYTES`` on disk, its opcodes are
checked first (counted lengths within the file, memo indices in order, no opcode that builds an
object other than through the stand-ins), and an array is only created after its declared
shape, dtype and data length agree. Every malformed or hostile file raises DatasetFormatError
naming it; a missing file is a FileNotFoundError.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import reprlib
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


#: The largest batch file read: a real one is ~31 MB (30,730,000 bytes of pixels), so twice that
#: is ample; a hostile pickle can build at most a small multiple of its size in objects.
MAX_PICKLE_BYTES = 64 * 2**20
_DTYPES = frozenset(f"{order}{code}" for order in ("", "<", ">", "|", "=")
                    for code in ("u1", "i1", "b1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"))


class _Refused(Exception):
    """Raised by the stand-ins below; ``_unpickle`` turns it into a DatasetFormatError."""


class _NdarrayToken:
    """What the global ``numpy.ndarray`` resolves to (its one instance ``_NDARRAY``): a marker
    ``_reconstruct`` accepts, which cannot be called to allocate an array of any shape."""


_NDARRAY = _NdarrayToken()


class _CheckedArray(np.ndarray):
    """The array ``_reconstruct`` returns: pickle's BUILD calls its ``__setstate__``, which
    checks the declared shape, dtype and data before numpy allocates anything."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"array state is not a 4- or 5-tuple: {reprlib.repr(state)}")
        shape, dtype, _, data = state[-4:]
        if (not isinstance(shape, tuple) or len(shape) > 8
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise _Refused(f"array shape {reprlib.repr(shape)} is not a tuple of sizes")
        if (not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.fields is not None
                or dtype.subdtype is not None or dtype.kind not in "biuf"):
            raise _Refused(f"array dtype {reprlib.repr(dtype)} is not a plain number type")
        if not isinstance(data, (bytes, str)):
            raise _Refused(f"array data is a {type(data).__name__}, not bytes")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != len(data):
            raise _Refused(f"array of shape {shape} and dtype {dtype} needs {nbytes} bytes; "
                           f"the file gives {len(data)}")
        super().__setstate__(state)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Stand-in for numpy's ``_reconstruct``: an empty array whose BUILD is checked."""
    if subtype is not _NDARRAY or shape != (0,):
        raise _Refused(f"_reconstruct({reprlib.repr(subtype)}, {reprlib.repr(shape)}, ...) is "
                       f"not how numpy pickles an array")
    return _CheckedArray((0,), dtype=np.uint8)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """Stand-in for ``numpy.dtype``: plain number types only."""
    if not isinstance(spec, str) or spec not in _DTYPES:
        raise _Refused(f"dtype {reprlib.repr(spec)} is not a plain number type")
    return np.dtype(spec, align=bool(align), copy=True)


def _latin1_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for
    bytes (always as latin1); any other codec is refused."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refused(f"_codecs.encode with encoding {reprlib.repr(encoding)} is not how "
                       f"pickle stores bytes")
    return obj.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``, which protocol-2 pickles written by Python 3 call with no
    arguments for ``b""``; any argument (``bytes(10**12)``) is refused."""
    if args:
        raise _Refused(f"bytes{reprlib.repr(args)} is not how pickle stores bytes")
    return b""


#: The only globals a CIFAR batch may name, each resolved to a checked stand-in: numpy's array
#: reconstruction (under its numpy 1 and numpy 2 module names) and bytes in protocol 2.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}

#: Opcodes a CIFAR batch needs; the rest (INST, OBJ, NEWOBJ, EXT*, PERSID, buffers, ...) can
#: build objects other than through the stand-ins, and are refused.
_ALLOWED_OPCODES = frozenset((
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2",
    "TUPLE3", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
    "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
))
_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_opcodes(blob: bytes) -> None:
    """Walk the pickle's opcodes without building anything: the unpickler allocates a declared
    length, or a memo as large as a declared index, before checking them against the data.
    ``pickletools.genops`` raises ValueError for a counted length past the end of the file;
    here only allowed opcodes pass, and memo indices stay below the number of opcodes so far."""
    for count, (op, arg, pos) in enumerate(pickletools.genops(blob)):
        if op.name not in _ALLOWED_OPCODES:
            raise _Refused(f"opcode {op.name} at byte {pos} is not used by CIFAR batches")
        if op.name in _PUT_OPCODES and not (isinstance(arg, int) and 0 <= arg <= count):
            raise _Refused(f"memo index {arg} at byte {pos} is larger than the pickle")
        if op.name == "FRAME" and arg > len(blob) - pos:
            raise ValueError(f"frame of {arg} bytes at byte {pos} runs past the end")


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED_GLOBALS``; any other global aborts the load before it is used."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetFormatError(f"refusing to unpickle {module}.{name} from {self._source}: "
                                     f"not a CIFAR batch") from None


def _unpickle(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """Load one pickle (at most ``max_bytes``, default MAX_PICKLE_BYTES) with the restricted
    unpickler; errors name the file."""
    limit = MAX_PICKLE_BYTES if max_bytes is None else max_bytes
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        blob = f.read(min(size, limit) + 1)  # read() would allocate its argument up front
    if len(blob) > limit:
        raise DatasetFormatError(f"{path} is larger than the {limit} bytes a CIFAR batch may "
                                 f"be; not read")
    try:
        _check_opcodes(blob)
        obj = _RestrictedUnpickler(io.BytesIO(blob), path).load()
    except DatasetFormatError:
        raise
    except _Refused as e:
        raise DatasetFormatError(f"refusing to unpickle {path}: {e}; not a CIFAR batch") from e
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
        raise DatasetFormatError(f"{path} is not a CIFAR batch: keys {reprlib.repr(list(batch))}, "
                                 f"expected 'data' and 'labels'")
    data = batch["data"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != _ROW):
        shape = getattr(data, "shape", None)
        raise DatasetFormatError(f"{path}: 'data' must be a uint8 array of shape (N, {_ROW}); "
                                 f"got {type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    data = data.view(np.ndarray)
    labels = _labels(path, batch["labels"])
    if labels.shape[0] != data.shape[0]:
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(f"{path}: labels must lie in 0..9; "
                                 f"got {labels.min()}..{labels.max()}")
    return data, labels


def _labels(path: Path, raw: Any) -> np.ndarray:
    """The labels (a list of ints, or a 1-d integer array) as int64; anything else, including
    ints beyond int64 and ragged nested lists, is a DatasetFormatError."""
    if isinstance(raw, list) and all(type(v) is int for v in raw):
        if raw and not -(2**63) <= min(raw) <= max(raw) < 2**63:
            raise DatasetFormatError(f"{path}: labels must lie in 0..9; "
                                     f"got {min(raw)}..{max(raw)}")
        return np.array(raw, dtype=np.int64).reshape(len(raw))
    if (isinstance(raw, np.ndarray) and raw.ndim == 1
            and (raw.size == 0 or np.issubdtype(raw.dtype, np.integer))):
        return raw.view(np.ndarray).astype(np.int64)
    what = (f"dtype {raw.dtype} shape {raw.shape}" if isinstance(raw, np.ndarray)
            else f"{type(raw).__name__} {reprlib.repr(raw)}")
    raise DatasetFormatError(f"{path}: 'labels' must be a list of ints; got {what}")


def _read_classes(folder: Path) -> tuple[str, ...]:
    """Class names from ``batches.meta`` if present, else the standard ten."""
    path = folder / META_FILE
    if not path.exists():
        return CIFAR10_CLASSES
    names = _unpickle(path).get("label_names")
    if (not isinstance(names, list) or len(names) != 10
            or not all(isinstance(n, (str, bytes)) for n in names)):
        raise DatasetFormatError(f"{path}: 'label_names' must list 10 class names; "
                                 f"got {reprlib.repr(names)}")
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
