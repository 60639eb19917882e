"""Run one ONNX file in a runtime (ONNX Runtime, OpenVINO), compare it with PyTorch, time it.

    session = open_session("openvino", "model.onnx", threads=1)
    logits = session.run(images)                     # float32 numpy, any batch size
    session.integer_layers()                         # what the runtime computes in integers
    measure_latency(session, (3, 32, 32))            # {"batch1": ms, "batch64": ms} (medians)
    compare_logits(logits, torch_logits(model, x))   # agreement, accuracy, max rel. difference

Runtimes are a registry (``RUNTIMES``, filled by ``@register_runtime``). ``onnxruntime`` is a
dependency of this package; ``openvino`` is optional (the ``netshrink-deploy[openvino]``
extra): opening a session without it raises ``RuntimeNotInstalledError`` naming the extra.

What "integer layers" means per runtime, since neither says it in the same words:
ONNX Runtime: the integer op types (``INTEGER_OPS``: QLinearConv, ConvInteger, ...) of the graph
its optimizer produced (``SessionOptions.optimized_model_filepath``). OpenVINO: the layers of
the compiled model (``get_runtime_model()``) whose executed precision (``runtimePrecision`` in
each layer's runtime info) is ``u8`` or ``i8``, by layer type (``{"Convolution": 7}``), data
movement (Reorder, Reshape, Convert, constants) left out. OpenVINO's counterpart of QLinearConv is a
``Convolution`` executed in ``u8``: its low-precision transformations fold the
QuantizeLinear / DequantizeLinear pairs into the convolution.

OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``: on a CPU with bf16 support its default is
to run float layers in bf16, which would no longer compute what PyTorch computes (the check
would measure bf16 rounding, not the export). Integer layers run in u8 / i8 either way.
One departure from the file's QDQ semantics remains, OpenVINO's own: when it fuses a residual
add into the convolution producing one operand, it clips that operand to its QuantizeLinear's
range without rounding it (see packages/deploy/README.md, "Why OpenVINO disagrees on int8
ResNets"); no compile property turns that off.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
import statistics
import tempfile
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from netshrink.core import check_int
from netshrink.deploy.check import INTEGER_OPS

#: Runtime name -> session class (``register_runtime``).
RUNTIMES: dict[str, type[RuntimeSession]] = {}
#: OpenVINO precisions that are integer arithmetic.
_INTEGER_PRECISIONS = frozenset({"u8", "i8"})
#: OpenVINO layer types that move or hold data rather than compute.
_DATA_LAYERS = frozenset({"Const", "Input", "Parameter", "Output", "Result", "Reorder",
                          "Reshape", "Transpose", "Concatenation", "Convert"})


class RuntimeNotInstalledError(ImportError):
    """A registered runtime whose Python package is not installed."""


def register_runtime(name: str) -> Callable[[type[RuntimeSession]], type[RuntimeSession]]:
    """Class decorator: register a ``RuntimeSession`` subclass under ``name``."""

    def add(cls: type[RuntimeSession]) -> type[RuntimeSession]:
        if name in RUNTIMES:
            raise ValueError(f"runtime {name!r} is already registered")
        cls.name = name
        RUNTIMES[name] = cls
        return cls

    return add


def list_runtimes() -> list[str]:
    """Registered runtime names (installed or not)."""
    return list(RUNTIMES)


def runtime_available(name: str) -> bool:
    """Whether ``name`` is registered and its package can be imported."""
    _check_name(name)
    return importlib.util.find_spec(RUNTIMES[name].package) is not None


def require_runtime(name: str) -> None:
    """Import runtime ``name``'s package; ``RuntimeNotInstalledError`` (naming the extra that
    installs it) when it is missing."""
    _check_name(name)
    RUNTIMES[name].require()


def open_session(name: str, path: str | os.PathLike[str], *,
                 threads: int | None = None) -> RuntimeSession:
    """A session of runtime ``name`` on the CPU for the ONNX file ``path``. ``threads``: the
    intra-op threads (None or 0: the runtime's default)."""
    _check_name(name)
    if threads is not None:
        check_int("threads", threads, min_value=0)
    return RUNTIMES[name](path, threads=threads or None)


def _check_name(name: str) -> None:
    if name not in RUNTIMES:
        raise ValueError(f"runtime {name!r} is not known; choose one of: "
                         f"{', '.join(RUNTIMES)}")


class RuntimeSession(ABC):
    """One ONNX file loaded in one runtime, for the CPU, with a dynamic batch dimension."""

    #: The registry name (set by ``register_runtime``).
    name: ClassVar[str] = ""
    #: The importable package the runtime needs, and the extra that installs it.
    package: ClassVar[str] = ""
    extra: ClassVar[str | None] = None
    #: Timed through a new session per round (``opener_for_timing``): a live session of this
    #: runtime slows the others (ONNX Runtime's spinning worker threads).
    reopen_for_timing: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads
        if not self.path.is_file():
            raise FileNotFoundError(2, "No such file", str(self.path))

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's first output for the float32 batch ``x`` (its own array)."""

    @abstractmethod
    def integer_layers(self) -> dict[str, int]:
        """Layer (op) type -> how many of them the runtime executes in integer arithmetic."""

    @property
    @abstractmethod
    def version(self) -> str:
        """The runtime's version."""

    def describe(self) -> dict[str, Any]:
        """JSON-able facts about the session (runtime, version, threads, integer layers)."""
        return {"runtime": self.name, "version": self.version, "threads": self.threads or 0,
                "integer_layers": self.integer_layers()}

    @classmethod
    def require(cls) -> Any:
        """The runtime's imported package (``RuntimeNotInstalledError`` when missing)."""
        try:
            return importlib.import_module(cls.package)
        except ImportError as err:
            how = (f"pip install 'netshrink-deploy[{cls.extra}]'" if cls.extra
                   else f"pip install {cls.package}")
            raise RuntimeNotInstalledError(
                f"runtime {cls.name!r} needs the {cls.package!r} package, which is not "
                f"installed: {how}") from err


@register_runtime("onnxruntime")
class OnnxRuntimeSession(RuntimeSession):
    """ONNX Runtime's CPU execution provider at its default (highest) optimization level."""

    package = "onnxruntime"
    reopen_for_timing = True

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the hardware-specific-optimizations warning
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory(prefix="netshrink-ort-") as tmp:
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            self._session = ort.InferenceSession(str(self.path), options,
                                                 providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath).graph
        #: Op type -> count in the optimized graph.
        self.optimized_ops: dict[str, int] = dict(sorted(Counter(
            node.op_type for node in graph.node).items()))
        self._input = self._session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]

    def integer_layers(self) -> dict[str, int]:
        return {op: n for op, n in self.optimized_ops.items() if op in INTEGER_OPS}

    @property
    def version(self) -> str:
        return ort.__version__


