"""Pad int8 convs' channels with zero weights to the counts ONNX Runtime's fast int8 conv needs.

ONNX Runtime's CPU QLinearConv has two paths. The fast one (MLAS's symmetric "indirect"
convolution, ``MlasConvSym``) reads the uint8 input in place through an indirection buffer;
the other copies an im2col matrix per output tile and calls a GEMM. The fast one is taken
only when the weights are symmetric (every zero point 0) and the channel counts fit its
kernels: on x86 (AVX2, AVX-VNNI, AVX-512) input channels a multiple of 4, output channels a
multiple of 8 (4 on AVX-512) and at least 16 (``MlasConvSymPackWSize``). An RGB input
(3 channels) or a pruned layer (12, 20 channels) misses it: on NIN at width 0.25 pruned 50 %,
the first conv (3 -> 24) took 40 % of the int8 model's time at batch 64, slower than the same
conv in float.

``align_channels`` rewrites the exported graph (after ``fold``) so that every conv ONNX Runtime
fuses into a QLinearConv meets those counts, computing the same function:

* output channels: the conv gains output channels with all-zero weights and zero bias; their
  values (0, then through Relu / MaxPool / Q / DQ, which act per channel, 0 again) reach only
  convs, which gain matching input channels with zero weights, so they add nothing. Where an
  Add sums the conv's output with other tensors (a residual block), those tensors' convs are
  padded the same way, together (``_channel_group``): 0 + 0 stays 0. Done only when every
  path reaches convs through such ops alone (a Flatten, a Concat, an Add of a constant or of
  a float tensor, the graph output stops it: their consumers would see the new channels);
* input channels of the network's input (3, RGB) where a conv reads it: a ``Pad`` with zeros
  on the float input before the conv's QuantizeLinear, and zero weights for the new channels
  (inside the network such a Pad would copy a whole activation; there only producing convs
  are padded, above).

The file keeps the weights as they were: a ``Pad`` node on a stored weight adds the zeros and
the runtimes fold it when they load the file (ONNX Runtime still fuses the conv: tested);
zeros smaller than such a node are stored. The runtime does the padded channels'
multiply-adds; a count grows at most ``max_growth`` times (2: 3 -> 4, 8 -> 16, 12 -> 16).
NIN at width 0.25 pruned 50 % + int8 (every conv quantized) in ONNX Runtime at batch 64: its
12-channel conv and the max-pool after it ran 3x faster, the whole net 1.3x, in the same
function (``benchmarks/micro/test_onnx_latency.py``). ResNet-18 at width 0.25 pruned to 50 %
of its MACs (multiples of 8) keeps 8 channels in its first stage: its four 3x3 convs at
32 x 32, joined by residual Adds, and the stem. Padded to 16 (growth 2) the four ran in 2.1-2.3
ms each at batch 64 instead of 3.3, the stem in 1.1 instead of 2.0, the whole int8 net in 19.2
ms instead of 24.6 (one ORT profile each; 26.3 unaligned). OpenVINO reads the same file; the
zero channels cost it their multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from netshrink.deploy.fold import _attr, _drop_value_info, _Graph, _requantized

#: Name prefix of the Pad nodes that pad stored weights.
_WEIGHT_PAD = "align_weight_pad"
#: About what a weight's Pad node and its pads take in the file (bytes).
_PAD_NODE_BYTES = 256
#: Ops a padded channel passes through unchanged in count, staying 0 on its way to the next
#: conv, when their other inputs are scalars: per-channel (elementwise or spatial) ops.
_PER_CHANNEL = frozenset({"Relu", "MaxPool", "AveragePool", "Clip", "QuantizeLinear",
                          "DequantizeLinear"})


@dataclass(frozen=True)
class ChannelAlignment:
    """Channel counts an integer conv is padded to. ``input_multiple``: input channels rounded
    up to a multiple of it; ``output_multiple`` and ``output_min``: output channels rounded up
    to a multiple of the first, at least the second. The default is what MLAS's symmetric
    int8 conv needs on every x86 CPU it dispatches to (AVX2's 8-channel output alignment is
    the widest); ``None`` in ``export_onnx`` turns padding off. ``max_growth``: a count is
    left as it is when padding would multiply it by more (the padded channels' multiply-adds
    run: 8 -> 16 channels was worth it in a pruned ResNet, 4 -> 16 is not obviously)."""

    input_multiple: int = 4
    output_multiple: int = 8
    output_min: int = 16
    max_growth: float = 2.0

    def __post_init__(self) -> None:
        for name in ("input_multiple", "output_multiple", "output_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ChannelAlignment.{name}={value!r} must be an int >= 1")
        if isinstance(self.max_growth, bool) or not isinstance(self.max_growth, (int, float)) \
                or not self.max_growth >= 1:
            raise ValueError(f"ChannelAlignment.max_growth={self.max_growth!r} must be a "
                             "number >= 1")

    def inputs(self, channels: int) -> int:
        """The padded input channel count (``channels`` when padding would grow them more
        than ``max_growth`` times)."""
        return self._capped(channels, -(-channels // self.input_multiple) * self.input_multiple)

    def outputs(self, channels: int) -> int:
        """The padded output channel count (``channels`` when padding would grow them more
        than ``max_growth`` times)."""
        return self._capped(channels, max(
            self.output_min, -(-channels // self.output_multiple) * self.output_multiple))

    def _capped(self, channels: int, padded: int) -> int:
        return padded if padded <= channels * self.max_growth else channels


#: MLAS's x86 requirements (see the module docstring).
MLAS_X86 = ChannelAlignment()


def align_channels(model: onnx.ModelProto,
                   alignment: ChannelAlignment = MLAS_X86) -> dict[str, int]:
    """Pad, in place, the channels of ``model``'s integer convs (see the module docstring);
    return ``{"outputs": convs whose outputs were padded, "inputs": convs given a Pad}``."""
    g = _Graph(model.graph)
    done = {"outputs": 0, "inputs": 0}
    for conv in [n for n in g.graph.node if n.op_type == "Conv"]:
        if _integer_conv(g, conv) and _pad_outputs(g, conv, alignment):
            done["outputs"] += 1
            g.refresh()
    for conv in [n for n in g.graph.node if n.op_type == "Conv"]:
        if _integer_conv(g, conv) and _pad_input(g, conv, alignment):
            done["inputs"] += 1
            g.refresh()
    if any(done.values()):
        del g.graph.value_info[:]  # channel counts changed along the padded paths
    return done


def _weight(g: _Graph, name: str) -> np.ndarray | None:
    """The value of weight ``name``: a constant, or a constant behind this module's ``Pad``
    (see ``_pad_weight``)."""
    value = g.const(name)
    if value is not None:
        return value
    pad = g.producer.get(name)
    if pad is None or pad.op_type != "Pad" or not pad.name.startswith(_WEIGHT_PAD):
        return None
    value, pads = g.const(pad.input[0]), g.const(pad.input[1])
    if value is None or pads is None or pads.shape != (2 * value.ndim,):
        return None
    rank = value.ndim
    return np.pad(value, list(zip(pads[:rank], pads[rank:], strict=True)))


def _pad_weight(g: _Graph, name: str, axis: int, new: int) -> None:
    """Give weight ``name`` (read by one node) ``new`` entries along ``axis``, zeros, by a
    ``Pad`` node on the stored constant: the file keeps the weights as they were and the
    runtimes fold the Pad of a constant when they load the file. Zeros smaller than such a
    node (``_PAD_NODE_BYTES``) are stored instead."""
    pad = g.producer.get(name)
    if pad is not None and pad.op_type == "Pad" and pad.name.startswith(_WEIGHT_PAD):
        pads = g.const(pad.input[1]).copy()
        stored = g.const(pad.input[0])
        pads[stored.ndim + axis] = new - stored.shape[axis]
        _set_const(g, pad.input[1], pads)
        return
    stored = g.const(name)
    extra = (new - stored.shape[axis]) * (stored.size // stored.shape[axis]) * stored.itemsize
    if extra <= _PAD_NODE_BYTES:  # the zeros take less room than a Pad node: store them
        _set_const(g, name, _pad_axis(stored, axis, new))
        return
    pads = np.zeros(2 * stored.ndim, np.int64)
    pads[stored.ndim + axis] = new - stored.shape[axis]
    padded = g.new_name("padded_weight")  # short names: a tiny model's file counts them
    node = helper.make_node("Pad", [name, g.add_const(pads, "pads")], [padded],
                            name=g.new_name(_WEIGHT_PAD), mode="constant")
    user = g.consumers[name][0]
    nodes = g.graph.node
    nodes.insert(list(nodes).index(user), node)
    user.input[list(user.input).index(name)] = padded
    g.refresh()


def _weight_codes(g: _Graph, conv: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray] | None:
    """``(DequantizeLinear, int8 codes)`` of ``conv``'s weight when both are its own."""
    w_dq = g.producer.get(conv.input[1])
    if w_dq is None or w_dq.op_type != "DequantizeLinear" or \
            g.only_consumer(w_dq.output[0]) is not conv or \
            g.only_consumer(w_dq.input[0]) is not w_dq:
        return None
    codes = _weight(g, w_dq.input[0])
    if codes is None or codes.dtype != np.int8 or codes.ndim < 3:
        return None
    return w_dq, codes


