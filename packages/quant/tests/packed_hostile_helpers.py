"""Genuine packed files and ways to edit them, for the hostile-file tests (issue 11).

Only torch and netshrink.quant: the quant package's tests run without netshrink.models.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import json
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from netshrink.quant import QuantConfig, quantize_, save_packed

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


class Residual(nn.Module):
    """A residual block with a channel shuffle, a chunk and a learned gain: operator.add,
    getitem, size/view/transpose/contiguous, torch.cat and torch.flatten with keywords, and a
    get_attr node. Odd widths, as after pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 6).view(1, 6, 1, 1))
        self.head = nn.Linear(6, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        a, b = y.chunk(2, dim=1)
        y = torch.cat([a + self.conv(b), b], dim=1) * self.gain
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(torch.flatten(y.mean((2, 3), keepdim=True), start_dim=1))


def genuine_files(folder: Path) -> dict[str, Path]:
    """A float model, a 2-bit/binary quantized one and a residual ternary one, packed."""
    torch.manual_seed(0)
    models = {
        "float": small_cnn().eval(),
        "quant": quantize_(small_cnn(), QuantConfig(w=2, a="binary")).eval(),
        "residual": quantize_(Residual(), QuantConfig(w="ternary", a=4, first="same",
                                                     last="8bit")).eval(),
    }
    return {name: save_packed(m, folder / f"{name}.safetensors") for name, m in models.items()}


def read_doc(path: Path) -> dict[str, Any]:
    tensors = load_file(str(path))
    return json.loads(zlib.decompress(bytes(tensors["structure"].tolist())).decode())


def write_structure(source: Path, out: Path, text: str | bytes) -> Path:
    """``source`` with its structure replaced by ``text`` (JSON, compressed as the format
    does); every other tensor kept."""
    raw = text.encode() if isinstance(text, str) else text
    return write_compressed(source, out, zlib.compress(raw))


def write_compressed(source: Path, out: Path, compressed: bytes) -> Path:
    """``source`` with its structure tensor replaced by ``compressed`` as it is."""
    tensors = load_file(str(source))
    tensors["structure"] = torch.frombuffer(bytearray(compressed), dtype=torch.uint8)
    save_file(tensors, str(out), metadata={"format": "netshrink-packed"})
    return out


def write_doc(source: Path, out: Path, doc: Any) -> Path:
    return write_structure(source, out, json.dumps(doc))


class Guard:
    """Records, while active, every file opened through Python and every module imported that
    was not imported before."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.imported: list[str] = []
        self.new_modules: set[str] = set()

    @contextlib.contextmanager
    def watch(self) -> Iterator[Guard]:
        real_open, real_os_open = builtins.open, os.open
        real_import, real_import_module = builtins.__import__, importlib.import_module
        before = set(sys.modules)

        def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            self.opened.append(str(file))
            return real_open(file, *args, **kwargs)

        def spy_os_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            self.opened.append(str(file))
            return real_os_open(file, *args, **kwargs)

        def spy_import(name: str, *args: Any, **kwargs: Any) -> Any:
            if name and name not in sys.modules and not (len(args) >= 4 and args[3]):
                self.imported.append(name)
            return real_import(name, *args, **kwargs)

        def spy_import_module(name: str, *args: Any, **kwargs: Any) -> Any:
            if name not in sys.modules:
                self.imported.append(name)
            return real_import_module(name, *args, **kwargs)

        builtins.open = io.open = spy_open  # type: ignore[assignment]
        os.open = spy_os_open  # type: ignore[assignment]
        builtins.__import__ = spy_import
        importlib.import_module = spy_import_module
        try:
            yield self
        finally:
            builtins.open = io.open = real_open  # type: ignore[assignment]
            os.open = real_os_open
            builtins.__import__ = real_import
            importlib.import_module = real_import_module
            self.new_modules |= set(sys.modules) - before
