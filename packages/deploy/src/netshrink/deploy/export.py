"""``export_onnx``: any netshrink model form to one ONNX file, quantized layers as QDQ.

Float models (pruned and BN-fused ones are plain float modules) export as they are. Each layer
implementing ``netshrink.core.HasIntegerForm`` with an integer form is replaced, in a copy of
the model, by a ``QDQLayer``: int8 weight initializers with the model's own scales and zero
points, its input as QuantizeLinear / DequantizeLinear (never re-calibrated). Layers whose
form is None (float16, float weights) export their own float forward.

Why torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``): the TorchScript-based
exporter (``dynamo=False``) turns ``torch.fake_quantize_per_*_affine`` into Q/DQ but leaves the
weights as float initializers behind a QuantizeLinear (graph surgery needed to get int8 weights),
and warns that it will be removed. The dynamo exporter rejects those fake-quantize ops, but
``torch.onnx.ops.symbolic`` lets a module emit QuantizeLinear / DequantizeLinear itself, and an
int8 buffer becomes an int8 initializer, so no graph surgery is needed. It is slower (about 7 s
for NIN on 2 cores against under 1 s). The result passes onnx's checker (full check) and strict
shape inference before it is written, atomically.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from netshrink.core import HasAddForm, HasIntegerForm, check_int, write_atomic
from netshrink.deploy.align import MLAS_X86, ChannelAlignment, align_channels
from netshrink.deploy.fold import fuse_for_integer_kernels
from netshrink.deploy.qdq import QDQAdd, QDQLayer
from netshrink.deploy.stem import unroll_stem

#: Default ONNX opset (QuantizeLinear / DequantizeLinear with per-axis scales need >= 13;
#: 21 is what the QDQ nodes are written for).
DEFAULT_OPSET = 21
#: The graph's input and output names.
INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportError(RuntimeError):
    """A model (or one of its layers, named in the message) cannot be exported."""


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike[str], *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                integer_kernels: bool = True,
                align: ChannelAlignment | None = MLAS_X86) -> Path:
    """Write ``model`` (evaluated in eval mode; the model itself is not changed) as ONNX to
    ``path`` and return the path. ``example_input``: one input batch (its shape, but for the
    batch dimension when ``dynamic_batch``, is fixed in the file). Raises ``ExportError``
    naming the layer and the reason for anything that cannot be exported.
    ``integer_kernels``: rewrite the QDQ graph so that ONNX Runtime fuses it into integer
    kernels (``netshrink.deploy.fold``: epilogues and BatchNorms folded into the conv, k-bit
    Clips and binary signs moved onto the uint8 codes); False keeps the layer-by-layer
    export (exact, but ORT keeps those convs float). ``align``: with ``integer_kernels``, pad
    the integer convs' channels with zero weights to these counts (``netshrink.deploy.align``:
    the same function, run by ONNX Runtime's fast int8 conv) and unroll an int8 stem conv's
    kernel rows into channels (``netshrink.deploy.stem``); None leaves the convs as they are."""
    check_int("opset", opset, min_value=DEFAULT_OPSET)
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise ExportError(f"example_input must be a tensor with a batch dimension, got "
                          f"{type(example_input).__name__}")
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
    if device is not None and device.type != "cpu":
        raise ExportError(f"export_onnx exports CPU models; the model is on {device} (move a "
                          "copy with .cpu())")
    export_model = deploy_copy(model)
    example = example_input.detach().cpu()
    if dynamic_batch and example.shape[0] == 1:
        example = torch.cat([example, example])  # a batch of 1 would be specialised
    program = _torch_export(export_model, example, opset, dynamic_batch)
    proto = program.model_proto
    if integer_kernels:
        proto = fuse_for_integer_kernels(proto)
        if align is not None:
            align_channels(proto, align)
            unroll_stem(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                                  data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported graph of {type(model).__name__} is not valid ONNX: "
                          f"{err}") from err
    strip_metadata(proto)
    return write_atomic(path, lambda tmp: onnx.save_model(proto, tmp))


def strip_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove, in place, what no runtime reads: the exporter's per-node metadata (the
    PyTorch module path, class hierarchy, FX node and stack trace of every node: 150 KB of a
    0.93 MB int8 resnet18_cifar at width 0.25, a third of an int8 NIN at width 0.25), doc
    strings, and the intermediate shapes of shape inference (``value_info``; runtimes infer
    them again). Returns ``proto``."""
    graph = proto.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*graph.input, *graph.output, *graph.initializer):
        del value.metadata_props[:]
        value.doc_string = ""
    del graph.value_info[:]
    graph.doc_string = ""
    proto.doc_string = ""
    return proto


def deploy_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every layer that has an integer form replaced by
    its ``QDQLayer`` and every quantized add (``HasAddForm``) by its ``QDQAdd`` (what
    ``export_onnx`` exports; in eager mode it computes the exported values in float)."""
    export_model = copy.deepcopy(model).eval()
    replaced: list[str] = []
    for name, module in list(export_model.named_modules()):
        if not name or any(name.startswith(prefix + ".") for prefix in replaced):
            continue
        if not isinstance(module, (HasIntegerForm, HasAddForm)):
            continue
        try:
            if isinstance(module, HasAddForm):
                qdq = QDQAdd(module.add_form())
            else:
                form = module.integer_form()
                if form is None:
                    continue
                qdq = QDQLayer(module, form)
        except ValueError as err:
            raise ExportError(f"layer {name!r} ({type(module).__name__}) cannot be exported: "
                              f"{err}") from err
        _set_submodule(export_model, name, qdq)
        replaced.append(name)
    return export_model


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _torch_export(model: nn.Module, example: torch.Tensor, opset: int,
                  dynamic_batch: bool) -> Any:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    log = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            return torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                     input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                     dynamic_shapes=shapes, optimize=True, verbose=False)
    except Exception as err:  # torch raises many kinds; the culprit layer is what matters
        culprit = _find_culprit(model, example)
        where = f"layer {culprit[0]!r} ({culprit[1]})" if culprit else type(model).__name__
        raise ExportError(f"{where} cannot be exported to ONNX: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Failed to export", "[", "-")):
            return f"{type(err).__name__}: {line}"[:500]
    return type(err).__name__


def _find_culprit(model: nn.Module, example: torch.Tensor) -> tuple[str, str] | None:
    """The first leaf module (in call order) that torch.export cannot capture on its own,
    given the inputs it received in an eager forward; None when every leaf exports."""
    calls: list[tuple[str, nn.Module, tuple[Any, ...]]] = []
    leaves = [(n, m) for n, m in model.named_modules()
              if n and (not list(m.children()) or isinstance(m, (QDQLayer, QDQAdd)))]
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, n=n: calls.append((n, mod, args))) for n, m in leaves]
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # the eager forward fails too: the last leaf entered is the culprit
        if calls:
            name, mod, _ = calls[-1]
            return name, type(mod).__name__
        return None
    finally:
        for h in hooks:
            h.remove()
    seen: set[str] = set()
    for name, mod, args in calls:
        if name in seen:
            continue
        seen.add(name)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.export.export(mod, args, strict=False)
        except Exception:
            return name, type(mod).__name__
    return None