@register_runtime("openvino")
class OpenVinoSession(RuntimeSession):
    """OpenVINO on the CPU (``Core().read_model`` of the ONNX file, ``compile_model("CPU")``),
    float layers in f32 (see the module's docstring)."""

    package = "openvino"
    extra = "openvino"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        ov = self.require()
        super().__init__(path, threads=threads)
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._version = ov.get_version()
        self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)

    def run(self, x: np.ndarray) -> np.ndarray:
        result = self._request.infer({0: x})
        return np.array(result[self._output], copy=True)  # the request reuses its buffer

    def layer_precisions(self) -> dict[str, dict[str, int]]:
        """Layer type -> {executed precision: count} over the compiled model's compute
        layers (from ``get_runtime_model()``'s per-layer runtime info)."""
        counts: dict[str, Counter[str]] = {}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = _rt_value(info, "layerType")
            if kind is None or kind in _DATA_LAYERS:
                continue
            precision = _rt_value(info, "runtimePrecision") or "?"
            counts.setdefault(kind, Counter())[precision] += 1
        return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}

    def integer_layers(self) -> dict[str, int]:
        found = {kind: sum(n for p, n in precisions.items() if p in _INTEGER_PRECISIONS)
                 for kind, precisions in self.layer_precisions().items()}
        return {kind: n for kind, n in found.items() if n}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layer_precisions": self.layer_precisions()}

    @property
    def version(self) -> str:
        return str(self._version)


def _rt_value(info: Any, key: str) -> str | None:
    if key not in info:
        return None
    value = info[key]
    return str(value.astype(str)) if hasattr(value, "astype") else str(value)


