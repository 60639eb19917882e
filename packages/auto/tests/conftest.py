"""Fixtures: the trained bottleneck model (``auto_testing``); one intra-op thread (tiny models
on a busy 2-core machine are several times faster so). Restored after each test."""

from __future__ import annotations

import pytest
import torch
from auto_testing import trained_model
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def bottleneck_model() -> nn.Module:
    return trained_model()