def _integer_conv(g: _Graph, conv: onnx.NodeProto) -> bool:
    """Whether ``conv`` is one ONNX Runtime runs as a symmetric QLinearConv: ungrouped, a
    dequantized uint8 input, int8 weights with zero points 0, its output requantized."""
    if int(_attr(conv, "group", 1)) != 1 or _weight_codes(g, conv) is None:
        return False
    x_dq = g.producer.get(conv.input[0])
    if x_dq is None or x_dq.op_type != "DequantizeLinear":
        return False
    w_dq = g.producer[conv.input[1]]
    if len(w_dq.input) > 2 and w_dq.input[2]:
        zp = g.const(w_dq.input[2])
        if zp is None or (zp != 0).any():
            return False
    return _requantized(g, conv.output[0])


def _set_const(g: _Graph, name: str, array: np.ndarray) -> None:
    """Overwrite initializer ``name`` (used by one node, checked by the caller)."""
    tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
    g.inits[name].CopyFrom(tensor)


def _pad_axis(array: np.ndarray, axis: int, new: int, value: float | int = 0) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, new - array.shape[axis])
    return np.pad(array, widths, constant_values=value)


@dataclass
class _ChannelGroup:
    """Tensors that must carry the same channels: a conv's output and what it reaches through
    per-channel ops, joined by the Adds that sum them with other convs' outputs (a residual
    block's identity path and its last conv). ``producers`` write them (padded together),
    ``consumers`` read them as their input 0 (given matching zero input weights)."""

    producers: list[onnx.NodeProto]
    consumers: list[onnx.NodeProto]


