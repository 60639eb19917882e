"""k-bit, ternary and binary forms export as int8 QDQ and match PyTorch; binary activations
keep sign(0) = +1; a post-training int8 model of a BN-fused net runs as QLinearConv."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from netshrink.deploy import check_onnx, export_onnx

quant = pytest.importorskip("netshrink.quant")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.ConvTranspose2d(16, 8, 2, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )


def _warm(model: nn.Module) -> nn.Module:
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(_images(32, seed=50 + seed))
    return model.eval()


def _int8_weights(path) -> list[onnx.TensorProto]:
    proto = onnx.load(path)
    inits = {t.name: t for t in proto.graph.initializer}
    return [inits[n.input[0]] for n in proto.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "config", "exact"), [
    ("w4a4", quant.QuantConfig(w=4, a=4, first="same", last="same"), False),
    ("w2a2_lsq", quant.QuantConfig(w=2, a=2, a_quantizer="lsq"), True),
    ("ternary", quant.QuantConfig(w="ternary", a="ternary", last="same"), True),
    ("binary", quant.QuantConfig(w="binary", a="binary", binary_scale=False), True),
])
def test_low_bit_forms(tmp_path, name, config, exact):
    model = _warm(quant.quantize(_small_cnn(), config))
    path = export_onnx(model, _images(1), tmp_path / f"{name}.onnx")
    weights = _int8_weights(path)
    assert len(weights) == len(quant.quantized_layers(model))
    assert all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    report = check_onnx(path, model, _images(64, seed=9))
    assert report.agreement == 1.0
    # binary, ternary and LSQ compute exactly what the form says; DoReFa / PACT activations
    # divide by clip / n where PyTorch multiplies by n / clip (ulp differences, rare ties)
    assert report.max_rel_logit_diff < (1e-5 if exact else 5e-2)


@pytest.mark.slow
def test_binary_activation_keeps_sign_of_zero_positive(tmp_path):
    """Inputs with exact zeros (after a ReLU): ONNX's Sign would give 0 there."""
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3, bias=False), nn.Flatten())
    quant.quantize(model, quant.QuantConfig(w="binary", a="binary", first="same",
                                            last="same"))
    model.eval()
    x = _images(4)
    assert (torch.relu(x) == 0).float().mean() > 0.4
    path = export_onnx(model, x, tmp_path / "sign.onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "Sign" not in ops and "Where" in ops
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # sum order only


@pytest.mark.slow
def test_post_training_int8_of_a_bn_fused_model_runs_integer_kernels(tmp_path):
    bnfuse = pytest.importorskip("netshrink.bnfuse")
    model = bnfuse.fuse(_warm(_small_cnn()))
    quant.calibrate(model, [_images(32, seed=60)])  # asymmetric per-channel weights
    path = export_onnx(model, _images(2), tmp_path / "ptq.onnx")
    report = check_onnx(path, model, _images(64, seed=9))
    assert report.agreement >= 0.98
    assert report.integer_ops.get("QLinearConv", 0) >= 2
