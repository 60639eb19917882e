"""``bench export``: a saved model to ONNX, checked and timed in ONNX Runtime (and OpenVINO).

One file: ``bench export RUN_DIR/model.safetensors --out model.onnx`` exports the model
(``netshrink.deploy.export_onnx``: quantized layers as int8 QDQ), runs the file on real test
images in each ``--runtime`` and compares it with the PyTorch model (top-1 agreement,
accuracies, max relative logit difference, the layers the runtime runs in integers), and times
it (median latency at batch 1 and 64). A table: ``bench export --table smoke --runs RUNS``
does the same for every finished row of the table (``RUNS/TABLE/ROW/final.safetensors`` ->
``RUNS/TABLE/ROW/model.onnx``), one line per row; CI calls it after the smoke table.

Exit code 1 when a runtime agrees with PyTorch on fewer than ``--min-agreement`` of the
images, gives non-finite outputs, or (``--table``) a row cannot be exported; 2 for the usual
mistakes (``errors.report_errors``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table as RichTable
from safetensors import SafetensorError, safe_open
from torch import nn

from netshrink.bench.cli import validate
from netshrink.bench.cli.fuse import check_fits
from netshrink.bench.data import DeviceLoader, ImageData, load_dataset, resolve_data_root
from netshrink.bench.data.synthetic import synthetic
from netshrink.bench.tables import TABLES
from netshrink.bench.tables.runner import FINAL
from netshrink.core import CheckpointError
from netshrink.models import load_model


def _deploy() -> ModuleType:
    """netshrink.deploy, imported on first use: it loads onnx and onnxruntime, which every
    other ``bench`` command (training above all) does not need."""
    import netshrink.deploy

    return netshrink.deploy


#: The file ``--table`` writes beside each row's final.safetensors.
ROW_FILE = "model.onnx"
#: Image shapes of the datasets, for an export without --check (no data needed).
_SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}
_PACKED_FORMAT = "netshrink-packed"


@dataclasses.dataclass(frozen=True)
class _Settings:
    check: bool
    runtimes: tuple[str, ...]
    latency: bool
    threads: tuple[int, ...]
    repeats: int
    min_agreement: float
    batch_size: int
    align: bool = True  # netshrink.deploy.align's padding and stem unroll (MLAS_X86)


def export(
    checkpoint: Annotated[Path | None, typer.Argument(
        metavar="CHECKPOINT",
        help="A model file: RUN_DIR/model.safetensors (save_model) or a packed file "
             "(save_packed). Not with --table.")] = None,
    out: Annotated[Path | None, typer.Option(help="The ONNX file to write.")] = None,
    check: Annotated[bool, typer.Option(help="Run the file on test images in each runtime and "
                                             "compare it with the PyTorch model.")] = True,
    dataset: Annotated[str, typer.Option(
        help="Dataset whose test images are used (cifar10, mnist or synthetic; --table: the "
             "table's).")] = "cifar10",
    data_dir: Annotated[Path | None, typer.Option(help="Data root; default "
                                                       "$NETSHRINK_DATA.")] = None,
    images: Annotated[int, typer.Option(help="Test images for the check (the first N).")] = 512,
    input_size: Annotated[int | None, typer.Option(help="--dataset synthetic: image height "
                                                        "and width (default 32).")] = None,
    in_channels: Annotated[int | None, typer.Option(help="--dataset synthetic: image channels "
                                                         "(default 3).")] = None,
    runtime: Annotated[str, typer.Option(help="onnxruntime, openvino or all.")] = "onnxruntime",
    latency: Annotated[bool, typer.Option(help="Time the file: median ms at batch 1 and "
                                               "64.")] = True,
    threads: Annotated[list[int] | None, typer.Option(
        help="Intra-op threads for the timing, 0 = the runtime's default; repeat it to time "
             "side by side, e.g. --threads 1 --threads 0.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per batch size (after 3 warm-up "
                                              "runs); the median is reported.")] = 20,
    min_agreement: Annotated[float, typer.Option(help="Least top-1 agreement with PyTorch; "
                                                      "below it the exit code is 1.")] = 0.99,
    batch_size: Annotated[int, typer.Option(help="Batch size of the check.")] = 256,
    align: Annotated[bool, typer.Option(
        help="Shape int8 convs for ONNX Runtime's fast int8 kernel: channels padded with zero "
             "weights, the stem's rows unrolled (exact; netshrink.deploy.align). --no-align "
             "writes the graph as exported.")] = True,
    table: Annotated[str | None, typer.Option(help="Export and check every finished row of "
                                                   "this table (with --runs).")] = None,
    runs: Annotated[Path | None, typer.Option(help="--table: the runs folder of bench "
                                                   "reproduce (RUNS/TABLE/ROW/).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Export CHECKPOINT to ONNX; check it against PyTorch in ONNX Runtime / OpenVINO and
    time it."""
    validate.check_dataset(dataset)
    validate.check_at_least("--images", images, 1)
    validate.check_at_least("--repeats", repeats, 1)
    validate.check_at_least("--batch-size", batch_size, 1)
    if not 0.0 <= min_agreement <= 1.0:
        raise typer.BadParameter(f"--min-agreement {min_agreement} is not allowed; it must lie "
                                 "in 0..1")
    thread_counts = tuple(dict.fromkeys(threads or [0]))
    for n in thread_counts:
        validate.check_at_least("--threads", n, 0)
    if (input_size is not None or in_channels is not None) and dataset != "synthetic":
        raise typer.BadParameter("--input-size / --in-channels are for --dataset synthetic; "
                                 f"{dataset!r} images have their own shape")
    if input_size is not None:
        validate.check_at_least("--input-size", input_size, 4)
    if in_channels is not None:
        validate.check_at_least("--in-channels", in_channels, 1)
    settings = _Settings(check=check, runtimes=_runtimes(runtime), latency=latency,
                         threads=thread_counts, repeats=repeats, min_agreement=min_agreement,
                         batch_size=batch_size, align=align)
    if table is not None:
        if checkpoint is not None or out is not None:
            raise typer.BadParameter("--table exports the rows' own files (RUNS/TABLE/ROW/"
                                     f"{ROW_FILE}); give no CHECKPOINT or --out with it")
        if runs is None:
            raise typer.BadParameter("--table needs --runs, the runs folder of bench reproduce")
        ok = _export_table(table, runs, data_dir, images, settings, as_json)
    else:
        if runs is not None:
            raise typer.BadParameter("--runs is for --table")
        if checkpoint is None or out is None:
            raise typer.BadParameter("give CHECKPOINT and --out (or --table with --runs)")
        validate.check_in_file("CHECKPOINT", checkpoint,
                               "a model file such as RUN_DIR/model.safetensors")
        validate.check_out_file("--out", out)
        model = load_any(checkpoint)
        shape, test = _inputs(model, str(checkpoint), dataset, data_dir, images, input_size,
                              in_channels, settings.check)
        try:
            result = export_and_check(model, out, shape, test, settings)
        except _deploy().ExportError as err:  # names the layer and why, in one line
            raise typer.BadParameter(str(err)) from err
        result = {"checkpoint": str(checkpoint), **result}
        if as_json:
            print(json.dumps(result, sort_keys=True, allow_nan=False))
        else:
            _print_result(result)
        ok = result["ok"]
    if not ok:
        raise typer.Exit(1)


