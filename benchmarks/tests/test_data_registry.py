"""Data root resolution, the dataset registry, ImageData validation."""

from pathlib import Path

import pytest
import torch

from netshrink.bench.data import ImageData, list_datasets, load_dataset, resolve_data_root


def test_resolve_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NETSHRINK_DATA", raising=False)
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "netshrink" / "data"
    monkeypatch.setenv("NETSHRINK_DATA", "")  # empty counts as unset
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "netshrink" / "data"
    monkeypatch.setenv("NETSHRINK_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root("~/x") == tmp_path / "home" / "x"


def test_list_datasets():
    assert list_datasets() == ["cifar10", "mnist", "synthetic"]


def test_unknown_name_and_split_are_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*cifar10, mnist, synthetic"):
        load_dataset("imagenet", "train", tmp_path)
    with pytest.raises(ValueError, match=r"split='val'.*'train', 'test'"):
        load_dataset("synthetic", "val", tmp_path)
    with pytest.raises(ValueError, match=r"mnist_split='half'.*'from-test'"):
        load_dataset("mnist", "train", tmp_path, mnist_split="half")


def _image_data(**overrides) -> ImageData:
    fields = dict(name="t", images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
                  labels=torch.tensor([0, 1, 2, 1]), num_classes=3, mean=(0.5,) * 3,
                  std=(0.25,) * 3, classes=("a", "b", "c"))
    fields.update(overrides)
    return ImageData(**fields)


def test_image_data_len_to_and_shape():
    data = _image_data()
    assert len(data) == 4 and data.image_shape == (3, 8, 8)
    moved = data.to("cpu")
    assert moved is not data and moved.name == "t" and torch.equal(moved.labels, data.labels)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"images": torch.zeros(4, 3, 8, 8)}, "uint8"),
    ({"labels": torch.tensor([0, 1, 2], dtype=torch.int64)}, "N=4"),
    ({"labels": torch.tensor([0, 1, 2, 3])}, r"0\.\.2"),
    ({"mean": (0.5,)}, "3 values"),
    ({"std": (0.0, 1.0, 1.0)}, "positive"),
    ({"classes": ("a",)}, "num_classes=3"),
])
def test_image_data_rejects_bad_fields(overrides: dict, message: str):
    with pytest.raises(ValueError, match=message):
        _image_data(**overrides)
