"""align_channels: int8 convs padded with zero weights to MLAS's fast-kernel channel counts,
computing exactly the same outputs in ONNX Runtime; left alone where padding could leak."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from netshrink.deploy import (
    MLAS_X86,
    ChannelAlignment,
    align_channels,
    export_onnx,
    unroll_stem,
)


def _conv(nodes, inits, name, x, c_in, c_out, k, rng, *, relu=True, w_zero_point=0,
          x_zero_point=0, stride=1):
    """``x`` (a float tensor name) -> Q -> DQ -> conv (int8 weights, int32 bias) -> [Relu];
    returns the output name."""
    s_in = np.float32(0.05)
    s_w = (rng.random(c_out) * 0.01 + 0.005).astype(np.float32)
    inits += [numpy_helper.from_array(np.array(s_in), f"{name}_xs"),
              numpy_helper.from_array(np.array(x_zero_point, np.uint8), f"{name}_xz"),
              numpy_helper.from_array(rng.integers(-127, 128, (c_out, c_in, k, k)).astype(
                  np.int8), f"{name}_w"),
              numpy_helper.from_array(s_w, f"{name}_ws"),
              numpy_helper.from_array(np.full(c_out, w_zero_point, np.int8), f"{name}_wz"),
              numpy_helper.from_array(rng.integers(-500, 500, c_out).astype(np.int32),
                                      f"{name}_b"),
              numpy_helper.from_array((s_in * s_w).astype(np.float32), f"{name}_bs"),
              numpy_helper.from_array(np.zeros(c_out, np.int32), f"{name}_bz")]
    nodes += [
        helper.make_node("QuantizeLinear", [x, f"{name}_xs", f"{name}_xz"], [f"{name}_xq"]),
        helper.make_node("DequantizeLinear", [f"{name}_xq", f"{name}_xs", f"{name}_xz"],
                         [f"{name}_xd"]),
        helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"],
                         [f"{name}_wd"], axis=0),
        helper.make_node("DequantizeLinear", [f"{name}_b", f"{name}_bs", f"{name}_bz"],
                         [f"{name}_bd"], axis=0),
        helper.make_node("Conv", [f"{name}_xd", f"{name}_wd", f"{name}_bd"], [f"{name}_y"],
                         pads=[k // 2] * 4, strides=[stride, stride])]
    out = f"{name}_y"
    if relu:
        nodes.append(helper.make_node("Relu", [out], [f"{name}_r"]))
        out = f"{name}_r"
    return out


def _model(tail: str = "conv", w_zero_point: int = 0, *, stem: int = 5, stride: int = 1,
           size: int | str = 16, channels: int = 3) -> onnx.ModelProto:
    """``channels`` (3) -> 12 (a ``stem`` x ``stem`` conv, ``stride``) -> MaxPool -> 20 (1x1)
    -> ``tail``: "conv" a float-output 20 -> 10 conv and a global average pool; "flatten"
    Flatten -> MatMul (the 20 channels leave as features); "output" the 20 channels are the
    graph's output. Input ``size`` x ``size`` (a name: not fixed in the graph)."""
    rng = np.random.default_rng(0)
    nodes: list = []
    inits: list = []
    a = _conv(nodes, inits, "a", "input", channels, 12, stem, rng, w_zero_point=w_zero_point,
              x_zero_point=128, stride=stride)
    nodes.append(helper.make_node("MaxPool", [a], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    b = _conv(nodes, inits, "b", "pool", 12, 20, 1, rng)
    if tail == "conv":
        c = _conv(nodes, inits, "c", b, 20, 10, 1, rng, relu=False)
        nodes.append(helper.make_node("GlobalAveragePool", [c], ["gap"]))
        nodes.append(helper.make_node("Flatten", ["gap"], ["output"]))
    elif tail == "flatten":
        # the requantization that makes b an integer conv, then the features leave
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "t_s"),
                  numpy_helper.from_array(np.array(0, np.uint8), "t_z"),
                  numpy_helper.from_array(rng.standard_normal((20 * 8 * 8, 10)).astype(
                      np.float32), "fc")]
        nodes += [helper.make_node("QuantizeLinear", [b, "t_s", "t_z"], ["tq"]),
                  helper.make_node("DequantizeLinear", ["tq", "t_s", "t_z"], ["td"]),
                  helper.make_node("Flatten", ["td"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "fc"], ["output"])]
    else:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "t_s"),
                  numpy_helper.from_array(np.array(0, np.uint8), "t_z")]
        nodes += [helper.make_node("QuantizeLinear", [b, "t_s", "t_z"], ["tq"]),
                  helper.make_node("DequantizeLinear", ["tq", "t_s", "t_z"], ["output"])]
    shape = ["N", 20, 8, 8] if tail == "output" else ["N", 10]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                   ["N", channels, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _value(model: onnx.ModelProto, name: str) -> np.ndarray:
    """Initializer ``name`` as the graph uses it: behind the Pad that pads it, if any."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    value = inits[name]
    for node in model.graph.node:
        if node.op_type == "Pad" and node.input[0] == name:
            pads = inits[node.input[1]]
            value = np.pad(value, list(zip(pads[:value.ndim], pads[value.ndim:],
                                                  strict=True)))
    return value


def _shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    return _value(model, name).shape


def _stored(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    return tuple({t.name: t for t in model.graph.initializer}[name].dims)


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def _conv_channels(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """(output, input) channels of each int8-weight conv, in graph order, as run."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        stored = dq.input[0]
        if stored not in inits:
            stored = producer[stored].input[0]  # behind its Pad
        found.append(_shape(model, stored)[:2])
    return found


def _images(n: int = 6, size: int = 16, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, channels, size, size)).astype(
        np.float32)


