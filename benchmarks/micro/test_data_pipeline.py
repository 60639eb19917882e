"""How much of a training epoch is spent outside the model: netshrink's on-device pipeline
(through the real Trainer) against a plain torchvision DataLoader + transforms loop, on the same
model, batch size and images, in one run.

    .venv/bin/python -m pytest benchmarks/micro/test_data_pipeline.py --benchmark-only -s

Each case trains ``STEPS`` steps of float nin (width 1) at batch 128 on CPU, using the CIFAR-10
subset from $NETSHRINK_DATA (or ../shared/datasets). Reported per case in the benchmark's
extra_info: images/s and the share of wall time outside forward/backward/step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netshrink.bench.data import ImageData, load_dataset
from netshrink.bench.engine import TrainConfig, Trainer
from netshrink.models import create_model

STEPS = int(os.environ.get("NETSHRINK_BENCH_STEPS", "8"))
BATCH = 128


def _data_root() -> Path:
    env = os.environ.get("NETSHRINK_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


@pytest.fixture(scope="module")
def cifar() -> tuple[ImageData, ImageData]:
    root = _data_root()
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no CIFAR-10 under {root}; set NETSHRINK_DATA")
    with pytest.warns(UserWarning):
        train = load_dataset("cifar10", "train", root)
    test = load_dataset("cifar10", "test", root)
    n = STEPS * BATCH
    train = ImageData(name=train.name, images=train.images[:n], labels=train.labels[:n],
                      num_classes=train.num_classes, mean=train.mean, std=train.std,
                      classes=train.classes)
    return train, test


def _report(benchmark, name: str, images: int, seconds: float, model_seconds: float) -> None:
    outside = max(seconds - model_seconds, 0.0) / seconds
    benchmark.extra_info.update({"pipeline": name, "images_per_second": images / seconds,
                                 "outside_model_fraction": outside, "seconds": seconds})
    print(f"\n{name}: {images / seconds:.1f} images/s, {100 * outside:.2f}% of the epoch "
          f"outside the model ({seconds:.1f} s for {images} images)")


def test_netshrink_device_pipeline(benchmark, cifar, tmp_path):
    train, test = cifar
    test = ImageData(name=test.name, images=test.images[:BATCH], labels=test.labels[:BATCH],
                     num_classes=test.num_classes, mean=test.mean, std=test.std,
                     classes=test.classes)
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05)

    def run():
        torch.manual_seed(0)
        trainer = Trainer(create_model("nin"), train, test, config, tmp_path / str(time.time()),
                          show_progress=False, log_every=1)
        return trainer.fit().final

    record = benchmark.pedantic(run, rounds=1, iterations=1)
    _report(benchmark, "netshrink DeviceLoader + Trainer", record.images, record.seconds,
            record.model_seconds)
    assert record.images == STEPS * BATCH


@pytest.mark.parametrize("workers", [0, 2])
def test_torchvision_dataloader_pipeline(benchmark, cifar, workers):
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    train, _ = cifar
    arrays = train.images.permute(0, 2, 3, 1).numpy()
    labels = train.labels.tolist()
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(train.mean, train.std)])

    class _Images(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(np.ascontiguousarray(arrays[i]))), labels[i]

    def run():
        torch.manual_seed(0)
        model = create_model("nin").train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DataLoader(_Images(), batch_size=BATCH, shuffle=True, drop_last=True,
                            num_workers=workers, persistent_workers=False)
        model_seconds = 0.0
        images = 0
        start = time.perf_counter()
        for x, y in loader:
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model_seconds += time.perf_counter() - t0
            images += y.numel()
        return images, time.perf_counter() - start, model_seconds

    images, seconds, model_seconds = benchmark.pedantic(run, rounds=1, iterations=1)
    _report(benchmark, f"torchvision DataLoader (num_workers={workers})", images, seconds,
            model_seconds)
    assert images == STEPS * BATCH
