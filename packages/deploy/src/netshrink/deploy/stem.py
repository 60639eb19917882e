"""Unroll an int8 stem conv's kernel rows into channels, so ONNX Runtime's int8 conv runs it
at a fraction of the cost, computing the same function.

A CNN's first conv reads the image: 3 channels (4 after ``netshrink.deploy.align``), a 3x3 to
7x7 kernel, at full resolution. ONNX Runtime's fast int8 conv (MLAS's indirect convolution)
walks, for every output pixel, one pointer per kernel position and does 4 channels' worth of
multiply-adds there, so with 4 channels the pointer walking dominates: NIN's 5x5 stem (4 -> 24
channels) took 3.0 ms of 6.7 at batch 64, as long as the same conv in float.

``unroll_stem`` rewrites such a conv ``KH x KW`` over ``C`` channels into a ``1 x KW`` conv over
``KH * C`` channels: the quantized image's height is padded once (uint8, with the input's zero
point, as the conv's own zero padding would read it), ``KH`` row-shifted views of it
(``Slice`` along the height, step = the stride) are concatenated along the channels, and the
weights are rearranged to match (``w'[m, dy * C + c, 0, dx] = w[m, c, dy, dx]``). Every output
is the same sum of the same integer products; only the kernel positions per pixel drop from
``KH * KW`` to ``KW``.
The copies cost a little (the Slices, Concat and a larger NCHW -> NHWC transpose before the
conv); measured on NIN (width 0.25, pruned 50 % + int8, batch 64, ORT): stem conv 3.0 -> 1.4 ms,
the whole net x2.57 -> x3.05 over ORT float in one paired run.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from netshrink.deploy.align import _weight, _weight_codes
from netshrink.deploy.fold import _attr, _Graph

#: Largest ``KH * C`` (channels of the unrolled conv) worth unrolling: beyond it MLAS's conv
#: already does enough multiply-adds per kernel position.
MAX_UNROLLED_CHANNELS = 64


def unroll_stem(model: onnx.ModelProto, max_channels: int = MAX_UNROLLED_CHANNELS) -> int:
    """Unroll, in place, the kernel rows of each integer conv that reads the graph's input
    (see the module docstring) when ``KH * C <= max_channels``; return how many."""
    g = _Graph(model.graph)
    inputs = {i.name: i for i in g.graph.input}
    done = 0
    for conv in [n for n in g.graph.node if n.op_type == "Conv"]:
        if _unroll(g, conv, inputs, max_channels):
            done += 1
            g.refresh()
    if done:
        del g.graph.value_info[:]
        used = {i for n in g.graph.node for i in n.input}
        for t in [t for t in g.graph.initializer if t.name not in used]:
            g.graph.initializer.remove(t)
    return done


def _static_hw(value: onnx.ValueInfoProto) -> tuple[int, int] | None:
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[2:]):
        return None
    return dims[2].dim_value, dims[3].dim_value


def _unroll(g: _Graph, conv: onnx.NodeProto, inputs: dict[str, onnx.ValueInfoProto],
            max_channels: int) -> bool:
    found = _weight_codes(g, conv)
    x_dq = g.producer.get(conv.input[0])
    if found is None or x_dq is None or x_dq.op_type != "DequantizeLinear" or \
            g.only_consumer(x_dq.output[0]) is not conv:
        return False
    w_dq, codes = found
    q = g.producer.get(x_dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3 or \
            g.only_consumer(q.output[0]) is not x_dq or g.const(q.input[2]) is None:
        return False
    source, channel_pad = q.input[0], None
    producer = g.producer.get(source)
    if producer is not None and producer.op_type == "Pad" and \
            producer.name.startswith("align_pad") and g.only_consumer(source) is q:
        channel_pad, source = producer, producer.input[0]  # align's 3 -> 4 channel Pad
    if source not in inputs or codes.ndim != 4 or int(_attr(conv, "group", 1)) != 1:
        return False
    _, c, kh, kw = codes.shape
    hw = _static_hw(inputs[source])
    strides = list(_attr(conv, "strides", [1, 1]))
    pads = list(_attr(conv, "pads", [0, 0, 0, 0]))
    if hw is None or kh < 2 or kh * c > max_channels or \
            list(_attr(conv, "dilations", [1, 1])) != [1, 1] or \
            _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    stored_channels = inputs[source].type.tensor_type.shape.dim[1]
    if not stored_channels.HasField("dim_value") or stored_channels.dim_value > c:
        return False
    height = hw[0] + pads[0] + pads[2]
    rows = (height - kh) // strides[0] + 1
    if rows < 1:
        return False
    # one uint8 Pad after Q: the channels align added (zero weights read them) and the
    # conv's zero padding of the height, with the input's zero point (what QLinearConv pads
    # with); the conv keeps padding the width itself (a smaller tensor to slice and copy)
    new_pads = [0, 0, pads[0], 0, 0, c - stored_channels.dim_value, pads[2], 0]
    nodes = g.graph.node
    if channel_pad is not None:
        nodes.remove(channel_pad)
        q.input[0] = source
    padded = g.new_name("stem_padded")
    new_nodes = [helper.make_node(
        "Pad", [q.output[0], g.add_const(np.array(new_pads, np.int64), "stem_pads"), q.input[2]],
        [padded], name=g.new_name("stem_pad"), mode="constant")]
    pieces = []
    for dy in range(kh):
        piece = g.new_name(f"stem_row{dy}")
        new_nodes.append(helper.make_node(
            "Slice", [padded, g.add_const(np.array([dy], np.int64), "start"),
                      g.add_const(np.array([dy + strides[0] * (rows - 1) + 1], np.int64), "end"),
                      g.add_const(np.array([2], np.int64), "axis"),
                      g.add_const(np.array([strides[0]], np.int64), "step")],
            [piece], name=g.new_name("stem_slice")))
        pieces.append(piece)
    unrolled = g.new_name("stem_unrolled")
    new_nodes.append(helper.make_node("Concat", pieces, [unrolled], axis=1,
                                      name=g.new_name("stem_concat")))
    at = list(nodes).index(x_dq)
    for offset, node in enumerate(new_nodes):
        nodes.insert(at + offset, node)
    x_dq.input[0] = unrolled
    weights = np.concatenate([codes[:, :, dy:dy + 1, :] for dy in range(kh)], axis=1)
    old_weight = g.producer.get(w_dq.input[0])
    if old_weight is not None and _weight(g, w_dq.input[0]) is not None:
        nodes.remove(old_weight)  # align's Pad of the stored weight: replaced as a whole
    w_dq.input[0] = g.add_const(np.ascontiguousarray(weights), "stem_codes")
    _set_ints(conv, "pads", [0, pads[1], 0, pads[3]])  # the Pad above padded the height
    _set_ints(conv, "strides", [1, strides[1]])
    if any(a.name == "kernel_shape" for a in conv.attribute):
        _set_ints(conv, "kernel_shape", [1, kw])
    return True


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, values))


__all__ = ["MAX_UNROLLED_CHANNELS", "unroll_stem"]
