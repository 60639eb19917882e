"""Make an exported QDQ graph fusable into ONNX Runtime's integer kernels, same function.

ONNX Runtime turns ``DQ -> Conv -> [Relu] -> Q`` into one QLinearConv (weights and input
int8 / uint8, an int32 bias). What the quantized layers export is often not that shape:

* a float epilogue sits between the conv and the next QuantizeLinear: the layer's own output
  scale and bias (``Mul`` / ``Add``, after a bnfuse fold) and an eval-mode
  ``BatchNormalization``. ``fold_epilogues`` folds them into the conv: the per-channel factor
  into the weight scale (a negative factor negates that channel's int8 codes and zero point:
  ``c -> -c``, or ``c -> -1 - c, z -> -1 - z`` where -c would leave int8), the shift into the
  bias, written as int32 codes ``round(bias / (s_in * s_w))`` behind a DequantizeLinear
  (the standard QDQ bias; ORT 1.32 also fuses a float bias, rounding it itself, but then the
  rounding is not ours to choose: a binary activation needs it rounded down, see below);
* a k-bit activation ``Clip [lo, hi] -> Q`` whose codes are a strict part of 0..255 (DoReFa,
  PACT, LSQ, ternary): ORT removes such a Clip only where Q's saturation does the same, which
  a range narrower than uint8's cannot. ``split_clips`` swaps it into ``Q -> Clip`` on the
  uint8 codes (``Clip(code(lo), code(hi))``), so the conv ends in a Q (QLinearConv) and the
  clip is an integer op: ``clamp(Q(x), code(lo), code(hi)) == Q(Clip(x))`` whenever ``lo``
  and ``hi`` lie on Q's grid (checked), as every activation form's do;
* a binary activation ``Where(x >= 0, 1, -1) -> Q``: no uint8 QuantizeLinear can give it
  alone (saturation reaches codes 0 and 255, whose distances to any integer zero point
  differ), so the conv ends in ``Q(scale t, zero point 128)`` with ``t`` half the smallest
  accumulator step ``s_in * s_w``, its bias rounded down: the accumulator ``acc + floor(b')``
  is an integer, ``>= 0`` exactly when ``acc + b' >= 0``, and any nonzero value lands at least
  two codes from 128, so the sign survives; ``GreaterOrEqual(codes, 128) -> Where`` then
  picks the codes of +1 and -1, in uint8.

Narrow weight grids (ternary, binary, k-bit: codes within +-64) are stretched by an integer
factor (codes x K, scale / K, at most |code| 64 so x86's pairwise u8 x s8 sums stay in int16):
the int32 bias then rounds K times finer. Ternary and binary stay exact that way; other forms
move by one activation level where the rounded bias crosses a rounding tie.

What stays float: a quantized layer whose output feeds no QuantizeLinear (the last quantized
layer before a float one, or the network's output), since its output has no scale to
requantize to (the model was never calibrated there, and export never calibrates).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import count

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Ops between a conv and the next QuantizeLinear that commute with a monotone quantization
#: (a binary activation's conv is followed through them to its ``GreaterOrEqual``).
_MONOTONE = frozenset({"Relu", "MaxPool"})
_INT32 = np.iinfo(np.int32)
#: Largest |code| a narrow weight grid is stretched to (see ``_fold_one``).
_MAX_STRETCHED = 64


class _Graph:
    """Producer / consumer maps and constant lookup over a mutable ``onnx.GraphProto``."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self._ids = count()
        self.refresh()

    def refresh(self) -> None:
        self.producer = {o: n for n in self.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i].append(n)

    def const(self, name: str) -> np.ndarray | None:
        """The value of initializer ``name`` (or of a Constant node's output), else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and \
                node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def add_const(self, array: np.ndarray, hint: str) -> str:
        name = f"{hint}_folded_{next(self._ids)}"
        while name in self.inits or name in self.producer:
            name = f"{hint}_folded_{next(self._ids)}"
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.graph.initializer.append(tensor)
        self.inits[name] = self.graph.initializer[-1]  # (append stored a copy)
        return name

    def new_name(self, hint: str) -> str:
        return f"{hint}_fold_{next(self._ids)}"


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value: int) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as one float64 per output channel of an NCHW tensor, or None when it does
    not broadcast that way (e.g. shape ``(C,)`` broadcasts along the last axis)."""
    shape = tuple(value.shape)
    if value.size == 1:
        return np.full(channels, float(value.reshape(())), dtype=np.float64)
    if shape in {(channels, 1, 1), (1, channels, 1, 1)}:
        return value.reshape(channels).astype(np.float64)
    return None


