"""Profiles: the same table at three sizes. ``full`` is the published schedule (a GPU and the
full dataset), ``quick`` runs ``--table all`` in 26-58 minutes on a 2-core CPU (reduced width
and epochs; `make reproduce`), ``smoke`` is CI's few-minute check."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    width: float  # multiplies the width of netshrink's own models
    train_limit: int | None = None  # use only the first N training images
    test_limit: int | None = None
    # Train in the channels_last memory format: 1.3-1.5x faster training steps for nin and
    # resnet18_cifar on a 2-core CPU (torch 2.14), and the usual choice for convs on GPUs.
    channels_last: bool = True


PROFILE_SETTINGS = {
    "full": Profile("full", width=1.0),
    # At most 5,120 / 2,048 images, so a full CIFAR-10 download takes no longer than the
    # 5,085 / 1,017-image subset CI has (which it uses whole).
    # Width 0.25: the 62 rows of micronet, bits and prune train in under 15 minutes on 2 cores
    # (at width 0.5 micronet alone took 18 minutes).
    "quick": Profile("quick", width=0.25, train_limit=5120, test_limit=2048),
    "smoke": Profile("smoke", width=0.25, train_limit=2048, test_limit=512),
}
