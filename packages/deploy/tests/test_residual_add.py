"""int8 ResNets run on integer kernels end to end: with quantized residual adds
(``netshrink.quant.quant_add``) every quantized conv of resnet18_cifar is a QLinearConv and
every residual add a QLinearAdd in ONNX Runtime's optimized graph (before: 8 of 19 convs, no
integer add), and an exported add computes what the PyTorch ``QuantAdd`` computes, within one
quantization step."""

from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from netshrink.deploy import check_onnx, export_onnx

quant = pytest.importorskip("netshrink.quant")
from netshrink.models import create_model  # noqa: E402
from netshrink.quant.quant_add import QuantAdd  # noqa: E402

INT8 = quant.QuantConfig(w=8, a=8, scheme="int8_affine")


def _images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _warm(model: nn.Module, size: int = 32) -> nn.Module:
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(_images(16, seed=50 + seed, size=size))
    return model.eval()


@pytest.mark.slow
def test_int8_resnet18_runs_every_conv_and_add_on_integer_kernels(tmp_path):
    torch.manual_seed(0)
    model = _warm(quant.quantize_(create_model("resnet18_cifar", width=0.125), INT8))
    convs = len(quant.quantized_layers(model)) - 0  # the stem and fc stay float
    assert convs == 19
    path = export_onnx(model, _images(1), tmp_path / "r18.onnx")
    report = check_onnx(path, model, _images(64, seed=3))
    ops = report.optimized_ops
    assert ops.get("QLinearConv") == 19 and ops.get("QLinearAdd") == 8, ops
    assert ops.get("Conv", 0) + ops.get("FusedConv", 0) == 1, ops  # the float stem only
    assert report.agreement >= 0.85  # random weights: near-tied logits (trained: 99.5 %)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)) + x)


def _residual_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 8, 3, padding=1), relu=nn.ReLU(), block=_Block(),
        block2=_Block()))


def test_two_blocks_fuse_into_integer_convs_and_adds(tmp_path):
    model = _warm(quant.quantize_(_residual_net(), INT8), size=8)
    add = model.block2.get_submodule("quant_add")
    assert isinstance(add, QuantAdd) and add.relu and add.b_quant is None
    path = export_onnx(model, _images(1, size=8), tmp_path / "res.onnx")
    report = check_onnx(path, model, _images(32, seed=7, size=8))
    assert report.optimized_ops.get("QLinearAdd") == 2, report.optimized_ops
    assert report.optimized_ops.get("QLinearConv") == 2, report.optimized_ops


class _AddOnly(nn.Module):
    """A ``QuantAdd`` alone (its operands are float: both get quantized)."""

    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.add = QuantAdd(relu=relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, x.flip(1) * 0.5)


@pytest.mark.parametrize("relu", [True, False])
def test_exported_add_matches_quant_add_within_one_step(tmp_path, relu):
    model = _AddOnly(relu)
    model.train()
    with torch.no_grad():
        model(_images(16, seed=1, size=8))
    model.eval()
    path = export_onnx(model, _images(1, size=8), tmp_path / "add.onnx")
    x = _images(64, seed=7, size=8)
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    step = float(model.add.out_quant.params()[0])
    assert np.abs(got - ref).max() <= step * 1.001
    assert np.mean(np.abs(got - ref) <= 1e-6) > 0.99  # almost every code is the same
    assert check_onnx(path, model, x).optimized_ops.get("QLinearAdd") == 1


def _codes_equal_count(tmp_path, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(codes that differ, codes) between ONNX Runtime's integer kernels and PyTorch at the
    model's output, which is a ``QuantAdd``'s (a DequantizeLinear of its uint8 codes)."""
    path = export_onnx(model, x[:1], tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    out = [m for m in model.modules() if isinstance(m, QuantAdd)][-1].out_quant
    step = float(out.params()[0])
    differ = np.abs(got - ref) > step / 2
    return int(differ.sum()), differ.size


def test_int8_convs_and_adds_compute_the_codes_of_the_integer_kernels(tmp_path):
    """Every output code of two int8 residual blocks (QLinearConv -> QLinearAdd, twice) is
    what PyTorch computes: each conv adds its bias as int32 codes at scale s_in * s_w, as
    QLinearConv does (with a float bias ~0.15 % of these codes were one step off)."""
    config = quant.QuantConfig(w=8, a=8, scheme="int8_affine", first="same", last="same")
    model = _warm(quant.quantize_(_residual_net(), config), size=8)
    conv2 = model.block2.conv  # its input quantizer dropped: it reads block's QuantAdd
    assert conv2.input_quant is None
    assert conv2.input_grid() is model.block.get_submodule("quant_add").out_quant
    ops = check_onnx(export_onnx(model, _images(1, size=8), tmp_path / "m.onnx"), model,
                     _images(4, size=8)).optimized_ops
    assert ops.get("QLinearConv") == 3 and ops.get("QLinearAdd") == 2, ops
    differ, total = _codes_equal_count(tmp_path, model, _images(256, seed=11, size=8))
    # float bias: 183-237 codes differ (seeds 11-13); int32 bias: 0-16 (float summation order)
    assert total == 256 * 8 * 8 * 8 and differ <= total * 5e-4, (differ, total)