def _channel_group(g: _Graph, conv: onnx.NodeProto) -> _ChannelGroup | None:
    """The channel group of ``conv``'s output (see ``_ChannelGroup``), followed forward and,
    from an Add's other input, backward; None when a tensor of it meets anything but a
    per-channel op with scalar parameters, an Add of two such tensors, or a conv that may be
    padded (another op, a graph input or output, a constant, a per-channel quantizer)."""
    producers: dict[int, onnx.NodeProto] = {}
    consumers: dict[int, onnx.NodeProto] = {}
    stack, seen = [conv.output[0]], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in g.outputs or not g.consumers.get(name):
            return None
        source = g.producer.get(name)
        if source is None:
            return None  # a graph input or a constant
        if source.op_type == "Conv":
            if source.output[0] != name or not _integer_conv(g, source):
                return None
            producers[id(source)] = source
        elif _per_channel_step(g, source):
            stack.extend(source.input if source.op_type == "Add" else source.input[:1])
        else:
            return None
        for node in g.consumers[name]:
            if node.op_type == "Conv":
                if node.input[0] != name or name in node.input[1:] or \
                        int(_attr(node, "group", 1)) != 1 or not _own_weight(g, node):
                    return None
                consumers[id(node)] = node
            elif _per_channel_step(g, node):
                if node.op_type == "Add":
                    stack.extend(node.input)
                elif node.input[0] != name:
                    return None
                stack.append(node.output[0])
            else:
                return None
    return _ChannelGroup(list(producers.values()), list(consumers.values()))


def _per_channel_step(g: _Graph, node: onnx.NodeProto) -> bool:
    """Whether ``node`` maps its input 0 to its one output channel by channel, its other
    inputs scalar constants (a per-tensor Q / DQ, Relu, a pool), so zero channels stay zero.
    An Add qualifies separately (both inputs in the group)."""
    if node.op_type == "Add":
        return len(node.input) == 2 and all(i and g.const(i) is None for i in node.input) \
            and len([o for o in node.output if o]) == 1
    if node.op_type not in _PER_CHANNEL or len([o for o in node.output if o]) != 1 or \
            node.input[0] in node.input[1:]:
        return False
    for other in node.input[1:]:
        value = g.const(other) if other else np.zeros(())
        if value is None or value.size != 1:
            return False
    return True


def _own_weight(g: _Graph, conv: onnx.NodeProto) -> bool:
    """Whether ``conv``'s weight is a constant only it reads (int8 codes behind its own
    DequantizeLinear, or a float initializer), so its input channels can be padded."""
    if _weight_codes(g, conv) is not None:
        return True
    return _weight(g, conv.input[1]) is not None and g.only_consumer(conv.input[1]) is conv