def run_batched(session: RuntimeSession, images: np.ndarray, batch_size: int = 256
                ) -> np.ndarray:
    """``session``'s outputs for ``images`` in batches of ``batch_size``, concatenated."""
    check_int("batch_size", batch_size, min_value=1)
    return np.concatenate([session.run(np.ascontiguousarray(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


@torch.no_grad()
def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """``model``'s outputs (eval mode, restored afterwards) for ``images``, as float32 numpy."""
    check_int("batch_size", batch_size, min_value=1)
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([model(images[i:i + batch_size]).float().cpu().numpy()
                               for i in range(0, images.shape[0], batch_size)])
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class Agreement:
    """A runtime's outputs against PyTorch's on the same images."""

    images: int
    #: Both outputs are finite everywhere (else the numbers below mean little).
    finite: bool
    #: Fraction of images whose top-1 class is the same.
    agreement: float
    #: The runtime's top-1 accuracy (None without labels).
    accuracy: float | None
    #: max over images of ``max |got - ref| / max |ref|``; None when not finite.
    max_rel_logit_diff: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "finite": self.finite, "agreement": self.agreement,
                "accuracy": self.accuracy, "max_rel_logit_diff": self.max_rel_logit_diff}


def compare_logits(got: np.ndarray, ref: np.ndarray, labels: np.ndarray | None = None
                   ) -> Agreement:
    """Top-1 agreement of ``got`` with ``ref`` (N, classes), the accuracy of ``got`` against
    ``labels``, and the largest relative logit difference (as ``check_onnx`` defines it)."""
    if got.shape != ref.shape or got.ndim < 1 or len(got) == 0:
        raise ValueError(f"outputs of shape {got.shape} and {ref.shape}: need the same, "
                         "non-empty shape")
    flat_got, flat_ref = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    finite = bool(np.isfinite(flat_got).all() and np.isfinite(flat_ref).all())
    rel = None
    if finite:
        scale = np.maximum(np.abs(flat_ref).max(1), np.finfo(np.float32).tiny)
        rel = float((np.abs(flat_got - flat_ref).max(1) / scale).max())
        rel = rel if math.isfinite(rel) else None
    top_got = flat_got.argmax(1)
    accuracy = None if labels is None else float((top_got == np.asarray(labels)).mean())
    return Agreement(images=len(got), finite=finite,
                     agreement=float((top_got == flat_ref.argmax(1)).mean()),
                     accuracy=accuracy, max_rel_logit_diff=rel)


def measure_latency(session: RuntimeSession, input_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 64), *, warmup: int = 3,
                    repeats: int = 20, seed: int = 0) -> dict[str, float]:
    """Median wall time in milliseconds of ``session.run`` per batch size (``"batch1"``, ...)
    on fixed random inputs of ``input_shape`` (without the batch dimension): ``warmup``
    untimed runs, then the median of ``repeats`` timed ones."""
    check_int("warmup", warmup, min_value=0)
    check_int("repeats", repeats, min_value=1)
    rng = np.random.default_rng(seed)
    out = {}
    for batch in batch_sizes:
        check_int("batch size", batch, min_value=1)
        x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
        for _ in range(warmup):
            session.run(x)
        out[f"batch{batch}"] = _median_ms(session, x, repeats)
    return out


def _median_ms(session: RuntimeSession, x: np.ndarray, runs: int) -> float:
    """The median wall time (ms) of ``runs`` runs of ``session`` on ``x``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@dataclass(frozen=True)
class PairedLatency:
    """Latencies of several sessions measured in interleaved rounds (``measure_paired``).

    ``ms[name][batch]``: the median over rounds of each round's median time (milliseconds);
    ``speedup[name][batch]``: the median over rounds of ``reference / this`` within the round
    (the reference is the first session, whose speed-up is 1); ``spread[name][batch]``: the
    interquartile range of those per-round ratios divided by their median (how much the
    machine moved them); ``rounds`` and ``per_round``: the protocol."""

    ms: dict[str, dict[str, float]]
    speedup: dict[str, dict[str, float]]
    spread: dict[str, dict[str, float]]
    rounds: dict[str, int]
    per_round: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "speedup": self.speedup, "spread": self.spread,
                "rounds": self.rounds, "per_round": self.per_round}


def _is_session(value: object) -> bool:
    return callable(getattr(value, "run", None))


def _timed_round(value: RuntimeSession | Callable[[], RuntimeSession], x: np.ndarray,
                 runs: int, warmup: int) -> float:
    """The median of ``runs`` timed runs (ms) of a session, or of a session newly opened by
    ``value`` (warmed up first and dropped after: its threads exist only while it is timed)."""
    session = value if _is_session(value) else value()
    if not _is_session(value):
        for _ in range(warmup):
            session.run(x)
    ms = _median_ms(session, x, runs)
    del session
    return ms


def opener_for_timing(name: str, path: str | os.PathLike[str], *, threads: int | None = None
                      ) -> RuntimeSession | Callable[[], RuntimeSession]:
    """What ``measure_paired`` should time for runtime ``name`` and file ``path``: an opener
    (a new session per round) for a runtime whose live sessions slow each other
    (``RuntimeSession.reopen_for_timing``: ONNX Runtime, whose worker threads keep spinning
    after a run), else one session (OpenVINO showed no such effect here and compiles a file in
    0.1-0.7 s, too slow to repeat per round)."""
    _check_name(name)
    if RUNTIMES[name].reopen_for_timing:
        return functools.partial(open_session, name, path, threads=threads)
    return open_session(name, path, threads=threads)


#: Default rounds and timed runs per session per round, by batch size (other sizes: 64's).
PAIRED_ROUNDS: dict[int, tuple[int, int]] = {1: (15, 5), 64: (5, 2)}


def measure_paired(sessions: Mapping[str, RuntimeSession | Callable[[], RuntimeSession]],
                   input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64), *,
                   rounds: dict[int, tuple[int, int]] | None = None, warmup: int = 3,
                   seed: int = 0) -> PairedLatency:
    """Time ``sessions`` (the first is the reference) against each other in interleaved
    rounds, per batch size: each round runs every session ``per_round`` times in a row (the
    order reversed every other round, so a drift of the machine's speed favours none) and
    keeps each session's median; the speed-up is the median over rounds of the ratio within a
    round. Why: on a shared machine the speed of the same file moves by +-20 % over seconds,
    so two medians taken one after the other give a ratio that moves as much; ratios within a
    round of a few milliseconds see the same machine. ``rounds``: batch size -> (rounds,
    runs per round), default ``PAIRED_ROUNDS``; ``warmup`` untimed runs per session first.

    A value may be an opener instead of a session (a function returning a new session, e.g.
    ``functools.partial(open_session, "onnxruntime", path)``): it is opened for each round,
    warmed up, timed and dropped, so only one session exists while it is timed. ONNX Runtime
    needs that: the worker threads of a session that just ran keep spinning and slowed the
    next session on 2 cores by up to 2x (nin float, batch 64: 12.7 ms alone, 27 ms alternating
    with a second live session; ``opener_for_timing``)."""
    if not sessions:
        raise ValueError("measure_paired needs at least one session")
    check_int("warmup", warmup, min_value=0)
    plan = dict(PAIRED_ROUNDS if rounds is None else rounds)
    rng = np.random.default_rng(seed)
    names = list(sessions)
    ms: dict[str, dict[str, float]] = {n: {} for n in names}
    speedup: dict[str, dict[str, float]] = {n: {} for n in names}
    spread: dict[str, dict[str, float]] = {n: {} for n in names}
    used_rounds: dict[str, int] = {}
    used_per_round: dict[str, int] = {}
    for batch in batch_sizes:
        check_int("batch size", batch, min_value=1)
        n_rounds, per_round = plan.get(batch, plan.get(64, PAIRED_ROUNDS[64]))
        check_int(f"rounds for batch {batch}", n_rounds, min_value=1)
        check_int(f"runs per round for batch {batch}", per_round, min_value=1)
        key = f"batch{batch}"
        x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
        for name in names:
            if _is_session(sessions[name]):
                for _ in range(warmup):
                    sessions[name].run(x)
        medians: dict[str, list[float]] = {n: [] for n in names}
        for r in range(n_rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                medians[name].append(_timed_round(sessions[name], x, per_round, warmup))
        ref = medians[names[0]]
        for name in names:
            ratios = [a / b for a, b in zip(ref, medians[name], strict=True)]
            mid = statistics.median(ratios)
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [mid, mid, mid]
            ms[name][key] = statistics.median(medians[name])
            speedup[name][key] = mid
            spread[name][key] = (q[2] - q[0]) / mid
        used_rounds[key], used_per_round[key] = n_rounds, per_round
    return PairedLatency(ms=ms, speedup=speedup, spread=spread, rounds=used_rounds,
                         per_round=used_per_round)


__all__ = ["PAIRED_ROUNDS", "RUNTIMES", "Agreement", "OnnxRuntimeSession", "OpenVinoSession",
           "PairedLatency", "RuntimeNotInstalledError", "RuntimeSession", "compare_logits",
           "list_runtimes", "measure_latency", "measure_paired", "open_session",
           "opener_for_timing", "register_runtime", "require_runtime", "run_batched",
           "runtime_available", "torch_logits"]
