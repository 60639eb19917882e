"""The deployment table's bit-packed kernel columns (issue 17): a row's binary layers on
``netshrink.kernels`` against the same architecture in float PyTorch, timed side by side.

For a row whose model has layers with binary (``sign``) inputs and binary / ternary weights,
``measure_bitpacked`` takes its deployment form (BatchNorms folded by ``netshrink.bnfuse``:
thresholds before binary layers), runs it with those layers on the packed kernels
(``netshrink.kernels.accelerate``) and checks it against the fake-quantized model it came from
(top-1 agreement and the largest absolute logit difference: 0 means bit-exact). Its speed-up is
over ``float_reference``, the same folded model with every quantized layer a plain float layer
of the same shape (the model a float deployment runs), timed alternately with the packed one in
this process at batch 1 and 64, so that load from other processes hits both alike. Rows with no
such layer, or where the kernels are not installed or did not build, get ``applies: False`` and
the reason (the table shows "-").
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

#: Alternated timed rounds per batch size, after one warm-up each (batch 1 is noisy and cheap).
ROUNDS: dict[int, int] = {1: 50, 64: 3}


def kernels_reason() -> str | None:
    """None when the packed kernels can run here, else why not."""
    try:
        from netshrink.kernels import kernels_available, kernels_unavailable_reason
    except ImportError:
        return "netshrink-kernels is not installed"
    return None if kernels_available() else kernels_unavailable_reason()


def float_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) with every quantized conv / linear a plain ``nn.Conv2d`` /
    ``nn.Linear`` of the same shape: its decoded weights, a folded ``out_scale`` multiplied
    into them, no input quantizer. The float model of the same architecture, for timing."""
    from netshrink.quant import QuantConv2d, QuantLinear

    model = copy.deepcopy(model).eval()
    swaps = [(name, m) for name, m in model.named_modules()
             if isinstance(m, (QuantConv2d, QuantLinear))]
    for name, layer in swaps:
        with torch.no_grad():
            weight = layer.quantized_weight().detach().clone()
            bias = None if layer.bias is None else layer.bias.detach().clone()
            if layer.out_scale is not None:
                scale = layer.out_scale.detach()
                weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
                bias = torch.zeros_like(scale) if bias is None else bias
        if isinstance(layer, QuantConv2d):
            plain: nn.Module = nn.Conv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                layer.padding, layer.dilation, layer.groups, bias is not None,
                layer.padding_mode)
        else:
            plain = nn.Linear(layer.in_features, layer.out_features, bias is not None)
        plain.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            plain.bias = nn.Parameter(bias, requires_grad=False)
        owner_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner_name) if owner_name else model, leaf, plain.eval())
    return model


def _logits(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([model(images[i:i + 256]) for i in range(0, len(images), 256)]).numpy()


def _paired_ms(float_model: nn.Module, packed: nn.Module, x: torch.Tensor,
               rounds: int) -> tuple[float, float]:
    """Median ms of ``float_model(x)`` and ``packed(x)``, run alternately ``rounds`` times."""
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        float_model(x)
        packed(x)
        for _ in range(rounds):
            for net, out in zip((float_model, packed), times, strict=True):
                start = time.perf_counter()
                net(x)
                out.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def measure_bitpacked(model: nn.Module, images: torch.Tensor,
                      rounds: dict[int, int] | None = None) -> dict[str, Any]:
    """The packed-kernel entry of a deployment row (see the module doc): ``{"applies": False,
    "reason": ...}`` when it has none, else the packed layers, the exactness against the
    fake-quantized model on ``images``, and the latency (ms) of the packed and the float
    model at each batch size with the speed-up (float / packed)."""
    reason = kernels_reason()
    if reason is not None:
        return {"applies": False, "reason": reason}
    from netshrink.bnfuse import fuse
    from netshrink.kernels import accelerate, bit_layers, convertible_reason, simd_path

    if not any(convertible_reason(m) is None for m in model.modules()):
        return {"applies": False, "reason": "no layer with binary inputs and binary / ternary "
                                            "weights"}
    started = time.perf_counter()
    model = copy.deepcopy(model).cpu().eval()
    try:
        deployed, folded = fuse(model, example_input=images[:1]), True
    except Exception as e:  # noqa: BLE001 (a model bnfuse cannot trace is measured unfolded)
        deployed, folded = model, f"not folded: {type(e).__name__}: {e}"
    packed = accelerate(deployed)
    fake = _logits(deployed, images)
    got = _logits(packed, images)
    out: dict[str, Any] = {
        "applies": True, "kernel": simd_path(), "threads": torch.get_num_threads(),
        "bn_folded": folded, "packed_layers": len(bit_layers(packed)),
        "agreement": float((got.argmax(1) == fake.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(got - fake).max()),
        "latency_ms": {}, "float_latency_ms": {}, "speedup": {}}
    reference = float_reference(deployed)
    generator = torch.Generator().manual_seed(0)
    for batch, n in (rounds or ROUNDS).items():
        x = torch.randn(batch, *images.shape[1:], generator=generator)
        float_ms, packed_ms = _paired_ms(reference, packed, x, n)
        key = f"batch{batch}"
        out["latency_ms"][key], out["float_latency_ms"][key] = packed_ms, float_ms
        out["speedup"][key] = float_ms / packed_ms
    out["seconds"] = time.perf_counter() - started
    return out


#: The table's columns for the packed kernels (``cells``).
HEAD = ["packed b1 (ms)", "x torch float", "packed b64 (ms)", "x torch float",
        "packed vs fake-quant"]


#: What the columns mean, for the table's note.
NOTE = ("Packed: the layers with binary inputs and binary / ternary weights on netshrink's "
        "bit-packed XNOR-popcount kernels (`netshrink.kernels`, BN folded to thresholds), x "
        "torch float: speed-up over the same BN-folded model with plain float layers in "
        "PyTorch, the two timed alternately in the same process (median, torch's threads); "
        "packed vs fake-quant: `bit-exact` when every logit equals the fake-quantized "
        "model's on the test images, else top-1 agreement and the largest logit difference "
        "(a general per-channel weight scale is rounded once by the kernels: "
        "packages/kernels/README.md). `-`: no such layer, or the kernels are not installed.")


def cells(entry: dict[str, Any] | None) -> list[str]:
    """The packed-kernel cells of one row: latency and speed-up over the float model at batch
    1 and 64, and the exactness (``exact`` or the agreement and largest difference); "-" where
    the kernels do not apply."""
    if not entry or not entry.get("applies"):
        return ["-"] * len(HEAD)
    out = []
    for batch in ("batch1", "batch64"):
        ms, x = entry["latency_ms"].get(batch), entry["speedup"].get(batch)
        out += ["-" if ms is None else f"{ms:.2f}", "-" if x is None else f"x{x:.2f}"]
    diff = entry["max_abs_diff"]
    out.append("bit-exact" if diff == 0 else
               f"{100 * entry['agreement']:.2f}% top-1, max diff {diff:.1e}")
    return out
