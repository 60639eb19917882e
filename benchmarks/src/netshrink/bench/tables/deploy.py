"""The deployment table: float, pruned, int8, pruned + int8 and binary-as-int8 forms of nin and
resnet18_cifar, exported to ONNX and measured in ONNX Runtime (and OpenVINO) on the CPU.

Most rows are other tables' rows, reused as the same ``Row`` objects (same spec, so the same
hash): the runner copies a row another table already finished (``runner._reuse``) instead of
training it again, so under ``--table all`` only the rows no other table has are trained here
(nin pruned + int8; resnet18 int8, pruned + int8 and binary). Each row of ``DEPLOY`` is then
exported with ``netshrink.deploy.export_onnx`` (quantized layers as int8 QDQ, fused into integer
kernels) beside its checkpoint (``RUN/deploy/ROW/model.onnx``) and measured by
``measure_deployment``: accuracy and top-1 agreement with PyTorch on the test images, file size,
median latency at batch 1 and 64 in each installed runtime. ``deploy_markdown`` renders the
README table, with the speed-up of each row over the float model of the same architecture in
the same runtime, measured in the same ``bench reproduce``: a row whose float model's file is
already written is timed in rounds alternating with it (``netshrink.deploy.measure_paired``),
so its speed-up is the median of ratios taken milliseconds apart, steady on a shared machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.bench.data import DeviceLoader, ImageData
from netshrink.bench.tables import bitpacked, micronet, prune
from netshrink.bench.tables.recipes import binary_tricks, quantize
from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

#: Timed runs per batch size (after 3 warm-ups); the median is reported.
REPEATS = 10
#: A row paired with its float model's file: batch size -> (rounds, timed runs of each file
#: per round), after 2 warm-ups (``netshrink.deploy.measure_paired``). Batch 64 in 8 rounds: the
#: median of 4 moved from x2.24 to x1.89 between two CI runs (nin pruned + int8).
PAIRED_ROUNDS: dict[int, tuple[int, int]] = {1: (15, 5), 64: (8, 2)}
#: The file each measured row's ONNX export is written to, in the row's run folder.
ONNX_FILE = "model.onnx"

R18_QAT = Schedule(epochs={"full": 40, "quick": 1, "smoke": 1}, lr=0.01, recalibrate_bn=20)
R18_BINARY_QAT = Schedule(epochs={"full": 100, "quick": 2, "smoke": 1}, lr=1e-3,
                          optimizer="adam", weight_decay=0.0, recalibrate_bn=20)
#: Every conv int8, the first (its input, the image, quantized to uint8) and the last too, as
#: a deployed int8 model runs (and as ONNX Runtime's ``quantize_static`` quantizes): a float
#: first conv kept ResNet's first residual Adds outside ONNX Runtime's NHWC int8 path (a
#: Transpose before and after each), and a stem is nin's costliest layer at batch 64 (4.0 of
#: 24.5 ms in an ORT profile of the float model).
INT8 = quantize(8, 8, scheme="int8_affine", first="same", last="same")
R18_PRUNED = "r18-l1-regular"

#: Measured row -> (architecture, form, the float row of that architecture).
FORMS: dict[str, tuple[str, str, str]] = {
    "nin-float": ("nin", "float", "nin-float"),
    "nin-pruned50": ("nin", "pruned 50% channels", "nin-float"),
    "nin-int8-all": ("nin", "int8 QAT", "nin-float"),
    "nin-pruned50-int8": ("nin", "pruned 50% + int8", "nin-float"),
    "nin-wbin-abin": ("nin", "binary W / A (int8 kernels)", "nin-float"),
    "r18-float": ("resnet18_cifar", "float", "r18-float"),
    R18_PRUNED: ("resnet18_cifar", "pruned 50% MACs", "r18-float"),
    "r18-int8": ("resnet18_cifar", "int8 QAT", "r18-float"),
    "r18-pruned-int8": ("resnet18_cifar", "pruned 50% MACs + int8", "r18-float"),
    "r18-wbin-abin": ("resnet18_cifar", "binary W / A (int8 kernels)", "r18-float"),
}


def _reused(table: Table, *names: str) -> tuple[Row, ...]:
    """Rows of another table with their upstream chain, in that table's order."""
    return tuple(table.closure(list(names)))