def _runtimes(name: str) -> tuple[str, ...]:
    """``--runtime``: one registered runtime or all; each must be importable."""
    validate.check_choice("--runtime", name, [*_deploy().list_runtimes(), "all"])
    names = tuple(_deploy().list_runtimes()) if name == "all" else (name,)
    for runtime in names:
        try:
            _deploy().require_runtime(runtime)
        except _deploy().RuntimeNotInstalledError as err:
            raise typer.BadParameter(f"--runtime {name}: {err}") from err
    return names


def load_any(path: Path) -> nn.Module:
    """A model from a ``save_model`` checkpoint or a ``save_packed`` file (by its header)."""
    try:
        return load_model(path)
    except CheckpointError:
        if not _is_packed(path):
            raise
    from netshrink.quant import load_packed  # bench depends on quant; only packed files need it

    return load_packed(path)


def _is_packed(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == _PACKED_FORMAT
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False


def _inputs(model: nn.Module, source: str, dataset: str, data_dir: Path | None, n: int,
            input_size: int | None, in_channels: int | None, need_images: bool
            ) -> tuple[tuple[int, ...], tuple[torch.Tensor, torch.Tensor] | None]:
    """The image shape (C, H, W) and, for a check, ``n`` normalised test images and labels."""
    if dataset == "synthetic":
        spec = getattr(model, "netshrink_spec", None)
        kwargs = spec.get("kwargs", {}) if isinstance(spec, dict) else {}
        classes = kwargs.get("num_classes") if isinstance(kwargs, dict) else None
        data = synthetic("test", n, num_classes=classes if isinstance(classes, int) else 10,
                         size=input_size or 32, channels=in_channels or 3)
    elif not need_images and dataset in _SHAPES:
        return _checked_shape(model, source, _SHAPES[dataset]), None
    else:
        data = load_dataset(dataset, "test", resolve_data_root(data_dir))
    check_fits(model, data, source)
    shape = _checked_shape(model, source, data.image_shape)
    return shape, (_normalised(data, n) if need_images else None)


def _checked_shape(model: nn.Module, source: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    validate.check_runs_on(model, torch.zeros(1, *shape), f"the model in {source}")
    return tuple(shape)


def _normalised(data: ImageData, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images, normalised as training and evaluation see them."""
    n = min(n, len(data))
    subset = dataclasses.replace(data, images=data.images[:n], labels=data.labels[:n])
    batches = list(DeviceLoader(subset, 256, device="cpu", train=False))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def export_and_check(model: nn.Module, out: Path, shape: tuple[int, ...],
                     test: tuple[torch.Tensor, torch.Tensor] | None,
                     settings: _Settings) -> dict[str, Any]:
    """Export ``model`` to ``out`` and check / time it in each runtime; a JSON-able dict with
    ``ok`` (every check passed) and ``failures`` (why not)."""
    model = model.cpu().eval()
    started = time.perf_counter()
    deploy = _deploy()
    path = deploy.export_onnx(model, torch.zeros(1, *shape), out,
                              align=deploy.MLAS_X86 if settings.align else None)
    result: dict[str, Any] = {"file": str(path), "file_bytes": path.stat().st_size,
                              "input_shape": list(shape), "align": settings.align,
                              "export_seconds": time.perf_counter() - started,
                              "min_agreement": settings.min_agreement, "runtimes": {}}
    failures: list[str] = []
    ref = labels = x = None
    if test is not None:
        x, y = test
        ref = _deploy().torch_logits(model, x, settings.batch_size)
        labels = y.numpy()
        finite = bool(np.isfinite(ref).all())
        result["images"] = len(x)
        result["torch_accuracy"] = float((ref.argmax(1) == labels).mean()) if finite else None
    for name in settings.runtimes:
        entry: dict[str, Any] = {}
        for i, n in enumerate(settings.threads):
            session = _deploy().open_session(name, path, threads=n)
            if i == 0:
                entry.update(session.describe())
                entry.pop("threads")
                if x is not None:
                    got = _deploy().run_batched(session, x.numpy(), settings.batch_size)
                    agreement = _deploy().compare_logits(got, ref, labels)
                    entry.update(agreement.as_dict())
                    if not agreement.finite:
                        failures.append(f"{name}: non-finite outputs")
                    elif agreement.agreement < settings.min_agreement:
                        failures.append(f"{name}: top-1 agreement {agreement.agreement:.4f} < "
                                        f"{settings.min_agreement}")
            if settings.latency:
                entry.setdefault("latency_ms", {})[_threads_key(n)] = _deploy().measure_latency(
                    session, shape, repeats=settings.repeats)
        result["runtimes"][name] = entry
    result["seconds"] = time.perf_counter() - started
    result["failures"] = failures
    result["ok"] = not failures
    return result


def _threads_key(n: int) -> str:
    return "default" if n == 0 else f"{n}"


def _export_table(name: str, runs: Path, data_dir: Path | None, n: int, settings: _Settings,
                  as_json: bool) -> bool:
    """Export and check every finished row of table ``name``; one line per row."""
    try:
        spec = TABLES.get(name)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    folder = Path(runs).expanduser() / spec.name
    finished = [row for row in spec.rows if (folder / row.name / FINAL).is_file()]
    if not finished:
        raise typer.BadParameter(f"--runs {runs}: no finished row of table {spec.name!r} (no "
                                 f"{folder}/ROW/{FINAL}); run bench reproduce --table "
                                 f"{spec.name} --runs {runs} first")
    data = load_dataset(spec.dataset, "test", resolve_data_root(data_dir))
    test = _normalised(data, n) if settings.check else None
    rows: list[dict[str, Any]] = []
    for row in spec.rows:
        run_dir = folder / row.name
        if row not in finished:
            rows.append({"row": row.name, "ok": True, "skipped": f"no {FINAL}"})
        else:
            rows.append({"row": row.name, **_export_row(run_dir, data, test, settings)})
        if not as_json:  # plain print: one unwrapped line per row in a CI log
            print(_row_line(spec.name, rows[-1]), flush=True)
    ok = all(r["ok"] for r in rows)
    if as_json:
        print(json.dumps({"table": spec.name, "runs": str(runs), "ok": ok, "rows": rows},
                         sort_keys=True, allow_nan=False))
    return ok


def _export_row(run_dir: Path, data: ImageData, test: tuple[torch.Tensor, torch.Tensor] | None,
                settings: _Settings) -> dict[str, Any]:
    source = str(run_dir / FINAL)
    model = load_model(run_dir / FINAL)
    check_fits(model, data, source)
    shape = _checked_shape(model, source, data.image_shape)
    try:
        return export_and_check(model, run_dir / ROW_FILE, shape, test, settings)
    except _deploy().ExportError as err:
        return {"ok": False, "failures": [str(err)]}


def _row_line(table: str, r: dict[str, Any]) -> str:
    head = f"{table}/{r['row']}: "
    if "skipped" in r:
        return head + f"skipped ({r['skipped']})"
    if "file" not in r:
        return head + "FAILED: " + "; ".join(r["failures"])
    parts = ["ok" if r["ok"] else "FAILED",
             f"{r['file_bytes'] / 1e6:.2f} MB"]
    if r.get("torch_accuracy") is not None:
        parts.append(f"torch {_pct(r['torch_accuracy'])}")
    for name, e in r["runtimes"].items():
        bits = [name]
        if "agreement" in e:
            bits += [f"agreement {_pct(e['agreement'])}", f"acc {_pct(e['accuracy'])}",
                     f"rel {_sci(e['max_rel_logit_diff'])}"]
        bits.append(f"int {_kernels(e['integer_layers'])}")
        for key, ms in e.get("latency_ms", {}).items():
            bits.append(f"b1 {ms['batch1']:.2f} / b64 {ms['batch64']:.1f} ms "
                        f"(threads {key})")
        parts.append(" ".join(bits))
    parts.append(f"{r['seconds']:.1f} s")
    line = head + ", ".join(parts)
    return line + ("" if r["ok"] else ": " + "; ".join(r["failures"]))


def _print_result(r: dict[str, Any]) -> None:
    """One column per runtime, one row per measurement (fits a narrow terminal)."""
    console = Console(highlight=False)
    title = f"{r['file']}: {r['file_bytes'] / 1e6:.2f} MB, exported in {r['export_seconds']:.1f} s"
    grid = RichTable(title=title, title_justify="left")
    grid.add_column("")
    runtimes = list(r["runtimes"].items())
    for name, e in runtimes:
        grid.add_column(f"{name} {e['version'].split('-')[0]}", justify="right")
    if "images" in r:
        grid.add_row(f"PyTorch accuracy ({r['images']} test images)",
                     *[_pct(r["torch_accuracy"])] * len(runtimes))
        grid.add_row("top-1 agreement with PyTorch", *[_pct(e["agreement"]) for _, e in runtimes])
        grid.add_row("accuracy", *[_pct(e["accuracy"]) for _, e in runtimes])
        grid.add_row("max rel. logit difference",
                     *[_sci(e["max_rel_logit_diff"]) for _, e in runtimes])
    grid.add_row("integer layers", *[_kernels(e["integer_layers"]) for _, e in runtimes])
    keys = list(dict.fromkeys(k for _, e in runtimes for k in e.get("latency_ms", {})))
    for key in keys:
        for batch in ("batch1", "batch64"):
            grid.add_row(f"ms, {batch.replace('batch', 'batch ')}, threads {key}",
                         *[_ms(e.get("latency_ms", {}).get(key, {}).get(batch))
                           for _, e in runtimes])
    console.print(grid)
    if not r["ok"]:
        console.print("[red]check failed:[/red] " + "; ".join(r["failures"]))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _sci(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


def _kernels(found: dict[str, int]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in found.items()) or "none"


__all__ = ["ROW_FILE", "export", "export_and_check", "load_any"]
