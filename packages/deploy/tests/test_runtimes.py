"""netshrink.deploy.runtimes: ONNX Runtime and OpenVINO sessions behind one registry, their
outputs against PyTorch (float and int8 QAT files), integer layers, thread settings, the
comparison arithmetic and the latency loop (no assertion on time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netshrink.deploy import (
    RUNTIMES,
    Agreement,
    RuntimeNotInstalledError,
    RuntimeSession,
    compare_logits,
    export_onnx,
    list_runtimes,
    measure_latency,
    measure_paired,
    open_session,
    opener_for_timing,
    register_runtime,
    require_runtime,
    run_batched,
    runtime_available,
    torch_logits,
)
from netshrink.deploy.runtimes import OpenVinoSession


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _nin(seed: int = 0) -> torch.nn.Module:
    """NIN width 0.25 with BatchNorm statistics of some images (as after training)."""
    models = pytest.importorskip("netshrink.models")
    torch.manual_seed(seed)
    model = models.create_model("nin", width=0.25)
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(_images(64, seed=100 + s))
    return model.eval()


def _int8_qat_nin() -> torch.nn.Module:
    quant = pytest.importorskip("netshrink.quant")
    model = quant.quantize_(_nin(), quant.QuantConfig(w=8, a=8, scheme="int8_affine"))
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(_images(64, seed=200 + s))
    return model.eval()


def _runtimes() -> list[str]:
    """Every runtime whose package is installed (openvino is in the dev venv; skip cleanly
    only where it is not)."""
    return [name for name in list_runtimes() if runtime_available(name)]


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
    model = _nin()
    return model, export_onnx(model, _images(1), tmp_path_factory.mktemp("f") / "nin.onnx")


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    model = _int8_qat_nin()
    return model, export_onnx(model, _images(1), tmp_path_factory.mktemp("q") / "int8.onnx")


def test_registry_names_both_runtimes_and_rejects_unknown_ones():
    assert list_runtimes() == ["onnxruntime", "openvino"]
    assert RUNTIMES["openvino"] is OpenVinoSession
    with pytest.raises(ValueError, match=r"'tensorrt' is not known; choose one of: "
                                         r"onnxruntime, openvino"):
        open_session("tensorrt", "x.onnx")
    with pytest.raises(ValueError, match="already registered"):
        register_runtime("onnxruntime")(type("Again", (RuntimeSession,), {}))
    with pytest.raises(ValueError, match="threads"):
        open_session("onnxruntime", "x.onnx", threads=-1)


def test_missing_openvino_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setattr(OpenVinoSession, "package", "netshrink_no_such_runtime_pkg")
    assert not runtime_available("openvino")
    with pytest.raises(RuntimeNotInstalledError, match=r"netshrink-deploy\[openvino\]"):
        require_runtime("openvino")
    with pytest.raises(RuntimeNotInstalledError, match=r"netshrink-deploy\[openvino\]"):
        open_session("openvino", tmp_path / "absent.onnx")  # the package is named first


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    for name in _runtimes():
        with pytest.raises(FileNotFoundError, match="absent.onnx"):
            open_session(name, tmp_path / "absent.onnx")


def test_compare_logits_arithmetic():
    ref = np.array([[1.0, 2.0, 0.0], [4.0, 0.0, 1.0], [0.0, 0.0, 2.0], [3.0, 1.0, 0.0]],
                   dtype=np.float32)
    got = ref.copy()
    got[1] = [0.0, 5.0, 1.0]  # top-1 flips (1 -> 0 ... 0 -> 1): diff 5 against max |ref| 4
    got[3, 2] = 0.3  # same class, diff 0.3 against 3
    a = compare_logits(got, ref, np.array([1, 1, 2, 1]))
    assert isinstance(a, Agreement)
    assert a.images == 4 and a.finite
    assert a.agreement == 0.75
    assert a.accuracy == 0.75  # predictions 1, 1, 2, 0
    assert a.max_rel_logit_diff == pytest.approx(5.0 / 4.0)
    assert compare_logits(got, ref).accuracy is None
    got[2, 0] = np.nan
    bad = compare_logits(got, ref)
    assert not bad.finite and bad.max_rel_logit_diff is None
    assert bad.as_dict()["finite"] is False
    with pytest.raises(ValueError, match="same"):
        compare_logits(got[:2], ref)


class _Counting(RuntimeSession):
    """A session that records the shapes it ran (no file, no runtime)."""

    def __init__(self) -> None:  # no file to check
        self.shapes: list[tuple[int, ...]] = []

    def run(self, x):
        self.shapes.append(x.shape)
        return np.zeros((len(x), 10), np.float32)

    def integer_layers(self):
        return {}

    @property
    def version(self):
        return "0"


def test_measure_latency_warms_up_then_takes_the_median_of_repeats():
    session = _Counting()
    out = measure_latency(session, (3, 8, 8), (1, 4), warmup=2, repeats=5)
    assert list(out) == ["batch1", "batch4"]
    assert all(v >= 0 and np.isfinite(v) for v in out.values())
    assert session.shapes == [(1, 3, 8, 8)] * 7 + [(4, 3, 8, 8)] * 7
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(session, (3, 8, 8), repeats=0)


class _Clocked(_Counting):
    """A session whose run takes ``cost`` x the machine's current slowness on a fake clock."""

    def __init__(self, clock: list[float], cost: float, slowness) -> None:
        super().__init__()
        self.clock, self.cost, self.slowness = clock, cost, slowness

    def run(self, x):
        self.clock[0] += self.cost * self.slowness()
        return super().run(x)


