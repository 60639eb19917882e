"""Tests that need the compiled kernels ask for the ``kernels`` fixture: skipped, with the
reason, where they do not build (no C++ compiler or ninja; CI builds them)."""

import os

import pytest
import torch

from netshrink.kernels import kernels_available, kernels_unavailable_reason


@pytest.fixture
def kernels() -> None:
    """Skip (saying why) where the C++ kernels do not build: no compiler or ninja. With
    NETSHRINK_KERNELS_REQUIRED=1 (CI, which must build them) that is a failure instead."""
    if not kernels_available():
        if os.environ.get("NETSHRINK_KERNELS_REQUIRED") == "1":
            pytest.fail(f"NETSHRINK_KERNELS_REQUIRED=1 but: {kernels_unavailable_reason()}")
        pytest.skip("netshrink.kernels: the C++ kernels did not build here: "
                    f"{kernels_unavailable_reason()}")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny layers: one intra-op thread beats two fighting over a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