def test_padded_convs_compute_exactly_the_same(tmp_path):
    before = _model()
    after = _model()
    done = align_channels(after)
    assert done == {"outputs": 2, "inputs": 1}
    onnx.checker.check_model(after, full_check=True)
    # a: 3 -> 12 becomes 4 -> 16 (input Pad, output rounded up to 16 and a multiple of 8)
    assert _shape(after, "a_w") == (16, 4, 5, 5)
    assert _shape(after, "a_ws") == (16,) and _shape(after, "a_b") == (16,)
    # b reads the 16 channels; its 20 outputs reach only c (through Relu, Q, DQ): 20 -> 24,
    # and c (float output, not itself an integer conv) reads 24
    assert _shape(after, "b_w") == (24, 16, 1, 1) and _shape(after, "c_w") == (10, 24, 1, 1)
    # the file stores a weight unpadded behind a Pad node the runtimes fold at load, where
    # its zeros would take more room than the node (a: 4 x 75 + 16 x 25 codes), else padded
    assert _stored(after, "a_w") == (12, 3, 5, 5) and _stored(after, "c_w") == (10, 24, 1, 1)
    pads = [n for n in after.graph.node if n.op_type == "Pad"]
    assert sum(n.input[0] == "input" for n in pads) == 1  # the RGB input: 3 -> 4 channels
    assert sum(n.input[0] == "a_w" for n in pads) == 1 and len(pads) == 2
    # the new channels' weights are zero on both sides (their values are 0 as well; the
    # zero weights keep them out even where a per-channel op could make them nonzero)
    assert not _value(after, "a_w")[12:].any() and not _value(after, "a_w")[:, 3:].any()
    assert not _value(after, "b_w")[20:].any() and not _value(after, "b_w")[:, 12:].any()
    assert not _value(after, "c_w")[:, 20:].any() and not _value(after, "a_b")[12:].any()
    assert (_value(after, "a_ws")[12:] > 0).all()
    # ONNX Runtime still fuses a and b into integer kernels, and folds the weight Pads
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(after.SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("Pad") == 1, ops
    x = _images()
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


def test_padding_stops_where_channels_would_leave_through_other_ops():
    for tail in ("flatten", "output"):
        model = _model(tail)
        align_channels(model)
        # a's 12 outputs reach only b (padded); b's 20 outputs leave the conv chain
        assert _shape(model, "a_w") == (16, 4, 5, 5), tail
        assert _shape(model, "b_w") == (20, 16, 1, 1), tail
        x = _images()
        np.testing.assert_array_equal(_run(model, x), _run(_model(tail), x), err_msg=tail)


def test_asymmetric_weights_are_left_alone():
    """MLAS's fast int8 conv needs weight zero points 0; a conv without them keeps its
    channels (padding would cost multiply-adds and buy nothing)."""
    model = _model(w_zero_point=3)
    align_channels(model)
    assert _shape(model, "a_w") == (12, 3, 5, 5)


def test_channel_alignment_counts_and_validation():
    assert MLAS_X86.inputs(3) == 4 and MLAS_X86.inputs(8) == 8
    assert MLAS_X86.outputs(12) == 16 and MLAS_X86.outputs(20) == 24
    assert MLAS_X86.outputs(24) == 24 and MLAS_X86.outputs(1) == 1
    with pytest.raises(ValueError, match="output_multiple=0"):
        ChannelAlignment(output_multiple=0)
    with pytest.raises(ValueError, match="input_multiple=True"):
        ChannelAlignment(input_multiple=True)
    with pytest.raises(ValueError, match="max_growth=0.5"):
        ChannelAlignment(max_growth=0.5)
    # growth capped at 2x by default: 7 -> 16 and 1 -> 4 stay, 8 -> 16 pads; at 1.5x 8 stays
    assert MLAS_X86.outputs(8) == 16 and MLAS_X86.outputs(11) == 16
    assert MLAS_X86.outputs(7) == 7 and MLAS_X86.inputs(1) == 1
    assert ChannelAlignment(max_growth=1.5).outputs(8) == 8
    assert ChannelAlignment(max_growth=4).inputs(1) == 4


def _pruned_int8_exports(tmp_path, arch: str, prune: dict) -> tuple[onnx.ModelProto,
                                                                   onnx.ModelProto]:
    """``arch`` at width 0.25 pruned by ``prune`` (a prune.channels config), int8 QAT with
    every conv quantized (observers calibrated on random batches), exported with the default
    alignment and with ``align=None``; ORT's outputs of the two are checked equal."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("netshrink.models")
    quant = pytest.importorskip("netshrink.quant")
    core = pytest.importorskip("netshrink.core")
    torch.manual_seed(0)
    pruned = core.stage_from_description({"kind": "prune.channels", "config": {
        "prune": prune}}).apply(models.create_model(arch, width=0.25))
    qmodel = quant.quantize_(pruned, quant.QuantConfig(w=8, a=8, scheme="int8_affine",
                                                       first="same", last="same"))
    qmodel.train()
    with torch.no_grad():
        for seed in range(2):
            qmodel(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
    qmodel.eval()
    example = torch.randn(1, 3, 32, 32)
    aligned = onnx.load(export_onnx(qmodel, example, tmp_path / "aligned.onnx"))
    plain = onnx.load(export_onnx(qmodel, example, tmp_path / "plain.onnx", align=None))
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5)).numpy()
    np.testing.assert_array_equal(_run(aligned, x), _run(plain, x))
    return aligned, plain


@pytest.mark.slow
def test_export_aligns_a_pruned_int8_nin_and_keeps_its_outputs(tmp_path):
    """A NIN pruned to 12 / 20-channel layers, int8 QAT: the default export pads them (and the
    RGB input to 4 channels) and ONNX Runtime gives the same logits as without padding."""
    aligned, plain = _pruned_int8_exports(
        tmp_path, "nin", {"criterion": "l1", "amount": 0.5, "scope": "per_layer"})
    counts = _conv_channels(aligned)
    assert counts[0][1] == 4 * 5  # the RGB input padded to 4, the stem's 5 rows unrolled
    # every conv ORT fuses (all but the last, whose output stays float) is aligned
    assert all(o % 8 == 0 and o >= 16 and i % 4 == 0 for o, i in counts[:-1]), counts
    assert counts != _conv_channels(plain)
    # the file keeps the weights unpadded (but the stem's, rearranged: +600 bytes): the Pad,
    # Slice and Concat nodes add a few KB (36.6 -> 39.5 KB; weights stored padded: 40.2)
    sizes = [(tmp_path / f"{n}.onnx").stat().st_size for n in ("aligned", "plain")]
    assert sizes[0] < 1.1 * sizes[1], sizes


@pytest.mark.slow
def test_export_aligns_a_pruned_int8_resnet_through_its_residual_adds(tmp_path):
    """ResNet-18 at width 0.25 pruned to 50 % of its MACs (multiples of 8) keeps 8 channels in
    its first stage, whose convs meet in residual Adds: the export pads the stem, the blocks'
    convs and the Adds' other inputs together to 16, and ONNX Runtime gives the same logits
    as without padding."""
    aligned, plain = _pruned_int8_exports(
        tmp_path, "resnet18_cifar", {"criterion": "l1", "mode": "regular", "round_to": 8,
                                     "scope": "per_layer", "macs_target": 0.5})
    before, after = _conv_channels(plain), _conv_channels(aligned)
    assert before[:5] == [(8, 3)] + [(8, 8)] * 4  # the stem and the first stage's 4 convs
    assert after[:5] == [(16, 4 * 3)] + [(16, 16)] * 4  # (the stem's 3 rows unrolled)
    assert all(o % 8 == 0 and o >= 16 and i % 4 == 0 for o, i in after), after
    ops = _optimized_ops(aligned, tmp_path)
    assert ops.count("QLinearConv") == len(after) and ops.count("QLinearAdd") == 8, ops


def test_stem_rows_unrolled_into_channels_compute_exactly_the_same(tmp_path):
    """The 5x5 stem over the 4 aligned channels becomes a 1x5 conv over 20 channels read from
    5 row-shifted slices of the padded uint8 image: same outputs, still a QLinearConv."""
    before, after = _model(), _model()
    align_channels(after)
    assert unroll_stem(after) == 1
    onnx.checker.check_model(after, full_check=True)
    conv = next(n for n in after.graph.node if n.op_type == "Conv")
    attrs = {a.name: list(helper.get_attribute_value(a)) for a in conv.attribute}
    assert attrs["pads"] == [0, 2, 0, 2] and attrs["strides"] == [1, 1]  # height: the Pad
    ops = [n.op_type for n in after.graph.node]
    assert ops.count("Slice") == 5 and ops.count("Concat") == 1 and ops.count("Pad") == 1
    pad = next(n for n in after.graph.node if n.op_type == "Pad")
    assert pad.input[2].endswith("_xz")  # padded with the input's zero point, after Q
    assert _optimized_ops(after, tmp_path).count("QLinearConv") == 2
    x = _images()
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


@pytest.mark.parametrize(("stem", "stride", "size"), [(3, 2, 15), (3, 1, 9), (7, 2, 16)])
def test_strided_and_odd_stems_unroll_exactly(stem, stride, size):
    before = _model(stem=stem, stride=stride, size=size)
    after = _model(stem=stem, stride=stride, size=size)
    assert unroll_stem(after) == 1  # 3 channels, no align: unrolled as they are
    x = _images(size=size)
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


def test_stems_left_alone():
    dynamic = _model(size="H")  # the height is not in the graph: the slices cannot be sized
    assert unroll_stem(dynamic) == 0
    wide = _model(channels=32)  # 5 x 32 channels: MLAS's conv is efficient already
    assert unroll_stem(wide) == 0
    assert unroll_stem(_model(), max_channels=10) == 0


def _residual_model(identity: str = "stem") -> onnx.ModelProto:
    """stem a (3 -> 12) -> block b -> c (3x3, 12 channels) -> requantized -> Add -> Relu ->
    d (12 -> 10, float output) -> global average pool. ``identity``: the Add's other input:
    "stem" the stem's (requantized) output, a residual block; "constant" a per-channel
    constant (the padded channels would leave the Add as that constant: no padding)."""
    rng = np.random.default_rng(2)
    nodes: list = []
    inits: list = []
    a = _conv(nodes, inits, "a", "input", 3, 12, 3, rng, x_zero_point=128)
    b = _conv(nodes, inits, "b", a, 12, 12, 3, rng)
    c = _conv(nodes, inits, "c", b, 12, 12, 3, rng, relu=False)
    inits += [numpy_helper.from_array(np.array(0.1, np.float32), "cq_s"),
              numpy_helper.from_array(np.array(128, np.uint8), "cq_z"),
              numpy_helper.from_array(rng.standard_normal((1, 12, 1, 1)).astype(np.float32),
                                      "k")]
    nodes += [helper.make_node("QuantizeLinear", [c, "cq_s", "cq_z"], ["cq"]),
              helper.make_node("DequantizeLinear", ["cq", "cq_s", "cq_z"], ["cd"]),
              helper.make_node("Add", ["cd", "b_xd" if identity == "stem" else "k"], ["sum"]),
              helper.make_node("Relu", ["sum"], ["sum_r"])]
    d = _conv(nodes, inits, "d", "sum_r", 12, 10, 1, rng, relu=False)
    nodes += [helper.make_node("GlobalAveragePool", [d], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["output"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                   ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_a_residual_add_pads_both_its_inputs_convs_together(tmp_path):
    """The stem's output and the block's last conv meet in an Add: both are padded 12 -> 16
    (the same channels), and every conv reading the sum or the stem's output gets zero input
    weights; ONNX Runtime gives the same outputs and still fuses the Add (QLinearAdd)."""
    before, after = _residual_model(), _residual_model()
    assert align_channels(after) == {"outputs": 2, "inputs": 1}
    onnx.checker.check_model(after, full_check=True)
    assert _shape(after, "a_w") == (16, 4, 3, 3)  # and the RGB input 3 -> 4
    assert _shape(after, "b_w") == (16, 16, 3, 3)  # its own output, and the stem's input
    assert _shape(after, "c_w") == (16, 16, 3, 3)  # padded with a, not on its own
    assert _shape(after, "d_w") == (10, 16, 1, 1)  # reads the sum
    assert not _value(after, "c_w")[12:].any() and not _value(after, "d_w")[:, 12:].any()
    assert not _value(after, "c_b")[12:].any() and (_value(after, "c_ws")[12:] > 0).all()
    ops = _optimized_ops(after, tmp_path)
    assert ops.count("QLinearConv") == 3 and ops.count("QLinearAdd") == 1, ops
    x = _images()
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


def test_an_add_of_a_constant_stops_the_padding():
    """Adding a per-channel constant would make the padded channels nonzero: the block's last
    conv keeps its 12 outputs; the stem (read only by the block's first conv) is padded."""
    model = _residual_model("constant")
    align_channels(model)
    assert _shape(model, "c_w") == (12, 16, 3, 3) and _shape(model, "d_w") == (10, 12, 1, 1)
    assert _shape(model, "a_w") == (16, 4, 3, 3)
    x = _images()
    np.testing.assert_array_equal(_run(model, x), _run(_residual_model("constant"), x))