def test_measure_paired_gives_the_true_ratio_on_a_machine_whose_speed_drifts(monkeypatch):
    """The machine slows down 3x over the measurement (a neighbour starts a job): alternating
    rounds still see the true 2x ratio, where two medians taken one after the other (what
    ``measure_latency`` per session gives) are off by far more than a few percent."""
    import netshrink.deploy.runtimes as runtimes

    clock = [0.0]
    runs = [0]

    def slowness() -> float:
        runs[0] += 1
        return 1.0 + 2.0 * min(runs[0] / 200, 1.0)

    monkeypatch.setattr(runtimes.time, "perf_counter", lambda: clock[0])
    slow, fast = _Clocked(clock, 2.0, slowness), _Clocked(clock, 1.0, slowness)
    out = measure_paired({"float": slow, "int8": fast}, (3, 8, 8), (1, 4),
                         rounds={1: (10, 5), 4: (3, 2)}, warmup=1)
    assert out.speedup["float"] == {"batch1": 1.0, "batch4": 1.0}
    assert out.speedup["int8"]["batch1"] == pytest.approx(2.0, rel=0.06)
    assert out.speedup["int8"]["batch4"] == pytest.approx(2.0, rel=0.06)
    assert out.rounds == {"batch1": 10, "batch4": 3} and out.per_round["batch1"] == 5
    # every session: its warm-up, then rounds x runs per round, per batch size
    assert fast.shapes == [(1, 3, 8, 8)] * 51 + [(4, 3, 8, 8)] * 7
    assert set(out.as_dict()) == {"ms", "speedup", "spread", "rounds", "per_round"}
    runs[0] = 0
    one_after_other = measure_latency(slow, (3, 8, 8), (1,), warmup=1, repeats=50)["batch1"] \
        / measure_latency(fast, (3, 8, 8), (1,), warmup=1, repeats=50)["batch1"]
    assert abs(one_after_other / 2.0 - 1) > 0.2
    with pytest.raises(ValueError, match="at least one session"):
        measure_paired({}, (3, 8, 8))
    with pytest.raises(ValueError, match="rounds for batch 1"):
        measure_paired({"a": fast}, (3, 8, 8), (1,), rounds={1: (0, 5)})


