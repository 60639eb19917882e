"""Building and loading the C++ kernels: JIT-compiled by torch on first use, then cached.

The extension (``csrc/bitconv.cpp``, one file, no pybind) registers its operators as
``torch.ops.netshrink_kernels.*``. It is compiled with ``torch.utils.cpp_extension.load`` into
``$NETSHRINK_KERNELS_BUILD_DIR`` (default ``~/.cache/netshrink/kernels/torch-<version>``); torch
rebuilds it when the source changes. Compilation needs a C++ compiler and ninja; when either is
missing, or ``NETSHRINK_KERNELS_DISABLE=1``, ``kernels_available()`` is False and
``kernels_unavailable_reason()`` says why: the pure-PyTorch path never needs the extension.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

_SOURCE = Path(__file__).with_name("csrc") / "bitconv.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"tried": False, "ops": None, "error": None}


def build_dir() -> Path:
    """Where the compiled extension is cached."""
    env = os.environ.get("NETSHRINK_KERNELS_BUILD_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "netshrink" / "kernels" / f"torch-{torch.__version__}"


def _build() -> Any:
    if os.environ.get("NETSHRINK_KERNELS_DISABLE") == "1":
        raise RuntimeError("disabled by NETSHRINK_KERNELS_DISABLE=1")
    # importing cpp_extension warns about CUDA_HOME on CPU-only machines: irrelevant here
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)

    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name="netshrink_kernels_ext", sources=[str(_SOURCE)],
                       extra_cflags=["-O3", "-ffp-contract=off", "-fopenmp"],
                       extra_ldflags=["-fopenmp"], build_directory=str(folder),
                       is_python_module=False, verbose=False)
    return torch.ops.netshrink_kernels


def kernel_ops() -> Any:
    """``torch.ops.netshrink_kernels`` (built on first call); RuntimeError naming why not."""
    with _LOCK:
        if not _STATE["tried"]:
            _STATE["tried"] = True
            try:
                _STATE["ops"] = _build()
            except Exception as err:  # no compiler, no ninja, a failed build: all mean "absent"
                _STATE["error"] = f"{type(err).__name__}: {str(err).strip()[-400:]}"
    if _STATE["ops"] is None:
        raise RuntimeError("netshrink.kernels: the C++ kernels are not available "
                           f"({_STATE['error']}); use backend='torch' (the float path)")
    return _STATE["ops"]


def kernels_available() -> bool:
    """True when the C++ kernels build (or are cached) and load."""
    try:
        kernel_ops()
    except RuntimeError:
        return False
    return True


def kernels_unavailable_reason() -> str | None:
    """Why the kernels cannot be used (None when they can)."""
    return None if kernels_available() else str(_STATE["error"])


def simd_path() -> str:
    """The kernel this CPU runs by default: ``"avx512"``, ``"avx2"`` or ``"portable"``."""
    return str(kernel_ops().simd_path())


def available_paths() -> list[str]:
    """The kernels this CPU can run (``"portable"`` always; ``"avx2"``, ``"avx512"``)."""
    ops = kernel_ops()
    return [name for name, code in (("portable", 1), ("avx2", 2), ("avx512", 3))
            if ops.has_path(code)]
