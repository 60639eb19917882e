"""DeviceLoader: exact augmentation, DDP rank semantics, determinism, epoch coverage."""

import pytest
import torch
import torch.nn.functional as F

from netshrink.bench.data import DeviceLoader, ImageData


def _data(n: int, *, name: str = "cifar10", channels: int = 3, size: int = 32,
          seed: int = 0) -> ImageData:
    """Random images whose label is their index, so every batch says which samples it holds."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return ImageData(name=name, images=images, labels=torch.arange(n), num_classes=n,
                     mean=tuple(0.3 + 0.1 * c for c in range(channels)),
                     std=tuple(0.2 + 0.05 * c for c in range(channels)),
                     classes=tuple(str(i) for i in range(n)))


def _raw(x: torch.Tensor, data: ImageData) -> torch.Tensor:
    """Undo the normalisation: back to the uint8 pixels (exact, rounding error << 0.5)."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    pixels = (x * std + mean) * 255
    assert (pixels - pixels.round()).abs().max() < 1e-3
    return pixels.round().to(torch.uint8)


def _epoch(loader: DeviceLoader, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if epoch is not None:
        loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    if not batches:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _find_crop(out: torch.Tensor, image: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) whose explicit crop of the zero-padded image equals ``out``."""
    padded = F.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    found = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = padded[:, top:top + h, left:left + w]
            for flipped in (False, True):
                if torch.equal(crop.flip(-1) if flipped else crop, out):
                    found.append((top, left, flipped))
    return found


def test_cifar_augmentation_is_a_padded_crop_with_flips():
    data = _data(64)
    loader = DeviceLoader(data, 64, device="cpu", train=True, seed=1)
    params = []
    for epoch in range(5):
        x, y = _epoch(loader, epoch)
        assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32) and y.dtype == torch.int64
        pixels = _raw(x, data)
        for k in range(64):
            matches = _find_crop(pixels[k], data.images[y[k]], pad=4)
            assert len(matches) == 1, f"sample {k} is not exactly one crop/flip of its image"
            params.append(matches[0])
    tops, lefts, flips = zip(*params, strict=True)
    assert set(tops) == set(range(9)) and set(lefts) == set(range(9))  # the full +-4 range
    assert 0.35 < sum(flips) / len(flips) < 0.65
    assert any(t != 4 or le != 4 for t, le, _ in params)  # not just the centre crop


def test_normalisation_uses_dataset_mean_and_std():
    data = _data(8)
    x, y = _epoch(DeviceLoader(data, 8, device="cpu", train=False))
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    expected = (data.images[y].float() / 255 - mean) / std
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_mnist_default_no_flip_no_crop_and_optional_padding():
    data = _data(40, name="mnist", channels=1, size=28)
    x, y = _epoch(DeviceLoader(data, 20, device="cpu", train=True))
    assert sorted(y.tolist()) == list(range(40)) and y.tolist() != list(range(40))
    assert torch.equal(_raw(x, data), data.images[y])  # shuffled, untouched pixels
    loader = DeviceLoader(data, 40, device="cpu", train=True, crop_padding=2)
    x, y = _epoch(loader)
    crops = [_find_crop(p, data.images[i], pad=2) for p, i in zip(_raw(x, data), y, strict=True)]
    assert all(len(c) == 1 and not c[0][2] for c in crops)  # a crop, never flipped
    assert len({c[0][:2] for c in crops}) > 5


def test_channels_last_gives_the_same_values():
    data = _data(30)
    a = DeviceLoader(data, 10, device="cpu", train=True, seed=4)
    b = DeviceLoader(data, 10, device="cpu", train=True, seed=4, channels_last=True)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xe, _ = next(iter(DeviceLoader(data, 10, device="cpu", train=False, channels_last=True)))
    assert xe.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("n", "batch", "world", "drop_last"), [
    (100, 20, 2, True), (105, 20, 2, False), (96, 24, 4, True), (107, 24, 4, False)])
def test_union_of_ranks_equals_one_process(n: int, batch: int, world: int, drop_last: bool):
    data = _data(n)
    single = DeviceLoader(data, batch, device="cpu", train=True, seed=7, drop_last=drop_last)
    ranks = [DeviceLoader(data, batch, device="cpu", train=True, seed=7, rank=r,
                          world_size=world, drop_last=drop_last) for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)  # DDP: every rank takes the same steps
    for epoch in (0, 3):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        per_rank = [list(r) for r in ranks]
        for i, (x, y) in enumerate(single):
            assert x.shape[0] == y.shape[0] == (batch if (i + 1) * batch <= n else n % batch)
            assert torch.equal(torch.cat([p[i][0] for p in per_rank]), x)
            assert torch.equal(torch.cat([p[i][1] for p in per_rank]), y)
        assert sum(r.shard_size for r in ranks) == single.shard_size


def test_same_seed_and_epoch_reproduce_and_resume():
    data = _data(50)
    run = DeviceLoader(data, 10, device="cpu", train=True, seed=3)
    epochs = [_epoch(run, e) for e in range(3)]
    resumed = DeviceLoader(data, 10, device="cpu", train=True, seed=3)
    resumed.set_epoch(2)  # a fresh process resuming at the start of epoch 2
    x, y = _epoch(resumed)
    assert torch.equal(x, epochs[2][0]) and torch.equal(y, epochs[2][1])
    again_x, again_y = _epoch(run, 0)
    assert torch.equal(again_x, epochs[0][0]) and torch.equal(again_y, epochs[0][1])
    assert not torch.equal(epochs[0][1], epochs[1][1])  # a new order each epoch
    other_seed = _epoch(DeviceLoader(data, 10, device="cpu", train=True, seed=4), 0)
    assert not torch.equal(other_seed[1], epochs[0][1])


@pytest.mark.parametrize(("drop_last", "expected"), [(True, 40), (False, 47)])
def test_each_training_sample_at_most_once_per_epoch(drop_last: bool, expected: int):
    data = _data(47)
    loader = DeviceLoader(data, 10, device="cpu", train=True, drop_last=drop_last)
    for epoch in range(3):
        _, y = _epoch(loader, epoch)
        assert len(y) == expected == loader.shard_size and len(set(y.tolist())) == expected


def test_training_remainder_smaller_than_world_is_dropped_on_every_rank():
    data = _data(41)  # 2 full batches of 20 and 1 left over: fewer than 2 ranks
    ranks = [DeviceLoader(data, 20, device="cpu", train=True, drop_last=False, rank=r,
                          world_size=2) for r in range(2)]
    assert [len(r) for r in ranks] == [2, 2] and [r.shard_size for r in ranks] == [20, 20]


@pytest.mark.parametrize(("n", "batch", "world"), [(103, 20, 4), (10, 4, 2), (3, 8, 4)])
def test_eval_covers_every_sample_exactly_once_across_ranks(n: int, batch: int, world: int):
    data = _data(n)
    seen, total = [], 0
    for rank in range(world):
        loader = DeviceLoader(data, batch, device="cpu", train=False, rank=rank,
                              world_size=world)
        x, y = _epoch(loader, epoch=5)
        assert len(y) == loader.shard_size
        if len(y):
            assert torch.equal(_raw(x, data), data.images[y])  # no augmentation
        seen += y.tolist()
        total += loader.shard_size
    assert sorted(seen) == list(range(n)) and total == n
    single = _epoch(DeviceLoader(data, batch, device="cpu", train=False))[1]
    assert single.tolist() == list(range(n))  # fixed order


def test_eval_drop_last_drops_only_the_partial_batch():
    loader = DeviceLoader(_data(25), 10, device="cpu", train=False, drop_last=True)
    assert len(loader) == 2 and _epoch(loader)[1].tolist() == list(range(20))


def test_argument_errors():
    data = _data(20)
    with pytest.raises(ValueError, match="batch_size=10 .* divisible by world_size=3"):
        DeviceLoader(data, 10, device="cpu", train=True, world_size=3)
    with pytest.raises(ValueError, match="rank=2"):
        DeviceLoader(data, 10, device="cpu", train=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=0"):
        DeviceLoader(data, 0, device="cpu", train=True)
    with pytest.raises(ValueError, match="epoch=-1"):
        DeviceLoader(data, 10, device="cpu", train=True).set_epoch(-1)
    with pytest.raises(ValueError, match="20 samples, fewer than one global batch of 32"):
        DeviceLoader(data, 32, device="cpu", train=True)  # an empty epoch is refused
    assert len(DeviceLoader(data, 32, device="cpu", train=True, drop_last=False)) == 1


def test_batch_sizes_and_len():
    data = _data(45)
    train = DeviceLoader(data, 20, device="cpu", train=True, rank=1, world_size=2)
    assert len(train) == 2 and [x.shape[0] for x, _ in train] == [10, 10]
    test = DeviceLoader(data, 20, device="cpu", train=False, rank=1, world_size=2)
    assert [x.shape[0] for x, _ in test] == [10, 10, 2] and test.shard_size == 22