DEPLOY = register_table(Table(
    name="deploy",
    title="Deployment: ONNX Runtime (and OpenVINO) on the CPU",
    baseline="nin-float",
    deploy_rows=tuple(FORMS),
    # as the prune table: its rows, finished here first, are then reused there complete
    before_training=True,
    rows=(
        *_reused(micronet.MICRONET, "nin-pruned50", "nin-wbin-abin"),
        Row("nin-int8-all", "nin int8 QAT, every conv (the first and the last too)",
            upstream="nin-float", stages=(INT8,), schedule=micronet.QAT_SHORT),
        Row("nin-pruned50-int8", "nin pruned 50% + int8 QAT", upstream="nin-pruned50",
            stages=(INT8,), schedule=micronet.QAT),
        *_reused(prune.PRUNE, R18_PRUNED),
        Row("r18-int8", "resnet18_cifar int8 QAT", upstream="r18-float", stages=(INT8,),
            schedule=R18_QAT),
        Row("r18-pruned-int8", "resnet18_cifar pruned 50% MACs + int8 QAT",
            upstream=R18_PRUNED, stages=(INT8,), schedule=R18_QAT),
        Row("r18-wbin-abin", "resnet18_cifar W binary / A binary", upstream="r18-float",
            stages=(quantize("binary", "binary", **binary_tricks()),),
            schedule=R18_BINARY_QAT),
    ),
))


