"""The in-memory dataset type shared by every loader, and the name -> loader registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from netshrink.core import Registry, check_choice

SPLITS = ("train", "test")
MNIST_SPLITS = ("auto", "official", "from-test")


class DatasetFormatError(ValueError):
    """A dataset file exists but is not what its format promises (corrupt, truncated, unsafe)."""


class PartialDatasetWarning(UserWarning):
    """The data found is usable but not the full official set (a subset, or a split carved from
    the test set): fine for tests and smoke runs, not for reported accuracy."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """A whole image-classification split in memory.

    ``images`` is uint8 (N, C, H, W) and ``labels`` int64 (N,): kept compact so the whole set can
    live on the training device (see DeviceLoader); ``mean``/``std`` are per-channel in [0, 1]
    units for normalisation.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        im, lab = self.images, self.labels
        if im.dtype != torch.uint8 or im.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W); got {im.dtype} {tuple(im.shape)}")
        if lab.dtype != torch.int64 or lab.dim() != 1 or lab.shape[0] != im.shape[0]:
            raise ValueError(f"labels must be int64 (N,) with N={im.shape[0]}; "
                             f"got {lab.dtype} {tuple(lab.shape)}")
        if lab.device != im.device:
            raise ValueError(f"images on {im.device} but labels on {lab.device}")
        channels = im.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per channel); "
                             f"got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive; got {self.std}")
        if len(self.classes) != self.num_classes:
            raise ValueError(f"classes has {len(self.classes)} names; "
                             f"num_classes={self.num_classes}")
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}; "
                             f"got {int(lab.min())}..{int(lab.max())}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def to(self, device: torch.device | str) -> ImageData:
        """A new ImageData with its tensors on ``device`` (shared, not copied, if already there)."""
        return dataclasses.replace(self, images=self.images.to(device),
                                   labels=self.labels.to(device))


@dataclass(frozen=True)
class LoadOptions:
    """Options passed to every registered loader; each uses the ones that concern it."""

    download: bool = False
    mnist_split: str = "auto"


DatasetLoader = Callable[[str, Path, LoadOptions], ImageData]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator adding ``fn(split, root, options) -> ImageData`` under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, sorted."""
    return DATASETS.names()


def load_dataset(name: str, split: str, root: str | Path, *, download: bool = False,
                 mnist_split: str = "auto") -> ImageData:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` from data root ``root``.

    ``download=True`` fetches a missing dataset into ``root``; ``mnist_split`` chooses where
    MNIST's train/test come from (see ``netshrink.bench.data.mnist``).
    """
    loader = DATASETS.get(name)  # ValueError naming the known datasets
    check_choice("split", split, SPLITS)
    check_choice("mnist_split", mnist_split, MNIST_SPLITS)
    return loader(split, Path(root).expanduser(),
                  LoadOptions(download=download, mnist_split=mnist_split))
