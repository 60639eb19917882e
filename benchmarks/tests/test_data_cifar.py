"""CIFAR-10 reader: exact round trip of the standard format, restricted unpickling, errors."""

import _codecs
import os
import pickle
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
    load_cifar10,
    load_dataset,
    write_fake_cifar10,
)
from netshrink.bench.data import cifar as cifar_module

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

SHARED = Path("/work/shared/datasets")
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _planes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n images as explicit (R, G, B) 32x32 planes, shape (n, 3, 32, 32)."""
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _write_batch(path: Path, planes: np.ndarray, labels: list[int], **extra) -> None:
    # the documented row layout, built by hand: R plane, then G, then B, each row-major
    rows = np.stack([np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()])
                     for img in planes]) if len(planes) else np.zeros((0, 3072), np.uint8)
    batch = {"batch_label": "x", "labels": labels, "data": rows,
             "filenames": [f"{i}.png" for i in range(len(labels))], **extra}
    path.write_bytes(pickle.dumps(batch))


def _write_dir(root: Path, per_batch: int = 4, test: int = 3, seed: int = 0,
               names: list[str] | None = None) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    if names is not None:
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    out = {}
    for split, files, count in (("train", TRAIN, per_batch), ("test", ["test_batch"], test)):
        imgs, labs = [], []
        for f in files:
            planes = _planes(rng, count)
            labels = [int(v) for v in rng.integers(0, 10, count)]
            _write_batch(folder / f, planes, labels)
            imgs.append(planes)
            labs += labels
        out[split] = (np.concatenate(imgs), labs)
    return out


def _load(root: Path, split: str = "train"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        return load_cifar10(root, split)


def test_round_trip_is_exact_with_rgb_planes(tmp_path: Path):
    names = [f"name{i}" for i in range(10)]
    written = _write_dir(tmp_path, per_batch=4, test=3, names=names)
    for split in ("train", "test"):
        data = _load(tmp_path, split)
        planes, labels = written[split]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(labels), 3, 32, 32)
        assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels
        assert np.array_equal(data.images.numpy(), planes)  # order: batch 1..5, row order
        # channel 0 is the first 1024 bytes (R plane), row-major
        assert data.images[0, 0, 0, 1].item() == planes[0, 0, 0, 1]
        assert data.images[1, 2, 31, 0].item() == planes[1, 2, 31, 0]
        assert data.classes == tuple(names) and data.num_classes == 10 and data.name == "cifar10"
        assert data.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-4)


def test_via_registry_and_fake_writer(tmp_path: Path):
    written = write_fake_cifar10(tmp_path, per_train_batch=3, test=2, seed=5)
    with pytest.warns(PartialDatasetWarning):
        data = load_dataset("cifar10", "test", tmp_path)
    assert np.array_equal(data.images.numpy(), written["test"][0])
    assert data.labels.tolist() == written["test"][1].tolist()
    assert data.classes[0] == "airplane"


def test_protocol2_pickle_with_numpy1_module_name_loads(tmp_path: Path):
    _write_dir(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    blob = pickle.dumps(pickle.loads(path.read_bytes()), protocol=2)
    assert b"numpy._core.multiarray" in blob  # written by numpy 2
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert len(_load(tmp_path, "test")) == 3


def test_subset_warning_says_how_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _write_dir(tmp_path, per_batch=4, test=3)
    with pytest.warns(PartialDatasetWarning, match=r"not the full set.*train split has 20 "
                                                    r"images.*50000"):
        load_cifar10(tmp_path, "train")
    with pytest.warns(PartialDatasetWarning, match="test split has 3 images"):
        load_cifar10(tmp_path, "test")
    monkeypatch.setitem(cifar_module.FULL_SIZES, "train", 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10(tmp_path, "train")  # a full-sized set: no warning


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsShell, _CallsEval])
@pytest.mark.parametrize("target", ["data_batch_3", "batches.meta"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, payload, target: str):
    _write_dir(tmp_path, names=[str(i) for i in range(10)])
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / target
    path.write_bytes(pickle.dumps({"data": payload(marker), "labels": [],
                                   "label_names": payload(marker)}))
    with pytest.raises(DatasetFormatError, match=r"refusing to unpickle \w+\.\w+ from .*"
                                                 + target + ": not a CIFAR batch"):
        _load(tmp_path, "train")
    assert not marker.exists()


def _corrupt(tmp_path: Path, mutate) -> Path:
    _write_dir(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    mutate(path)
    return path


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or truncated"),
    (lambda p: p.write_bytes(b""), "corrupt or truncated"),
    (lambda p: p.write_bytes(b"\x00garbage that is not a pickle"), "corrupt or truncated"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "holds a list"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)})),
     "expected 'data' and 'labels'"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3000), np.uint8),
                                           "labels": [0, 1]})), r"shape \(N, 3072\)"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.float32),
                                           "labels": [0, 1]})), "uint8"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                           "labels": [0]})), "2 images but 1 labels"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                           "labels": [0, 10]})), r"0\.\.9"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                           "labels": ["a", "b"]})), "list of ints"),
])
def test_corrupt_batch_errors_name_the_file(tmp_path: Path, mutate, message: str):
    path = _corrupt(tmp_path, mutate)
    with pytest.raises(DatasetFormatError, match=message) as info:
        _load(tmp_path, "train")
    assert str(path) in str(info.value)


def test_missing_folder_says_where_and_how(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", "train", tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "NETSHRINK_DATA" in message and "--data-dir" in message and "download=True" in message


def test_missing_batch_file_is_named(tmp_path: Path):
    _write_dir(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_4"):
        _load(tmp_path, "train")
    assert len(_load(tmp_path, "test")) == 3  # the test split does not need it


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(),
                    reason=f"shared CIFAR-10 subset not present at {SHARED}/cifar-10-batches-py")
def test_shared_cifar_subset_loads():
    with pytest.warns(PartialDatasetWarning, match="5085 images"):
        train = load_dataset("cifar10", "train", SHARED)
    with pytest.warns(PartialDatasetWarning, match="1017 images"):
        test = load_dataset("cifar10", "test", SHARED)
    assert len(train) == 5085 and len(test) == 1017
    assert train.images.shape == (5085, 3, 32, 32) and test.images.shape == (1017, 3, 32, 32)
    for part in (test.labels, *train.labels.split(1017)):  # each file: 83..120 per class
        counts = torch.bincount(part, minlength=10)
        assert len(counts) == 10 and counts.min() >= 83 and counts.max() <= 120
    # the well-known first labels of the original data_batch_1 and test_batch
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert train.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                             "horse", "ship", "truck")
    # real photos: per-channel means near the published CIFAR-10 statistics
    means = train.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(train.mean), atol=0.03)


# -- hostile pickles: nothing runs, nothing large is allocated, DatasetFormatError -----------

class _Reduces:
    """Pickles as ``fn(*args)`` (then ``BUILD state`` when given): how a hostile writer names
    an allowed global with arguments of its choosing."""

    def __init__(self, fn, args, state=None) -> None:
        self.value = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.value


def _raw(*ops: bytes) -> bytes:
    return b"".join(ops)


_P2 = pickle.PROTO + b"\x02"
_NDARRAY = pickle.GLOBAL + b"numpy\nndarray\n"
_HUGE_OBJECT_ARRAY = pickle.BININT + struct.pack("<i", 2**27) + pickle.TUPLE1 + \
    pickle.SHORT_BINUNICODE + b"\x01O" + pickle.TUPLE2  # args ((2**27,), 'O'): a 1 GiB array

HOSTILE = {
    # numpy's own reconstruct, asked for a 1 TiB array (before: a MemoryError at best)
    "reconstruct-huge-shape": (
        pickle.dumps({"data": _Reduces(_reconstruct, (np.ndarray, (2**40,), b"b")),
                      "labels": []}, protocol=2),
        r"_reconstruct\(.*\(1099511627776,\).*\) is not how numpy pickles an array"),
    # an object array of 2**27 slots, which numpy allocates and clears (1 GiB) before filling
    "setstate-object-array": (
        pickle.dumps({"data": _Reduces(_reconstruct, (np.ndarray, (0,), b"b"),
                                       (1, (2**27,), np.dtype(object), False, [])),
                      "labels": []}, protocol=2),
        "dtype 'O8' is not a plain number type"),
    "setstate-short-data": (
        pickle.dumps({"data": _Reduces(_reconstruct, (np.ndarray, (0,), b"b"),
                                       (1, (2**20, 3072), np.dtype(np.uint8), False, b"xyz")),
                      "labels": []}, protocol=2),
        r"needs 3221225472 bytes; the file gives 3"),
    # np.ndarray called directly (REDUCE) or through NEWOBJ with a 1 GiB shape
    "reduce-ndarray": (_raw(_P2, _NDARRAY, _HUGE_OBJECT_ARRAY, pickle.REDUCE, pickle.STOP),
                       "corrupt or truncated.*TypeError: '_NdarrayToken' object is not callable"),
    "newobj-ndarray": (_raw(_P2, _NDARRAY, _HUGE_OBJECT_ARRAY, pickle.NEWOBJ, pickle.STOP),
                       r"opcode NEWOBJ at byte \d+ is not used by CIFAR batches"),
    # a byte string declared 8 GiB long holding 2 bytes: the unpickler allocated 8 GiB first
    "binbytes8-huge-length": (_raw(pickle.PROTO + b"\x04", pickle.BINBYTES8,
                                   struct.pack("<Q", 2**33), b"xx", pickle.STOP),
                              "corrupt or truncated.*expected 8589934592 bytes"),
    # a memo slot 2**31: the unpickler grew its memo to 2**32 entries (32 GiB) first
    "memo-huge-index": (_raw(_P2, pickle.EMPTY_DICT, pickle.LONG_BINPUT,
                             struct.pack("<I", 2**31), pickle.STOP),
                        "memo index 2147483648 at byte 3 is larger than the pickle"),
    "codecs-other-than-latin1": (
        pickle.dumps({"data": _Reduces(_codecs.encode, ("abc", "rot13")), "labels": []},
                     protocol=2),
        "_codecs.encode with encoding 'rot13' is not how pickle stores bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pickle_is_refused_with_bounded_memory(tmp_path: Path, case: str):
    _write_dir(tmp_path)
    blob, message = HOSTILE[case]
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetFormatError, match=message) as info:
            _load(tmp_path, "train")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 16 * 2**20, f"peak {peak} bytes"


@pytest.mark.parametrize("protocol", [0, 2])
def test_malicious_pickle_in_old_protocols_is_refused(tmp_path: Path, protocol: int):
    _write_dir(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": _RunsShell(marker), "labels": []}, protocol=protocol))
    with pytest.raises(DatasetFormatError, match="refusing to unpickle") as info:
        _load(tmp_path, "test")
    assert str(path) in str(info.value) and not marker.exists()


def test_batch_larger_than_the_ceiling_is_not_read(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    _write_dir(tmp_path, per_batch=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    monkeypatch.setattr(cifar_module, "MAX_PICKLE_BYTES", path.stat().st_size - 1)
    with pytest.raises(DatasetFormatError, match=f"{path} is larger than the "
                                                 f"{path.stat().st_size - 1} bytes"):
        _load(tmp_path, "train")
    monkeypatch.setattr(cifar_module, "MAX_PICKLE_BYTES", path.stat().st_size)
    assert len(_load(tmp_path, "train")) == 20


@pytest.mark.parametrize(("labels", "message"), [
    ([[0, 1], [2]], "must be a list of ints; got list"),  # ragged: a bare ValueError before
    ([2**70, 0], r"labels must lie in 0\.\.9"),  # beyond int64
    ([True, False], "must be a list of ints"),
    ("01", "must be a list of ints; got str"),
])
def test_labels_of_the_wrong_kind_are_format_errors(tmp_path: Path, labels, message: str):
    _write_dir(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": labels}))
    with pytest.raises(DatasetFormatError, match=message) as info:
        _load(tmp_path, "train")
    assert str(path) in str(info.value)
