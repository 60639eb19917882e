"""The synthetic dataset: deterministic, shared class patterns, separable (even augmented)."""

import torch

from netshrink.bench.data import DeviceLoader, load_dataset, synthetic


def _nearest_mean_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                           test_y: torch.Tensor, num_classes: int) -> float:
    flat = train_x.flatten(1).float()
    means = torch.stack([flat[train_y == k].mean(0) for k in range(num_classes)])
    predicted = torch.cdist(test_x.flatten(1).float(), means).argmin(1)
    return (predicted == test_y).float().mean().item()


def test_deterministic_and_splits_differ():
    a, b = synthetic("train", 200, seed=3), synthetic("train", 200, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.dtype == torch.uint8 and a.images.shape == (200, 3, 32, 32)
    test = synthetic("test", 200, seed=3)
    assert not torch.equal(a.images, test.images)
    assert a.mean == test.mean and a.std == test.std  # same generating distribution
    assert not torch.equal(a.images, synthetic("train", 200, seed=4).images)
    assert torch.bincount(a.labels, minlength=10).tolist() == [20] * 10


def test_nearest_class_mean_separates_the_classes():
    train, test = synthetic("train", 500, seed=0), synthetic("test", 300, seed=0)
    acc = _nearest_mean_accuracy(train.images, train.labels, test.images, test.labels, 10)
    assert acc > 0.9
    # a different pattern seed means different classes: the train means no longer fit
    other = synthetic("test", 300, seed=1)
    assert _nearest_mean_accuracy(train.images, train.labels, other.images, other.labels,
                                  10) < 0.5


def test_separable_after_crop_and_flip_augmentation():
    train, test = synthetic("train", 512, seed=0), synthetic("test", 200, seed=0)
    loader = DeviceLoader(train, 128, device="cpu", train=True)
    xs, ys = zip(*loader, strict=True)
    eval_x, eval_y = next(iter(DeviceLoader(test, 200, device="cpu", train=False)))
    assert _nearest_mean_accuracy(torch.cat(xs), torch.cat(ys), eval_x, eval_y, 10) > 0.9


def test_small_mnist_like_variant_and_registry():
    data = synthetic("train", 30, num_classes=3, size=12, channels=1, seed=0)
    assert data.images.shape == (30, 1, 12, 12) and data.num_classes == 3
    assert len(data.mean) == 1 and data.classes == ("class0", "class1", "class2")
    assert len(load_dataset("synthetic", "test", "/nonexistent")) == 512