def _pad_weight_inputs(g: _Graph, conv: onnx.NodeProto, new: int) -> None:
    found = _weight_codes(g, conv)
    _pad_weight(g, found[0].input[0] if found is not None else conv.input[1], 1, new)


def _counts(g: _Graph, conv: onnx.NodeProto, axis: int,
            alignment: ChannelAlignment) -> tuple[int, int]:
    """(channels, padded channels) of an integer conv's weight along ``axis`` (0: outputs)."""
    channels = _weight_codes(g, conv)[1].shape[axis]
    return channels, (alignment.outputs if axis == 0 else alignment.inputs)(channels)


def _pad_outputs(g: _Graph, conv: onnx.NodeProto, alignment: ChannelAlignment) -> bool:
    """Pad the output channels of ``conv`` and of every conv in its channel group (the same
    count: an Add sums them) and the matching input channels of the convs reading them."""
    channels, new = _counts(g, conv, 0, alignment)
    if new == channels:
        return False
    group = _channel_group(g, conv)
    if group is None or not group.consumers or \
            any(_weight_codes(g, p)[1].shape[0] != channels for p in group.producers):
        return False
    fills = [_output_fills(g, producer, channels) for producer in group.producers]
    if any(f is None for f in fills):
        return False
    for producer, producer_fills in zip(group.producers, fills, strict=True):
        _pad_weight(g, g.producer[producer.input[1]].input[0], 0, new)
        for name, fill in producer_fills:
            value = g.const(name)
            if value.ndim == 1:
                _set_const(g, name, _pad_axis(value, 0, new, fill))
    for consumer in group.consumers:
        _pad_weight_inputs(g, consumer, new)
    return True


def _output_fills(g: _Graph, conv: onnx.NodeProto,
                  channels: int) -> list[tuple[str, float | int]] | None:
    """The per-channel constants of integer conv ``conv`` that grow with its output channels,
    each with the value of a padded channel (weight scales 1, positive as DequantizeLinear
    requires; the bias scale s_in * 1; codes and zero points 0); None when one of them is
    shared with another node or is not a per-channel vector of ``channels`` entries."""
    w_dq = g.producer[conv.input[1]]
    x_scale = g.const(g.producer[conv.input[0]].input[1])
    if x_scale is None or x_scale.size != 1:
        return None
    fills: list[tuple[str, float | int]] = [(w_dq.input[1], 1.0)]
    if len(w_dq.input) > 2 and w_dq.input[2]:
        fills.append((w_dq.input[2], 0))
    if len(conv.input) > 2 and conv.input[2]:
        bias_dq = g.producer.get(conv.input[2])
        if bias_dq is None:
            fills.append((conv.input[2], 0))
        elif bias_dq.op_type == "DequantizeLinear" and len(bias_dq.input) == 3 and \
                g.only_consumer(bias_dq.output[0]) is conv:
            fills += [(bias_dq.input[0], 0), (bias_dq.input[1], float(x_scale.reshape(()))),
                      (bias_dq.input[2], 0)]
        else:
            return None
    for name, _ in fills:
        value = g.const(name)
        if value is None or name not in g.inits or len(g.consumers.get(name, [])) != 1 or \
                value.ndim > 1 or (value.ndim == 1 and value.shape[0] != channels):
            return None
    return fills


def _pad_input(g: _Graph, conv: onnx.NodeProto, alignment: ChannelAlignment) -> bool:
    channels, new = _counts(g, conv, 1, alignment)
    if new == channels:
        return False
    x_dq = g.producer[conv.input[0]]
    q = g.producer.get(x_dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or g.only_consumer(x_dq.output[0]) is not conv \
            or g.only_consumer(q.output[0]) is not x_dq:
        return False
    if q.input[0] not in {i.name for i in g.graph.input}:
        return False  # a Pad would copy an activation; only the network's input is that cheap
    scale = g.const(q.input[1])
    if scale is None or scale.size != 1:
        return False
    rank = _weight_codes(g, conv)[1].ndim
    pads = [0] * (2 * rank)
    pads[rank + 1] = new - channels  # the end of axis 1
    padded = g.new_name("padded_input")
    pad = helper.make_node(
        "Pad", [q.input[0], g.add_const(np.array(pads, np.int64), "pads")], [padded],
        name=g.new_name("align_pad"), mode="constant")
    nodes = g.graph.node
    nodes.insert(list(nodes).index(q), pad)
    _drop_value_info(g, [q.output[0], x_dq.output[0]])
    q.input[0] = padded
    _pad_weight_inputs(g, conv, new)
    return True


__all__ = ["MLAS_X86", "ChannelAlignment", "align_channels"]
