"""export_onnx / check_onnx: float models round trip, int8 QAT as QDQ with int8 weights that
ONNX Runtime runs as integer kernels, dynamic batch, clear errors."""

from collections import Counter

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from netshrink.deploy import (
    INTEGER_OPS,
    ExportError,
    OnnxCheck,
    check_onnx,
    deploy_copy,
    export_onnx,
)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random-but-fixed CIFAR-shaped images."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _zoo_model(name: str) -> nn.Module:
    models = pytest.importorskip("netshrink.models")
    torch.manual_seed(0)
    return _randomise_bn(models.create_model(name, width=0.25))


def _int8_qat_nin() -> nn.Module:
    """NIN (width 0.25) after int8 affine QAT forwards: observers and BN statistics set."""
    quant = pytest.importorskip("netshrink.quant")
    model = quant.quantize_(_zoo_model("nin"), quant.QuantConfig(w=8, a=8, scheme="int8_affine"))
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(_images(64, seed=100 + seed))
    return model.eval()


def _initializers(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in proto.graph.initializer}


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    model = _int8_qat_nin()
    path = export_onnx(model, _images(1), tmp_path_factory.mktemp("int8") / "nin_int8.onnx")
    return model, path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nin", "resnet18_cifar"])
def test_float_models_round_trip(tmp_path, name):
    model = _zoo_model(name)
    path = export_onnx(model, _images(2), tmp_path / f"{name}.onnx")
    x = _images(8, seed=1)
    report = check_onnx(path, model, x, torch.randint(0, 10, (8,)))
    assert isinstance(report, OnnxCheck) and report.images == 8
    assert report.agreement == 1.0 and report.torch_accuracy == report.onnx_accuracy
    assert report.max_rel_logit_diff < 1e-4
    assert report.integer_ops == {}
    proto = onnx.load(path)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in proto.graph.initializer
               if len(t.dims) == 4)


@pytest.mark.slow
def test_int8_qat_exports_int8_weights_and_runs_integer_kernels(int8_export):
    model, path = int8_export
    proto = onnx.load(path)
    inits = _initializers(proto)
    quant = pytest.importorskip("netshrink.quant")
    n_quantized = len(quant.quantized_layers(model))
    # every quantized layer's weight is an int8 initializer behind a DequantizeLinear
    # (and, where ORT fuses it, its bias is int32 codes behind one: BatchNorm folded in)
    dq_inits = [inits[n.input[0]] for n in proto.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    dq_weights = [t for t in dq_inits if len(t.dims) == 4]
    assert len(dq_weights) == n_quantized == 7
    assert all(t.data_type == onnx.TensorProto.INT8 for t in dq_weights)
    dq_biases = [t for t in dq_inits if len(t.dims) == 1]
    assert len(dq_biases) == 6  # the seventh feeds the float last conv: float bias
    assert all(t.data_type == onnx.TensorProto.INT32 for t in dq_biases)
    float_weights = [t for t in inits.values()
                     if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4]
    assert len(float_weights) == 2  # first and last conv stay float (QuantConfig default)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] == n_quantized
    # the model's own scales: each input QuantizeLinear carries its layer's observed scale
    scales = sorted(float(onnx.numpy_helper.to_array(inits[n.input[1]]))
                    for n in proto.graph.node if n.op_type == "QuantizeLinear")
    expected = sorted(float(layer.input_quant.params()[0])
                      for _, layer in quant.quantized_layers(model))
    assert scales == pytest.approx(expected, rel=1e-7)

    report = check_onnx(path, model, _images(256, seed=7), torch.randint(0, 10, (256,)))
    assert report.agreement >= 0.99
    assert report.integer_ops["QLinearConv"] == 6  # all but the one feeding the float conv
    assert set(report.integer_ops) <= INTEGER_OPS
    assert report.describe()["integer_ops"] == report.integer_ops


@pytest.mark.slow
def test_file_holds_the_weights_and_little_else(int8_export):
    """No exporter metadata (module paths, stack traces), doc strings or intermediate shapes:
    the int8 file is its initializers plus a small graph."""
    _, path = int8_export
    proto = onnx.load(path)
    assert not any(n.metadata_props or n.doc_string for n in proto.graph.node)
    assert not proto.graph.value_info
    weights = sum(t.ByteSize() for t in proto.graph.initializer)
    assert path.stat().st_size < weights + 25_000  # was weights + 80 KB with the metadata
    # what was stripped was not needed: the file still runs, with a symbolic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": _images(3).numpy()})[0].shape == (3, 10)


@pytest.mark.slow
def test_last_quantized_layer_before_a_float_one_hands_it_a_float_output(int8_export):
    """No QuantizeLinear / DequantizeLinear after the last quantized conv (it has no output
    scale, and the float conv after it wants floats): its output goes straight on."""
    _, path = int8_export
    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    last_float = convs[-1]  # NIN's float last conv: its input is float, not a DQ
    assert last_float.input[1] in _initializers(onnx.load(path))
    upstream = producer[last_float.input[0]]
    seen = []
    while upstream.op_type not in ("Conv", "DequantizeLinear", "QuantizeLinear"):
        seen.append(upstream.op_type)
        upstream = producer[upstream.input[0]]
    assert upstream.op_type == "Conv", seen  # the quantized conv's float output, unquantized
    assert producer[upstream.input[1]].op_type == "DequantizeLinear"  # int8 weights


@pytest.mark.slow
def test_dynamic_batch(int8_export):
    model, path = int8_export
    graph_input = onnx.load(path).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # symbolic, not a number
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = _images(n, seed=n)
        out = session.run(None, {"input": x.numpy()})[0]
        assert out.shape == (n, 10)
        with torch.no_grad():
            assert (torch.from_numpy(out).argmax(1) == model(x).argmax(1)).all()


def test_deploy_copy_computes_the_exported_values_and_leaves_the_model_alone():
    model = _int8_qat_nin()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images(16, seed=3)
    copy = deploy_copy(model)
    with torch.no_grad():
        assert torch.allclose(copy(x), model(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


class _DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


@pytest.mark.slow
def test_unsupported_layer_is_named(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), _DataDependent(), nn.Flatten())
    with pytest.raises(ExportError, match=r"layer '2' \(_DataDependent\) cannot be exported"):
        export_onnx(model, _images(2), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_form_without_int8_codes_is_named(tmp_path):
    """DoReFa 8-bit weights take 256 odd levels -255..255 (x 1/255): beyond int8."""
    quant = pytest.importorskip("netshrink.quant")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    quant.quantize_(model, quant.QuantConfig(w=8, a=8, first="same"))
    with pytest.raises(ExportError, match=r"layer '0' \(QuantConv2d\) cannot be exported: its "
                                          r"weight codes span -\d+\.\.\d+ \(8-bit\), beyond"):
        export_onnx(model, _images(2), tmp_path / "w8.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    model = nn.Sequential(nn.Flatten())
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, _images(1), tmp_path / "m.onnx", opset=13)
    with pytest.raises(ExportError, match="example_input must be a tensor"):
        export_onnx(model, [1, 2], tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="labels must have shape"):
        check_onnx(tmp_path / "m.onnx", model, _images(2), torch.zeros(3))
