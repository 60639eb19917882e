"""netshrink.bench.data: datasets as in-memory uint8 tensors, and a loader that keeps them on
the training device.

``load_dataset(name, split, root)`` reads CIFAR-10 or MNIST from a torchvision-style data root
(``resolve_data_root``: --data-dir, $NETSHRINK_DATA, or ~/.cache/netshrink/data), optionally
downloading them, or makes a synthetic set; ``DeviceLoader`` batches, augments and normalises
on the device with DDP-exact semantics.
"""

from netshrink.bench.data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from netshrink.bench.data.dataset import (
    DATASETS,
    SPLITS,
    DatasetFormatError,
    ImageData,
    LoadOptions,
    PartialDatasetWarning,
    list_datasets,
    load_dataset,
    register_dataset,
)
from netshrink.bench.data.download import (
    ChecksumError,
    DownloadTooLargeError,
    UnsafeArchiveError,
    download_and_extract,
    download_url,
    extract_tar_safely,
)
from netshrink.bench.data.fake import write_fake_cifar10, write_fake_mnist
from netshrink.bench.data.loader import DeviceLoader
from netshrink.bench.data.mnist import MNIST_MEAN, MNIST_STD, load_mnist, read_idx
from netshrink.bench.data.root import DATA_ENV, resolve_data_root
from netshrink.bench.data.synthetic import synthetic

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "DATASETS", "DATA_ENV", "MNIST_MEAN", "MNIST_STD", "SPLITS",
    "ChecksumError", "DatasetFormatError", "DeviceLoader", "DownloadTooLargeError", "ImageData",
    "LoadOptions",
    "PartialDatasetWarning", "UnsafeArchiveError", "download_and_extract", "download_url",
    "extract_tar_safely", "list_datasets", "load_cifar10", "load_dataset", "load_mnist",
    "read_idx", "register_dataset", "resolve_data_root", "synthetic", "write_fake_cifar10",
    "write_fake_mnist",
]
