"""Every quantized form (DoReFa k-bit, PACT, LSQ, ternary, binary, bnfuse-fused, PTQ with
BatchNorms left) exports as int8 QDQ that ONNX Runtime runs on QLinearConv, agreeing with
PyTorch on >= 99 % of 256 images (ternary and binary exactly); the layer-by-layer export stays
exact; binary activations keep sign(0) = +1, also after an integer conv."""

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


def _signed_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """BatchNorms with about 30 % negative gammas and nonzero shifts: folding them into a
    conv negates those channels' codes and moves the shift into the int32 bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                sign = torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0)
                m.weight.copy_((torch.rand(n, generator=g) + 0.5) * sign)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def _form(name: str) -> nn.Module:
    """``_small_cnn`` in the quantized form ``name``, warmed (observers, BN statistics)."""
    Q = quant.QuantConfig
    configs = {
        "w4a4": Q(w=4, a=4, first="same", last="same"), "w3a3": Q(w=3, a=3),
        "w2a2": Q(w=2, a=2), "pact": Q(w=4, a=4, a_quantizer="pact"),
        "w2a2_lsq": Q(w=2, a=2, a_quantizer="lsq"),
        "ternary": Q(w="ternary", a="ternary", last="same"),
        "binary": Q(w="binary", a="binary", binary_scale=False),
        "binary_scaled": Q(w="binary", a="binary"),
    }
    if name == "ptq_bn_left":  # post-training int8 with the BatchNorms still in the graph
        model = _warm(_signed_bn(_small_cnn()))
        quant.calibrate_(model, [_images(32, seed=60)])
        return model.eval()
    model = _warm(quant.quantize_(_signed_bn(_small_cnn()), configs[name.removesuffix("_bnfused")]))
    if name.endswith("_bnfused"):  # BN folded into the layers' output scale and bias (Mul, Add)
        model = pytest.importorskip("netshrink.bnfuse").fuse(model)
    return model


#: form -> (QLinearConv count in ORT's optimized graph, largest relative logit difference).
#: Fused: each quantized Conv whose output reaches another layer's QuantizeLinear (the
#: ConvTranspose has no QDQ fusion in ORT's CPU provider; the conv before the global pool
#: and the Linear feed float ops). Ternary and binary stay exact (their weight codes are
#: stretched x64, so the int32 bias keeps the float bias' decisions; a sign's bias rounds
#: down, exactly); DoReFa / PACT / LSQ / int8 move by an activation level where the int32
#: bias (1/K of an accumulator step) or QuantizeLinear's division crosses a rounding tie.
FORMS = {
    "w4a4": (2, 1e-1), "w3a3": (1, 1e-1), "w2a2": (1, 1e-1), "pact": (1, 1e-1),
    "w2a2_lsq": (1, 5e-2), "ternary": (1, 1e-5), "binary": (1, 1e-5),
    "binary_scaled": (1, 1e-5), "w4a4_bnfused": (2, 1e-1), "ptq_bn_left": (2, 5e-2),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FORMS))
def test_forms_run_integer_kernels(tmp_path, name):
    model = _form(name)
    path = export_onnx(model, _images(1), tmp_path / f"{name}.onnx")
    weights = _int8_weights(path)
    assert len(weights) >= len(quant.quantized_layers(model))  # + int32 bias codes
    assert all(t.data_type in {onnx.TensorProto.INT8, onnx.TensorProto.INT32} for t in weights)
    report = check_onnx(path, model, _images(256, seed=9))
    qlinear, tolerance = FORMS[name]
    assert report.integer_ops == {"QLinearConv": qlinear}
    assert report.agreement >= 0.99
    assert report.max_rel_logit_diff < tolerance


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exact"), [("w4a4", False), ("w2a2_lsq", True),
                                             ("ternary", True), ("binary", True)])
def test_layer_by_layer_export_is_exact_and_float(tmp_path, name, exact):
    """``integer_kernels=False``: the part-1 export, BatchNorm and Clip between conv and Q,
    which ORT keeps float."""
    model = _form(name)
    path = export_onnx(model, _images(1), tmp_path / f"{name}.onnx", integer_kernels=False)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(path).graph.node}
    report = check_onnx(path, model, _images(64, seed=9))
    assert report.agreement == 1.0 and report.integer_ops == {}
    # binary, ternary and LSQ compute exactly what the form says; DoReFa / PACT activations
    # divide by clip / n where PyTorch multiplies by n / clip (ulp differences, rare ties)
    assert report.max_rel_logit_diff < (1e-5 if exact else 5e-2)


@pytest.mark.slow
def test_binary_activation_keeps_sign_of_zero_positive(tmp_path):
    """Inputs with exact zeros (after a ReLU): ONNX's Sign would give 0 there."""
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3, bias=False), nn.Flatten())
    quant.quantize_(model, quant.QuantConfig(w="binary", a="binary", first="same",
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
    quant.calibrate_(model, [_images(32, seed=60)])  # asymmetric per-channel weights
    path = export_onnx(model, _images(2), tmp_path / "ptq.onnx")
    report = check_onnx(path, model, _images(64, seed=9))
    assert report.agreement >= 0.98
    assert report.integer_ops.get("QLinearConv", 0) >= 2


@pytest.mark.slow
def test_binary_activation_after_an_integer_conv_keeps_its_sign(tmp_path):
    """A conv feeding a binary activation runs as QLinearConv whose int32 bias rounds down:
    here the float bias is 63.7 accumulator steps (weight codes stretched x64), so where the
    product is -64 the output is -0.3 steps, sign -1; a bias rounded to nearest (64) would
    give exactly 0 there, sign +1."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 1, 1), nn.Flatten())
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(1.0 - 0.3 / 64)
        model[1].weight.fill_(1.0)
    quant.quantize_(model, quant.QuantConfig(w="binary", a="binary", binary_scale=False,
                                            first="same", last="same"))
    model.eval()
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, x, tmp_path / "sign_floor.onnx")
    report = check_onnx(path, model, x)
    assert report.integer_ops == {"QLinearConv": 1}
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert (expected < 0).any()  # the -0.3-step outputs reached the second layer as -1
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