def test_openers_are_opened_per_round_and_only_one_session_lives_while_it_is_timed():
    """ONNX Runtime's worker threads keep spinning after a run and slow another live session
    (measured up to 2x at batch 64 on 2 cores), so an opener is opened for each round, warmed
    up, timed and dropped: while a session runs, it is the only one alive."""
    import gc
    import weakref

    alive: list[weakref.ref] = []
    opened: dict[str, int] = {"a": 0, "b": 0}
    max_alive = [0]

    class _Alone(_Counting):
        def run(self, x):
            gc.collect()
            max_alive[0] = max(max_alive[0], sum(r() is not None for r in alive))
            return super().run(x)

    def opener(name: str):
        def open_one() -> _Alone:
            opened[name] += 1
            s = _Alone()
            alive.append(weakref.ref(s))
            return s
        return open_one

    out = measure_paired({"a": opener("a"), "b": opener("b")}, (3, 8, 8), (1, 4),
                         rounds={1: (3, 2), 4: (2, 1)}, warmup=1)
    assert opened == {"a": 5, "b": 5}  # 3 + 2 rounds each
    assert max_alive[0] == 1
    assert set(out.speedup) == {"a", "b"} and out.rounds == {"batch1": 3, "batch4": 2}


def test_onnx_runtime_is_timed_through_an_opener_and_openvino_through_one_session(tmp_path):
    path = export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                       torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    ort_value = opener_for_timing("onnxruntime", path)
    assert not hasattr(ort_value, "run") and hasattr(ort_value(), "run")
    if runtime_available("openvino"):
        assert hasattr(opener_for_timing("openvino", path), "run")


def test_run_batched_concatenates_every_batch():
    session = _Counting()
    out = run_batched(session, np.zeros((10, 3, 8, 8), np.float32), batch_size=4)
    assert out.shape == (10, 10)
    assert [s[0] for s in session.shapes] == [4, 4, 2]


@pytest.mark.slow
def test_float_file_agrees_with_pytorch_in_every_runtime(float_file):
    model, path = float_file
    x = _images(40, seed=1)
    ref = torch_logits(model, x, batch_size=16)
    assert not model.training
    for name in _runtimes():
        session = open_session(name, path)
        for batch_size in (1, 7, 40):  # dynamic batch
            a = compare_logits(run_batched(session, x.numpy(), batch_size), ref)
            assert a.agreement == 1.0, (name, batch_size)
            assert a.max_rel_logit_diff < 1e-4, (name, batch_size)  # f32, not bf16
        assert session.integer_layers() == {}, name
        assert session.describe()["runtime"] == name


@pytest.mark.slow
def test_thread_settings_reach_the_runtimes(float_file):
    _, path = float_file
    ort_session = open_session("onnxruntime", path, threads=1)
    options = ort_session._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert ort_session.describe()["threads"] == 1
    if runtime_available("openvino"):
        ov_session = open_session("openvino", path, threads=1)
        assert int(ov_session._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert str(ov_session._compiled.get_property("INFERENCE_PRECISION_HINT")) in (
            "f32", "<Type: 'float32'>")
        precisions = ov_session.layer_precisions()
        assert precisions["Convolution"] == {"f32": sum(precisions["Convolution"].values())}


@pytest.mark.slow
def test_int8_file_runs_integer_convolutions_in_both_runtimes(int8_file):
    model, path = int8_file
    x = _images(64, seed=3)
    ref = torch_logits(model, x)
    ort_session = open_session("onnxruntime", path)
    assert ort_session.integer_layers().get("QLinearConv", 0) >= 5
    a = compare_logits(run_batched(ort_session, x.numpy()), ref)
    assert a.agreement >= 63 / 64 and a.finite  # requantization rounding may flip one
    assert a.max_rel_logit_diff < 2e-2
    if not runtime_available("openvino"):
        pytest.skip("openvino is not installed")
    ov_session = open_session("openvino", path)
    ints = ov_session.integer_layers()
    assert ints.get("Convolution", 0) >= 5  # OpenVINO's QLinearConv: a u8 Convolution
    assert set(ov_session.layer_precisions()["Convolution"]) <= {"u8", "i8", "f32"}
    b = compare_logits(run_batched(ov_session, x.numpy(), 16), ref)
    assert b.agreement >= 63 / 64 and b.finite
    assert b.max_rel_logit_diff < 2e-2
    assert ov_session.describe()["layer_precisions"]["Convolution"].get("u8", 0) >= 5
