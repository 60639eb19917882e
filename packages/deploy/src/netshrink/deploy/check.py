"""``check_onnx``: run an exported file in ONNX Runtime next to the PyTorch model.

The report says how often the two agree on the top-1 class, both accuracies (with labels),
the largest relative logit difference (per image ``max |ort - torch| / max |torch|``, the
number to watch for float forms, where it should be ~1e-6), and which integer kernels ONNX
Runtime actually runs: the op types of the graph it optimized
(``SessionOptions.optimized_model_filepath``), at its default (highest) optimization level.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from netshrink.deploy.export import INPUT_NAME

#: Op types that compute in integers (ONNX and ONNX Runtime's contrib ops).
INTEGER_OPS: frozenset[str] = frozenset({
    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat",
    "QGemm", "NhwcQLinearConv", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
})


@dataclass(frozen=True)
class OnnxCheck:
    """What ``check_onnx`` measured on ``images`` test images."""

    path: str
    images: int
    #: Fraction of images where ONNX Runtime's and PyTorch's top-1 class agree.
    agreement: float
    #: Top-1 accuracies (None without labels).
    torch_accuracy: float | None
    onnx_accuracy: float | None
    #: max over images of ``max |ort - torch| / max |torch|`` (logits).
    max_rel_logit_diff: float
    #: Op type -> count in ONNX Runtime's optimized graph.
    optimized_ops: dict[str, int] = field(default_factory=dict)

    @property
    def integer_ops(self) -> dict[str, int]:
        """The integer kernels among ``optimized_ops``."""
        return {op: n for op, n in self.optimized_ops.items() if op in INTEGER_OPS}

    def describe(self) -> dict[str, object]:
        """JSON-able summary."""
        return {"path": self.path, "images": self.images, "agreement": self.agreement,
                "torch_accuracy": self.torch_accuracy, "onnx_accuracy": self.onnx_accuracy,
                "max_rel_logit_diff": self.max_rel_logit_diff,
                "integer_ops": self.integer_ops, "optimized_ops": self.optimized_ops}


def check_onnx(path: str | os.PathLike[str], model: nn.Module, images: torch.Tensor,
               labels: torch.Tensor | None = None, *, batch_size: int = 256,
               threads: int | None = None) -> OnnxCheck:
    """Run ``path`` in ONNX Runtime (CPU) and ``model`` in eval mode on ``images`` (batches
    of ``batch_size``) and compare them. ``model``'s training mode is restored afterwards."""
    if not isinstance(images, torch.Tensor) or images.dim() < 1 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty tensor with a batch dimension")
    if labels is not None and tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got "
                         f"{tuple(labels.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    with tempfile.TemporaryDirectory(prefix="netshrink-ort-") as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # the hardware-specific-optimizations warning
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = Counter(node.op_type for node in
                      onnx.load(options.optimized_model_filepath).graph.node)
    onnx_out, torch_out = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start:start + batch_size]
                torch_out.append(model(batch).float().cpu().numpy())
                onnx_out.append(session.run(None, {INPUT_NAME: batch.cpu().numpy()})[0])
    finally:
        model.train(was_training)
    got, ref = np.concatenate(onnx_out), np.concatenate(torch_out)
    if got.shape != ref.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from the model's {ref.shape}")
    flat_got, flat_ref = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    scale = np.maximum(np.abs(flat_ref).max(1), np.finfo(np.float32).tiny)
    rel = float((np.abs(flat_got - flat_ref).max(1) / scale).max())
    top_got, top_ref = flat_got.argmax(1), flat_ref.argmax(1)
    acc_torch = acc_onnx = None
    if labels is not None:
        y = labels.cpu().numpy()
        acc_torch, acc_onnx = float((top_ref == y).mean()), float((top_got == y).mean())
    return OnnxCheck(path=str(path), images=int(images.shape[0]),
                     agreement=float((top_got == top_ref).mean()), torch_accuracy=acc_torch,
                     onnx_accuracy=acc_onnx, max_rel_logit_diff=rel,
                     optimized_ops=dict(sorted(ops.items())))