def _epilogue_step(g: _Graph, node: onnx.NodeProto, prev: str,
                   channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(a, c)`` when ``node`` computes ``prev * a + c`` per channel with constants."""
    if node.op_type == "BatchNormalization":
        if len([o for o in node.output if o]) != 1 or node.input[0] != prev or \
                _attr(node, "training_mode", 0):
            return None
        params = [g.const(n) for n in node.input[1:5]]
        if any(p is None or p.shape != (channels,) for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        a = gamma / np.sqrt(var + float(_attr(node, "epsilon", 1e-5)))
        return a, beta - mean * a
    if node.op_type in {"Mul", "Add"} and len(node.input) == 2:
        other = node.input[1] if node.input[0] == prev else node.input[0]
        value = g.const(other)
        if value is None or other == prev:
            return None
        v = _per_channel(value, channels)
        if v is None:
            return None
        if node.op_type == "Mul":
            return v, np.zeros(channels)
        return np.ones(channels), v
    return None


def _sign_after(g: _Graph, name: str) -> onnx.NodeProto | None:
    """The ``GreaterOrEqual(x, 0)`` of a binary activation that ``name`` reaches through
    monotone single-consumer ops, feeding ``Where(., 1, -1) -> QuantizeLinear``; else None."""
    node = g.only_consumer(name)
    while node is not None and node.op_type in _MONOTONE:
        node = g.only_consumer(node.output[0])
    if node is None or node.op_type != "GreaterOrEqual":
        return None
    zero = g.const(node.input[1])
    where = g.only_consumer(node.output[0])
    if zero is None or zero.size != 1 or float(zero.reshape(())) != 0.0 or where is None or \
            where.op_type != "Where" or where.input[0] != node.output[0]:
        return None
    pos, neg = g.const(where.input[1]), g.const(where.input[2])
    if pos is None or neg is None or pos.size != 1 or neg.size != 1 or \
            (float(pos.reshape(())), float(neg.reshape(()))) != (1.0, -1.0):
        return None
    return node


def _requantized(g: _Graph, name: str) -> bool:
    """Whether ``name`` reaches a QuantizeLinear (directly or behind a Clip) through monotone
    single-consumer ops: only then can ORT fuse its conv, and only then is the bias rounded
    to int32 (an output that stays float keeps its float bias, exactly)."""
    node = g.only_consumer(name)
    while node is not None and node.op_type in _MONOTONE:
        node = g.only_consumer(node.output[0])
    if node is not None and node.op_type == "Clip":
        node = g.only_consumer(node.output[0])
    return node is not None and node.op_type == "QuantizeLinear"


def fold_epilogues(g: _Graph) -> int:
    """Fold each quantized conv's constant epilogue (Mul, Add, BatchNormalization) into its
    weight scales and an int32 bias; return how many convs were rewritten."""
    folded = 0
    for conv in [n for n in g.graph.node if n.op_type in {"Conv", "ConvTranspose"}]:
        if _fold_one(g, conv):
            folded += 1
            g.refresh()
    return folded


def _fold_one(g: _Graph, conv: onnx.NodeProto) -> bool:
    x_dq, w_dq = g.producer.get(conv.input[0]), g.producer.get(conv.input[1])
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or \
            w_dq.op_type != "DequantizeLinear" or g.only_consumer(w_dq.output[0]) is not conv:
        return False  # (a weight shared by two convs keeps its scales)
    codes = g.const(w_dq.input[0])
    w_scale = g.const(w_dq.input[1])
    x_scale = g.const(x_dq.input[1])
    if codes is None or codes.dtype != np.int8 or w_scale is None or x_scale is None or \
            x_scale.size != 1:
        return False
    has_zp = len(w_dq.input) > 2 and w_dq.input[2]
    w_zp = g.const(w_dq.input[2]) if has_zp else np.zeros((), np.int8)
    if w_zp is None:
        return False
    if conv.op_type == "Conv":
        axis = 0
    elif int(_attr(conv, "group", 1)) == 1:
        axis = 1
    else:  # a grouped transposed conv's output channels do not lie along one weight axis
        return False
    if w_scale.ndim == 1 and int(_attr(w_dq, "axis", 1)) % codes.ndim != axis:
        return False
    channels = codes.shape[axis]
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = g.const(conv.input[2]) if has_bias else np.zeros(channels, np.float32)
    if bias is None or bias.dtype != np.float32:
        return False  # already an int32 DequantizeLinear, or computed
    a, c = np.ones(channels), np.zeros(channels)
    tail, chain = conv.output[0], []
    while (node := g.only_consumer(tail)) is not None:
        step = _epilogue_step(g, node, tail, channels)
        if step is None:
            break
        a, c = a * step[0], c * step[0] + step[1]
        chain.append(node)
        tail = node.output[0]
    if not np.isfinite(a).all() or not np.isfinite(c).all() or (a == 0).any():
        return False
    scale = np.broadcast_to(w_scale.astype(np.float64), (channels,)) * np.abs(a)
    zp = np.broadcast_to(w_zp, (channels,)).astype(np.int8)
    shape = [1] * codes.ndim
    shape[axis] = -1
    codes, zp = codes.copy(), zp.copy()
    by_channel = np.moveaxis(codes, axis, 0)  # a view
    for ch in np.flatnonzero(a < 0):  # w = (c - z) s  ->  -w = (-c - -z) s = (~c - ~z) s
        if zp[ch] == 0 and (by_channel[ch] != -128).all():
            by_channel[ch] = -by_channel[ch]
        else:  # ~c = -1 - c maps -128..127 onto itself
            by_channel[ch] = ~by_channel[ch]
            zp[ch] = ~zp[ch]
    # finer accumulator steps for narrow codes (ternary, binary, k-bit): the int32 bias then
    # rounds K times closer to the float one; |codes| <= 64 keeps two u8 x s8 products
    # inside int16 (x86 without VNNI adds them pairwise, saturating)
    moved = np.moveaxis(codes, axis, 0).reshape(channels, -1)
    widest = np.maximum(np.abs(moved.astype(np.int32)).max(1), 1)
    factor = np.where(zp == 0, np.maximum(_MAX_STRETCHED // widest, 1), 1)
    codes = (np.moveaxis(codes, axis, 0).astype(np.int32) * factor.reshape(
        (-1,) + (1,) * (codes.ndim - 1))).astype(np.int8)
    codes = np.ascontiguousarray(np.moveaxis(codes, 0, axis))
    scale = scale / factor
    scale32 = scale.astype(np.float32)
    if not (scale32 > 0).all() or not np.isfinite(scale32).all():
        return False
    new_bias = bias.astype(np.float64) * a + c
    bias_scale = (np.float32(x_scale.reshape(())) * scale32).astype(np.float32)
    ratio = new_bias / bias_scale.astype(np.float64)
    sign = _sign_after(g, tail)
    requantized = sign is not None or _requantized(g, tail)
    q_bias = np.floor(ratio) if sign is not None else np.round(ratio)
    if requantized and not (np.abs(q_bias) <= _INT32.max).all():
        return False
    hint = conv.name or conv.output[0]
    w_dq.input[0] = g.add_const(codes, f"{hint}_codes")
    w_dq.input[1] = g.add_const(scale32, f"{hint}_weight_scale")
    zp_name = g.add_const(zp.copy(), f"{hint}_weight_zero_point")
    if has_zp:
        w_dq.input[2] = zp_name
    else:
        w_dq.input.append(zp_name)
    _set_attr(w_dq, "axis", axis)
    nodes = g.graph.node
    if requantized:
        bias_out = g.new_name(f"{hint}_bias")
        nodes.insert(list(nodes).index(conv), helper.make_node(
            "DequantizeLinear", [g.add_const(q_bias.astype(np.int32), f"{hint}_bias_codes"),
                                 g.add_const(bias_scale, f"{hint}_bias_scale"),
                                 g.add_const(np.zeros(channels, np.int32), f"{hint}_bias_zp")],
            [bias_out], name=g.new_name(f"{hint}_bias_dq"), axis=0))
    else:
        bias_out = g.add_const(new_bias.astype(np.float32), f"{hint}_bias")
    if has_bias:
        conv.input[2] = bias_out
    else:
        conv.input.append(bias_out)
    conv.output[0] = tail
    for node in chain:
        nodes.remove(node)
    if sign is not None:  # the conv ends in a fine uint8 Q that keeps the sign exactly
        _sign_on_codes(g, sign, np.float32(float(bias_scale.min()) / 2))
    return True


def _sign_on_codes(g: _Graph, ge: onnx.NodeProto, step: np.float32) -> None:
    """``GreaterOrEqual(x, 0) -> Where(., 1, -1) -> Q`` becomes ``Q(x; step, 128) ->
    GreaterOrEqual(., 128) -> Where(., code(+1), code(-1))`` on uint8 codes (the old Q's
    codes for +1 and -1), when that Q's codes for +-1 are in uint8's range."""
    where = g.only_consumer(ge.output[0])
    q = None if where is None else g.only_consumer(where.output[0])
    if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3:
        return
    scale, zp = g.const(q.input[1]), g.const(q.input[2])
    if scale is None or zp is None or scale.size != 1 or zp.size != 1 or zp.dtype != np.uint8:
        return
    s, z = float(scale.reshape(())), int(zp.reshape(()))
    plus, minus = round(1.0 / s) + z, round(-1.0 / s) + z
    if not (0 <= minus <= 255 and 0 <= plus <= 255):
        return
    codes = g.new_name(f"{ge.input[0]}_codes")
    step_name = g.add_const(np.array(step, np.float32), f"{ge.input[0]}_requant_scale")
    mid = g.add_const(np.array(128, np.uint8), f"{ge.input[0]}_requant_zero_point")
    nodes = g.graph.node
    nodes.insert(list(nodes).index(ge), helper.make_node(
        "QuantizeLinear", [ge.input[0], step_name, mid], [codes], name=g.new_name("requant_q")))
    _drop_value_info(g, [where.output[0]])
    ge.input[0], ge.input[1] = codes, mid
    where.input[1] = g.add_const(np.array(plus, np.uint8), "sign_plus_code")
    where.input[2] = g.add_const(np.array(minus, np.uint8), "sign_minus_code")
    where.output[0] = q.output[0]
    nodes.remove(q)


def _drop_value_info(g: _Graph, names: list[str]) -> None:
    """Forget the recorded type / shape of tensors that disappear or change type."""
    for info in [v for v in g.graph.value_info if v.name in names]:
        g.graph.value_info.remove(info)


def split_clips(g: _Graph) -> int:
    """Swap ``Clip(lo, hi) -> QuantizeLinear`` into ``QuantizeLinear -> Clip(code(lo),
    code(hi))`` on uint8 codes where the Clip's input is computed (not a graph input, not
    dequantized) and ``lo``, ``hi`` lie on the Q's grid (then both compute the same codes);
    return how many."""
    split = 0
    for clip in [n for n in g.graph.node if n.op_type == "Clip"]:
        source = g.producer.get(clip.input[0])
        q = g.only_consumer(clip.output[0])
        if source is None or source.op_type == "DequantizeLinear" or q is None or \
                q.op_type != "QuantizeLinear" or len(clip.input) < 3 or len(q.input) < 3:
            continue
        lo, hi = g.const(clip.input[1]), g.const(clip.input[2])
        scale, zp = g.const(q.input[1]), g.const(q.input[2])
        if lo is None or hi is None or scale is None or zp is None or scale.size != 1 or \
                zp.size != 1 or zp.dtype != np.uint8 or lo.size != 1 or hi.size != 1:
            continue
        s, z = float(scale.reshape(())), int(zp.reshape(()))
        bounds = [float(lo.reshape(())) / s + z, float(hi.reshape(())) / s + z]
        if any(abs(b - round(b)) > 1e-3 or not 0 <= round(b) <= 255 for b in bounds):
            continue
        codes = g.new_name(f"{clip.input[0]}_codes")
        _drop_value_info(g, [clip.output[0]])
        q.input[0], q.output[0], clip.output[0] = clip.input[0], codes, q.output[0]
        clip.input[0] = codes
        clip.input[1] = g.add_const(np.array(round(bounds[0]), np.uint8), "clip_min_code")
        clip.input[2] = g.add_const(np.array(round(bounds[1]), np.uint8), "clip_max_code")
        nodes = g.graph.node
        nodes.remove(q)
        nodes.insert(list(nodes).index(clip), q)
        g.refresh()
        split += 1
    return split


def _drop_unused(g: _Graph) -> None:
    used = {i for n in g.graph.node for i in n.input} | g.outputs
    for t in [t for t in g.graph.initializer if t.name not in used]:
        g.graph.initializer.remove(t)


def fuse_for_integer_kernels(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``model`` (in place, and returned) so that ONNX Runtime can run its quantized
    convs as QLinearConv: epilogues folded, k-bit Clips and binary signs on the uint8 codes
    after the conv's Q. The function computed is the same (see the module docstring for the
    int32 bias rounding)."""
    g = _Graph(model.graph)
    fold_epilogues(g)
    split_clips(g)
    g.refresh()
    _drop_unused(g)
    return model
