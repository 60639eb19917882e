"""CPU latency for budget pruning: a per-layer lookup table measured on this machine.

NetAdapt's approach: the latency of a pruned model is predicted from a table of per-layer
latencies measured beforehand for the channel counts a search may choose, and the result is
then measured for real.

``LatencyModel(model, example_input)`` times:

* the whole model once (``base``: median of repeats after warm-up);
* every Conv2d / Linear called once in a forward pass, alone, on an input of its real shape, at
  a grid of ``levels`` input x ``levels`` output channel counts between 1 and its own (a
  grouped conv only at its own shape: its pruned time is scaled by its MACs).

Each layer's grid is made monotone (a running maximum along both channel axes: timing noise
must not make a smaller layer look slower) and read by bilinear interpolation, which keeps it
monotone. ``estimate(pruner, amounts)`` is the whole model's measured latency less what each
pruned layer saves by the table, the savings scaled by ``scale`` = base / (sum of the layers'
full-size times): the rest of the model (BatchNorms, activations, pooling) shrinks with the
layers around it, and layers timed alone may add up to more than the model (call overhead,
cold caches); the prediction is thus the measured latency in proportion to the layers' table
latency, never below zero. (Crediting no remainder, nin at width 0.25, batch 1, whose layers
are 37 % of its time, was predicted at 1.46 ms with every group 90 % pruned against 0.62 ms
measured.) ``measure(model)`` times a model for real, which ``prune_to_budget`` does on every
result.

``time_fn(module, x) -> seconds`` does every timing (``time_forward`` by default); tests pass
a deterministic one. ``time_forward`` reads the thread's CPU time when torch runs one intra-op
thread (the forward then runs entirely on the calling thread, and the figure is the latency on
an idle core, whatever else the machine runs), the wall clock otherwise. Cost: layers x
levels^2 timings (``table_seconds``), then one whole-model timing per result checked.
"""

from __future__ import annotations

import bisect
import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from netshrink.auto.groups import GroupPruner
from netshrink.auto.probe import record_layers
from netshrink.core import check_int

TimeFn = Callable[[nn.Module, torch.Tensor], float]

#: Each timed repeat runs the module at least this long (several calls when it is fast).
MIN_REPEAT_SECONDS = 2e-3


def clock() -> Callable[[], float]:
    """The clock ``time_forward`` reads: the calling thread's CPU time when torch uses one
    intra-op thread, else the wall clock (see the module docstring)."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


@torch.no_grad()
def time_forward(module: nn.Module, x: torch.Tensor, *, warmup: int = 3,
                 repeats: int = 7) -> float:
    """Median seconds of one ``module(x)`` in eval mode, without autograd: ``warmup`` calls
    first, then ``repeats`` timed repeats of as many calls as fill ``MIN_REPEAT_SECONDS``
    (``clock()``)."""
    check_int("warmup", warmup, min_value=1)
    check_int("repeats", repeats, min_value=1)
    now = clock()
    was_training = module.training
    module.eval()
    try:
        start = now()
        for _ in range(warmup):
            module(x)
        one = max((now() - start) / warmup, 1e-7)
        number = max(1, min(1000, math.ceil(MIN_REPEAT_SECONDS / one)))
        times = []
        for _ in range(repeats):
            start = now()
            for _ in range(number):
                module(x)
            times.append((now() - start) / number)
    finally:
        module.train(was_training)
    return statistics.median(times)


def _levels(channels: int, levels: int) -> list[int]:
    return sorted({max(1, round(channels * k / levels)) for k in range(1, levels + 1)})


def _monotone(grid: list[list[float]]) -> list[list[float]]:
    """Running maximum down each column, then along each row: non-decreasing in both axes."""
    out = [list(r) for r in grid]
    for i in range(1, len(out)):
        out[i] = [max(a, b) for a, b in zip(out[i], out[i - 1], strict=True)]
    for r in out:
        for j in range(1, len(r)):
            r[j] = max(r[j], r[j - 1])
    return out


def _interp(axis: list[int], v: float) -> tuple[int, int, float]:
    """Indices i0, i1 around ``v`` on a sorted ``axis`` and the weight of i1 (clamped)."""
    if v <= axis[0]:
        return 0, 0, 0.0
    if v >= axis[-1]:
        return len(axis) - 1, len(axis) - 1, 0.0
    i1 = bisect.bisect_left(axis, v)
    i0 = i1 - 1
    return i0, i1, (v - axis[i0]) / (axis[i1] - axis[i0])


class LayerTable:
    """One layer's latency on a grid of (input, output) channel counts, monotone."""

    def __init__(self, ins: list[int], outs: list[int], grid: list[list[float]]) -> None:
        self.ins, self.outs, self.grid = ins, outs, _monotone(grid)

    def __call__(self, cin: float, cout: float) -> float:
        i0, i1, u = _interp(self.ins, cin)
        j0, j1, v = _interp(self.outs, cout)
        g = self.grid
        return ((1 - u) * ((1 - v) * g[i0][j0] + v * g[i0][j1])
                + u * ((1 - v) * g[i1][j0] + v * g[i1][j1]))