def _images(data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images normalised as evaluation sees them, and their labels."""
    batches = list(DeviceLoader(data, 256, device="cpu", train=False))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def measure_deployment(model: nn.Module, test: ImageData, run_dir: Path,
                       repeats: int = REPEATS) -> dict[str, Any]:
    """Export ``model`` to ``run_dir / ONNX_FILE`` and measure the file in every installed
    runtime: top-1 agreement with PyTorch, accuracy on ``test``, the layers it runs in integer
    arithmetic, and the median latency (ms) at batch 1 and 64 (the runtime's default
    threads; a row with a float row in ``FORMS`` whose file exists is timed in rounds
    alternating with that file: ``paired`` holds the speed-up, the median of the per-round
    ratios, and its spread); then ``bitpacked``: the binary layers on the packed kernels
    against float PyTorch (``tables/bitpacked.py``; ``applies`` False for rows without any).
    Raises
    ``netshrink.deploy.ExportError`` for a model that cannot be exported."""
    from netshrink import deploy  # onnx and onnxruntime: loaded only when a table needs them

    model = model.cpu().eval()
    x, y = _images(test)
    started = time.perf_counter()
    path = deploy.export_onnx(model, x[:1], run_dir / ONNX_FILE)
    out: dict[str, Any] = {"file": path.name, "file_bytes": path.stat().st_size,
                           "export_seconds": time.perf_counter() - started, "runtimes": {}}
    ref = deploy.torch_logits(model, x)
    float_file = _float_file(run_dir)
    for name in deploy.list_runtimes():
        if not deploy.runtime_available(name):
            continue
        session = deploy.open_session(name, path)
        check = deploy.compare_logits(deploy.run_batched(session, x.numpy()), ref, y.numpy())
        entry = {**session.describe(), **check.as_dict()}
        if float_file is None:
            entry["latency_ms"] = deploy.measure_latency(session, tuple(x.shape[1:]),
                                                         repeats=repeats)
        else:  # timed in rounds alternating with the float model's file: a steady ratio
            del session  # only the sessions being timed may exist (measure_paired)
            paired = deploy.measure_paired(
                {"float": deploy.opener_for_timing(name, float_file),
                 "row": deploy.opener_for_timing(name, path)},
                tuple(x.shape[1:]), rounds=PAIRED_ROUNDS, warmup=2)
            entry["latency_ms"] = paired.ms["row"]
            entry["paired"] = {"float_row": float_file.parent.name,
                               "float_latency_ms": paired.ms["float"],
                               "speedup": paired.speedup["row"],
                               "speedup_spread": paired.spread["row"],
                               "rounds": paired.rounds, "per_round": paired.per_round}
        out["runtimes"][name] = entry
    out["seconds"] = time.perf_counter() - started
    # binary layers on the bit-packed kernels, against float PyTorch (tables/bitpacked.py)
    out["bitpacked"] = bitpacked.measure_bitpacked(model, x)
    return out


def _float_file(run_dir: Path) -> Path | None:
    """The ONNX file of the float row this row is compared with (``FORMS``), exported when
    that row was measured (it comes first: it is this row's upstream); None for a float row
    itself, a row outside ``FORMS``, or a float file not written yet."""
    form = FORMS.get(run_dir.name)
    if form is None or form[2] == run_dir.name:
        return None
    path = run_dir.parent / form[2] / ONNX_FILE
    return path if path.is_file() else None


def deploy_markdown(results: dict[str, dict[str, Any]], table: Table) -> str:
    """The README's deployment table: one line per measured row, ONNX Runtime's accuracy,
    latency and speed-up over the float model of the same architecture, file size, and
    OpenVINO's latency beside ONNX Runtime's."""
    measured = {n: r["metrics"]["deploy"] for n, r in results.items()
                if n in table.deploy_rows and "deploy" in r["metrics"]}
    if not measured:
        return (f"_No deployment results for table `{table.name}` yet: run "
                f"`bench reproduce --table {table.name}`._\n")
    head = ["model", "form", "ORT accuracy (%)", "agreement (%)", "file (MB)", "ORT b1 (ms)",
            "x float", "ORT b64 (ms)", "x float", "OpenVINO b1 (ms)", "OpenVINO b64 (ms)",
            "ORT integer kernels", *bitpacked.HEAD]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in table.deploy_rows:
        d = measured.get(name)
        if d is None:
            continue
        arch, form, float_row = FORMS.get(name, (name, "", table.baseline))
        base = measured.get(float_row, {}).get("runtimes", {}).get("onnxruntime", {})
        ort = d["runtimes"].get("onnxruntime", {})
        ov = d["runtimes"].get("openvino", {})
        cells = [arch, form, _pct(ort.get("accuracy")), _pct(ort.get("agreement")),
                 f"{d['file_bytes'] / 1e6:.3f}"]
        paired = ort.get("paired", {}).get("speedup", {})
        for batch in ("batch1", "batch64"):
            ms = ort.get("latency_ms", {}).get(batch)
            ref = base.get("latency_ms", {}).get(batch)
            if batch in paired:  # measured in rounds alternating with the float file
                cells += [_ms(ms), f"x{paired[batch]:.2f}"]
            else:
                cells += [_ms(ms), "-" if ms is None or ref is None else f"x{ref / ms:.2f}"]
        cells += [_ms(ov.get("latency_ms", {}).get(b)) for b in ("batch1", "batch64")]
        kernels = ort.get("integer_layers", {})
        cells.append(", ".join(f"{op} {n}" for op, n in kernels.items()) or "-")
        cells += bitpacked.cells(d.get("bitpacked"))
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    ds = first["dataset"]
    width = first.get("profile_settings", {}).get("width")
    versions = ", ".join(f"{n} {e['version'].split('-')[0]}" for n, e in next(
        iter(measured.values()))["runtimes"].items())
    note = (f"Profile `{first['profile']}`" + (f" (model width x{width:g})" if width else "")
            + f", {ds['name']} {ds['test_images']} test images, {versions}, the runtime's "
            f"default threads; float rows: median of {REPEATS} runs; "
            + _paired_note(measured) + "produced "
            f"{min(r['date'][:10] for r in results.values())} by `bench reproduce --table "
            f"{table.name} --profile {first['profile']}`. x float: speed-up over the float "
            "model of the same architecture in ONNX Runtime, measured in the same run. "
            "Agreement: top-1 agreement with the PyTorch model. " + bitpacked.NOTE)
    return f"**{table.title}**\n\n" + "\n".join(lines) + f"\n\n{note}\n"


def _paired_note(measured: dict[str, dict[str, Any]]) -> str:
    """How the rows paired with their float file were timed (from the first such result)."""
    paired = next((r["paired"] for d in measured.values()
                   for r in d.get("runtimes", {}).values() if "paired" in r), None)
    if paired is None or "rounds" not in paired:
        return ""
    plan = ", ".join(f"batch {b.removeprefix('batch')}: {n} rounds of "
                     f"{paired.get('per_round', {}).get(b, '?')} runs"
                     for b, n in paired["rounds"].items())
    return ("other rows: timed in rounds alternating with their float model's file "
            f"({plan}), latency the median of the round medians, x float the median of the "
            "per-round ratios; ")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
