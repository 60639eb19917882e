"""DeviceLoader: the whole dataset as one uint8 tensor on the training device, with batches
gathered, augmented and normalised there in a few batched tensor ops (no DataLoader, no
per-sample Python), so a small-image epoch costs well under a second on a GPU.

Order and augmentation are pure functions of (seed, epoch) and never of rank or world size, so:

- global batch i of an epoch is ``perm[i*B:(i+1)*B]``, the same on every rank; rank r takes the
  contiguous slice ``[r*B/W, (r+1)*B/W)`` of it, and the augmentation (crop offsets, flips) of
  each position is drawn for the whole epoch, so the union over ranks of a W-rank epoch is
  exactly what one process produces (same images, same augmentation, bit for bit);
- resuming at the start of epoch e (``set_epoch(e)``) reproduces an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from netshrink.bench.data._seed import derive_seed
from netshrink.bench.data.dataset import ImageData
from netshrink.core import check_int

# (crop padding, horizontal flip) used when augmenting, by dataset name; others get CIFAR's
AUGMENT_DEFAULTS: dict[str, tuple[int, bool]] = {"mnist": (0, False)}
_DEFAULT_AUGMENT = (4, True)


def _rank_slices(n: int, batch_size: int, world_size: int, rank: int, *, drop_last: bool,
                 train: bool) -> list[tuple[int, int]]:
    """[start, stop) epoch positions of each batch this rank yields.

    Full global batches are cut into W equal contiguous slices. A final partial batch (kept
    unless ``drop_last``) is split into W contiguous near-equal parts; for training it is
    dropped on every rank when it has fewer samples than ranks, so that all ranks take the same
    number of steps (an empty share would desynchronise DDP); for evaluation a rank with an
    empty share simply yields one batch fewer.
    """
    local = batch_size // world_size
    full = n // batch_size
    slices = [(i * batch_size + rank * local, i * batch_size + (rank + 1) * local)
              for i in range(full)]
    rest = n - full * batch_size
    if rest and not drop_last and not (train and rest < world_size):
        base, extra = divmod(rest, world_size)
        start = full * batch_size + rank * base + min(rank, extra)
        size = base + (1 if rank < extra else 0)
        if size:
            slices.append((start, start + size))
    return slices


class DeviceLoader:
    """Batches ``(x, y)`` of ``data`` on ``device``: x float32 (b, C, H, W) normalised with the
    dataset's mean/std, y int64 (b,), where b = batch_size / world_size.

    ``batch_size`` is the GLOBAL batch size (it must divide by ``world_size``). Training
    (``train=True``) visits a fresh permutation each epoch (call ``set_epoch``), drops the last
    partial batch by default and augments by default: random crop with zero padding (4 for
    CIFAR-like data, none for MNIST; ``crop_padding``) and horizontal flip with p=0.5 (not for
    MNIST; ``flip``). Evaluation walks the data in order, unaugmented; each rank takes a
    disjoint share (``shard_size`` samples) and nothing is dropped unless ``drop_last``, so
    summing per-rank counts (all-reduce) covers every sample exactly once. Eval ranks may yield
    one batch fewer than others: do not run per-batch collectives in evaluation.
    """

    def __init__(self, data: ImageData, batch_size: int, *, device: torch.device | str,
                 train: bool, augment: bool | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool | None = None, channels_last: bool = False,
                 crop_padding: int | None = None, flip: bool | None = None) -> None:
        check_int("batch_size", batch_size, min_value=1)
        check_int("world_size", world_size, min_value=1)
        check_int("rank", rank, min_value=0, max_value=world_size - 1)
        check_int("seed", seed)
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} (the global batch) must be divisible by "
                             f"world_size={world_size}")
        default_pad, default_flip = AUGMENT_DEFAULTS.get(data.name, _DEFAULT_AUGMENT)
        pad = default_pad if crop_padding is None else crop_padding
        check_int("crop_padding", pad, min_value=0)
        self.device = torch.device(device)
        self.train = bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.crop_padding = pad if self.augment else 0
        self.flip = (default_flip if flip is None else bool(flip)) and self.augment
        self.channels_last = channels_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batch_size, self.local_batch_size = batch_size, batch_size // world_size
        self.num_samples, self.num_classes, self.data_name = len(data), data.num_classes, data.name
        self.epoch = 0
        self._slices = _rank_slices(len(data), batch_size, world_size, rank,
                                    drop_last=self.drop_last, train=self.train)
        if self.train and not self._slices:
            raise ValueError(f"{data.name} has {len(data)} samples, fewer than one global batch "
                             f"of {batch_size} with drop_last: an epoch would be empty")

        images = data.images.to(self.device).contiguous()  # take() indexes the logical layout
        n, c, h, w = images.shape
        p = self.crop_padding
        if p:  # pad the whole set once: a crop is then a plain gather
            padded = images.new_zeros(n, c, h + 2 * p, w + 2 * p)
            padded[:, :, p:p + h, p:p + w] = images
            images = padded
        self._images = images
        self._labels = data.labels.to(self.device)
        std = torch.tensor(data.std, dtype=torch.float32)
        mean = torch.tensor(data.mean, dtype=torch.float32)
        # (x / 255 - mean) / std as two separate (unfused) ops: bitwise identical for any batch
        self._scale = (1.0 / (255.0 * std)).view(1, c, 1, 1).to(self.device)
        self._shift = (mean / std).view(1, c, 1, 1).to(self.device)
        self._arange_h = torch.arange(h, device=self.device)
        self._arange_w = torch.arange(w, device=self.device)
        self._channel_offsets = torch.arange(c, device=self.device) * self._images.stride(1)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        check_int("epoch", epoch, min_value=0)
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank yields per epoch (never 0 in training: that is refused up front)."""
        return len(self._slices)

    @property
    def shard_size(self) -> int:
        """Samples this rank yields per epoch (sum over ranks = the epoch's sample count)."""
        return sum(stop - start for start, stop in self._slices)

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                 torch.Tensor | None]:
        """(order, row_offsets, col_offsets) for every epoch position, on the device, drawn on
        the CPU from one generator seeded by (seed, epoch).

        ``order`` maps positions to sample indices (None in evaluation: position = index). With
        augmentation, ``row_offsets`` (n, H) holds the flat storage offset of each output row
        (sample and crop row) and ``col_offsets`` (n, W) that of each output column (crop column,
        mirrored when flipped), so a batch is one broadcast add and one ``take``; else both None.
        """
        n = self.num_samples
        g = torch.Generator().manual_seed(derive_seed("DeviceLoader", self.seed, epoch))
        order = torch.randperm(n, generator=g) if self.train else None
        if not self.augment:
            return (None if order is None else order.to(self.device)), None, None
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, n), generator=g)
        flips = (torch.rand(n, generator=g) < 0.5 if self.flip
                 else torch.zeros(n, dtype=torch.bool))
        sample = order if order is not None else torch.arange(n)
        plan = torch.cat([offsets, flips.long().view(1, n), sample.view(1, n)])
        plan = plan.to(self.device)  # one host-to-device copy per epoch
        top, left, flip, sample = plan[0], plan[1], plan[2].bool(), plan[3]
        stride_n, _, stride_h, stride_w = self._images.stride()
        rows = top[:, None] + self._arange_h[None, :]
        cols = left[:, None] + torch.where(flip[:, None], self._arange_w.flip(0)[None, :],
                                           self._arange_w[None, :])
        row_offsets = sample[:, None] * stride_n + rows * stride_h
        return (None if order is None else sample), row_offsets, cols * stride_w

    def _gather(self, row_offsets: torch.Tensor, col_offsets: torch.Tensor) -> torch.Tensor:
        """Crop-and-flip of a batch as one gather (``take``) from the (padded) image storage."""
        if self.channels_last:  # gather as (b, H, W, C), then view as NCHW channels-last
            flat = (row_offsets[:, :, None, None]
                    + (col_offsets[:, None, :, None] + self._channel_offsets.view(1, 1, 1, -1)))
            return self._images.take(flat).permute(0, 3, 1, 2)
        flat = (row_offsets[:, None, :, None]
                + (col_offsets[:, None, None, :] + self._channel_offsets.view(1, -1, 1, 1)))
        return self._images.take(flat)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        x = x.to(dtype=torch.float32, memory_format=fmt)
        return x.mul_(self._scale).sub_(self._shift)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, row_offsets, col_offsets = self._epoch_plan(self.epoch)
        for start, stop in self._slices:
            if row_offsets is not None and col_offsets is not None:
                x = self._gather(row_offsets[start:stop], col_offsets[start:stop])
                y = (self._labels[order[start:stop]] if order is not None
                     else self._labels[start:stop])
            elif order is not None:
                index = order[start:stop]
                x, y = self._images.index_select(0, index), self._labels.index_select(0, index)
            else:
                x, y = self._images[start:stop], self._labels[start:stop]
            yield self._normalise(x), y