def _shape(module: nn.Module) -> tuple[int, int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, 1
    return module.in_channels, module.out_channels, module.groups


def _resized(module: nn.Module, cin: int, cout: int) -> nn.Module:
    if isinstance(module, nn.Linear):
        return nn.Linear(cin, cout, bias=module.bias is not None)
    return nn.Conv2d(cin, cout, module.kernel_size, module.stride, module.padding,
                     module.dilation, 1, module.bias is not None, module.padding_mode)


class LatencyModel:
    """Measured whole-model latency plus per-layer tables (see the module docstring)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, levels: int = 6,
                 time_fn: TimeFn | None = None) -> None:
        check_int("levels", levels, min_value=2)
        start = time.perf_counter()
        self.example_input = example_input.detach().cpu()
        self.time_fn: TimeFn = time_fn or time_forward
        self.base = self.measure(model)
        self.tables: dict[str, LayerTable] = {}
        self.full: dict[str, float] = {}
        self.timings = 1
        for name, (module, x) in _layer_inputs(model, self.example_input).items():
            cin, cout, groups = _shape(module)
            if groups != 1:
                self.full[name] = self.time_fn(module, x)
                self.timings += 1
                continue
            ins, outs = _levels(cin, levels), _levels(cout, levels)
            grid = []
            for ci in ins:
                xi = x.narrow(-1 if isinstance(module, nn.Linear) else x.dim() - 3, 0, ci)
                grid.append([self.time_fn(_resized(module, ci, co).eval(), xi) for co in outs])
            self.timings += len(ins) * len(outs)
            self.tables[name] = LayerTable(ins, outs, grid)
            self.full[name] = self.tables[name](cin, cout)
        self.scale = self.base / sum(self.full.values()) if self.full else 1.0
        self.table_seconds = time.perf_counter() - start

    def measure(self, model: nn.Module) -> float:
        """The model's latency on the example input, timed now (on the CPU)."""
        on_cpu = all(t.device.type == "cpu" for t in model.parameters())
        return float(self.time_fn(model if on_cpu else copy.deepcopy(model).cpu(),
                                  self.example_input))

    def layer(self, name: str, module: nn.Module, cin: int, cout: int, groups: int) -> float:
        """Predicted latency of layer ``name`` (the original ``module``) at a pruned shape."""
        if name in self.tables:
            return self.tables[name](cin, cout)
        full_in, full_out, full_groups = _shape(module)
        macs = cout * (cin // max(groups, 1))
        return self.full[name] * macs / (full_out * (full_in // full_groups))

    def estimate(self, pruner: GroupPruner, amounts: Mapping[str, float]) -> float:
        """Predicted latency of ``pruner``'s model pruned by ``amounts``."""
        saved = 0.0
        for name, mp in pruner.plan(amounts).modules.items():
            if name not in self.full:  # BatchNorms, shared layers: no credit (errs high)
                continue
            m = pruner.model.get_submodule(name)
            cin, cout, groups = _shape(m)
            new_in = cin if mp.in_idx is None else len(mp.in_idx)
            new_out = cout if mp.out_idx is None else len(mp.out_idx)
            new_groups = mp.groups if isinstance(m, nn.Conv2d) else 1
            saved += self.full[name] - self.layer(name, m, new_in, new_out, new_groups)
        return self.base - self.scale * saved

    def as_dict(self) -> dict[str, Any]:
        return {"base_seconds": self.base, "table_layers": len(self.full),
                "table_timings": self.timings, "table_seconds": self.table_seconds,
                "table_scale": self.scale}


def _layer_inputs(model: nn.Module, example_input: torch.Tensor
                  ) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Every Conv2d / Linear called exactly once on ``example_input``, with its input."""
    return record_layers(model, example_input, lambda _mod, x, _out: x.detach().clone())
