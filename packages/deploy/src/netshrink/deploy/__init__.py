"""netshrink.deploy: every compressed model form to ONNX, checked in ONNX Runtime.

    from netshrink.deploy import export_onnx, check_onnx
    path = export_onnx(model, example_input, "model.onnx")   # quantized layers as QDQ, int8
    report = check_onnx(path, model, images, labels)        # agreement, accuracy, integer ops
    session = open_session("openvino", path)                # or "onnxruntime": run and time

Depends on netshrink-core, torch, onnx and onnxruntime; never on netshrink-quant: quantized
layers describe themselves through ``netshrink.core.HasIntegerForm``.
"""

from netshrink.deploy.align import MLAS_X86, ChannelAlignment, align_channels
from netshrink.deploy.check import INTEGER_OPS, OnnxCheck, check_onnx
from netshrink.deploy.export import DEFAULT_OPSET, ExportError, deploy_copy, export_onnx
from netshrink.deploy.qdq import QDQAdd, QDQInput, QDQLayer
from netshrink.deploy.runtimes import (
    PAIRED_ROUNDS,
    RUNTIMES,
    Agreement,
    PairedLatency,
    RuntimeNotInstalledError,
    RuntimeSession,
    compare_logits,
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
from netshrink.deploy.stem import MAX_UNROLLED_CHANNELS, unroll_stem

__all__ = ["DEFAULT_OPSET", "INTEGER_OPS", "MAX_UNROLLED_CHANNELS", "MLAS_X86",
           "PAIRED_ROUNDS", "RUNTIMES", "Agreement", "ChannelAlignment", "ExportError",
           "OnnxCheck", "PairedLatency", "QDQAdd", "QDQInput", "QDQLayer",
           "RuntimeNotInstalledError", "RuntimeSession", "align_channels", "check_onnx",
           "compare_logits", "deploy_copy", "export_onnx", "list_runtimes", "measure_latency",
           "measure_paired", "open_session", "opener_for_timing", "register_runtime",
           "require_runtime", "run_batched", "runtime_available", "torch_logits", "unroll_stem"]
