"""``QuantConfig``: what ``quantize_`` does to a model, frozen and validated on creation.

Every combination of weight precision ``w`` and activation precision ``a`` is legal:

* ``32``: float, left untouched;
* ``16``: rounded to float16 (weights stored as float16 when packed);
* ``8``, ``4``, ``3``, ``2``: k-bit uniform (DoReFa): weights through tanh normalisation to
  ``[-1, 1]``; activations clipped to ``[0, a_clip]`` (a fixed clip), or to a clip learned per
  layer (``a_quantizer="pact"`` or ``"lsq"``);
* ``"ternary"``: weights by TWN (per-output-channel threshold, optional scale, optional
  hysteresis gap); activations rounded to {-1, 0, +1} after clipping to ``[-1, 1]``;
* ``"binary"``: weights ``sign`` (0 maps to +1) with an optional per-output-channel scale
  (XNOR/BWN) or without (BNN); activations ``sign``.

k-bit activation clips can also be calibrated when quantizing: ``a_calibrate=p`` sets each
layer's clip to the ``p``-th percentile of its input over a few batches (``calibrate_act_clips_``;
the quantize stage does it with the batches it is given), and records the clips in
``a_clips`` so that rebuilding the model from a checkpoint gives the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from netshrink.core import check_choice, check_float, check_int
from netshrink.quant.estimators import ESTIMATORS

#: A precision: bits as an int, or "ternary" / "binary".
Precision = int | Literal["ternary", "binary"]

PRECISIONS: tuple[Precision, ...] = (32, 16, 8, 4, 3, 2, "ternary", "binary")
#: Precisions that mean "k-bit uniform quantization" (DoReFa).
KBIT_PRECISIONS: tuple[int, ...] = (8, 4, 3, 2)
#: The built-in gradient estimators; ``QuantConfig`` accepts every name registered in
#: ``ESTIMATORS`` (``list_estimators()``), these and any registered by the user.
ESTIMATOR_NAMES: tuple[str, ...] = ("ste", "saturate_ste", "soft_ste")
#: The built-in schemes (``QuantConfig`` accepts every name in ``QUANT_SCHEMES``,
#: ``list_schemes()``). "dorefa": the k-bit / ternary / binary quantizers above.
#: "int8_affine": the integer-only scheme (scale and zero point; w = a = 8): per-channel
#: symmetric weights, asymmetric activations with moving-average observers, BatchNorm folded
#: into the conv while training.
SCHEMES: tuple[str, ...] = ("dorefa", "int8_affine")
#: What happens to the first / last quantizable layer: stays float, becomes 8-bit, or is
#: quantized like every other layer.
LAYER_POLICIES: tuple[str, ...] = ("float", "8bit", "same")
#: The built-in ways k-bit activations find their range: "dorefa" (the fixed clip ``a_clip``),
#: "pact" (a learned clip per layer) or "lsq" (a learned step size per layer).
#: ``QuantConfig`` accepts every name in ``KBIT_ACT_QUANTIZERS`` (``list_kbit_act_quantizers``).
A_QUANTIZERS: tuple[str, ...] = ("dorefa", "pact", "lsq")
#: How binary latent weights are centred (``netshrink.quant.quantizers.binary.centre_latent``):
#: per output channel over the whole filter, per output channel and kernel position over the
#: input channels (XNOR-Net's code, micronet), or not at all.
BINARY_CENTRINGS: tuple[str, ...] = ("filter", "kernel_position", "none")


@dataclass(frozen=True)
class QuantConfig:
    """Quantization-aware training settings (see the module docstring for the precisions).

    ``w_estimator`` / ``a_estimator``: the gradient through the rounding of weights /
    activations: ``"ste"`` (identity), ``"saturate_ste"`` (zero outside the quantizer's input
    range, e.g. where ``|x| > 1`` for sign), ``"soft_ste"`` (a tent, the ApproxSign derivative
    for sign). 16-bit rounding always uses the identity.

    ``first`` / ``last``: policy for the first and last quantizable layer (in module order):
    ``"float"`` (default: untouched), ``"8bit"`` (8-bit weights; the last layer's input is
    8-bit too, the first layer's input, the data itself, stays as given) or ``"same"`` (as
    every other layer, input included).

    ``a_clip``: k-bit activations are clipped to ``[0, a_clip]`` (DoReFa uses 1.0) and then
    rounded to ``2**a - 1`` equal steps; nothing rescales the input first.

    ``a_quantizer``: how k-bit activations get their range (every k-bit activation quantizer
    the config creates, 8-bit first/last inputs included):

    * ``"dorefa"`` (default): the fixed clip ``a_clip``;
    * ``"pact"`` (Choi et al. 2018): a learnable clip ``alpha`` per layer (an ``nn.Parameter``
      of the quantized layer, initialised to ``a_clip``); ``y = clip(x, 0, alpha)`` rounded to
      ``2**a - 1`` steps over ``[0, alpha]``; ``alpha`` gets the upstream gradient wherever
      ``x >= alpha`` (an L2 decay on it, as in the paper, is the optimizer's weight decay);
    * ``"lsq"`` (Esser et al. 2020): a learnable step size ``s`` per layer, set on the first
      training forward to ``2 mean|x| / sqrt(Qp)`` (``Qp = 2**a - 1``; ``a_clip / Qp`` until
      then); ``y = round(clip(x / s, 0, Qp)) * s`` with LSQ's gradient for ``s`` scaled by
      ``1 / sqrt(N Qp)``, ``N`` the number of input elements per example.

    Both need k-bit ``a`` and ``scheme="dorefa"``, and bring their own gradient (zero outside
    the clip range), so ``a_estimator`` must stay ``"saturate_ste"``. Build the optimizer after
    ``quantize_``, so it sees the new parameters.

    ``a_calibrate``: a percentile in ``(50, 100]``, or None (default: the clip is ``a_clip``).
    When set, ``calibrate_act_clips_`` (called by the ``"quant.quantize"`` stage with the
    batches it is given, right after ``quantize_``) sets every k-bit activation clip to that
    percentile of the layer's input over the batches (``a_quantizer="dorefa"``: the fixed
    clip; ``"pact"``: the initial ``alpha``; ``"lsq"``: the initial step ``clip / Qp``).
    A quantizer whose input is never positive keeps ``a_clip``. Without batches, ``a_clip``
    is used.

    ``a_clips``: per-layer clips by layer name (a mapping or ``(name, clip)`` pairs), which
    override ``a_clip`` for those layers; the quantize stage records the calibrated clips here,
    so a model rebuilt from its recipe gets them back.

    ``binary_centring``: how binary latent weights are centred after every step (see
    ``BINARY_CENTRINGS``): ``"filter"`` (default: subtract each output channel's mean over its
    whole filter), ``"kernel_position"`` (subtract, for each output channel and kernel
    position, the mean over the input channels, as XNOR-Net's code and micronet do) or
    ``"none"``; the weights are clipped to ``[-1, 1]`` in every mode.

    ``ternary_gap``: hysteresis for ternary weights, a fraction of the per-channel threshold
    ``D``: a weight becomes non-zero above ``D * (1 + gap)``, zero below ``D * (1 - gap)``,
    and keeps its state in between. 0 gives plain TWN.

    ``ternary_scale`` / ``binary_scale``: multiply the {-1, 0, +1} / {-1, +1} weight codes by a
    per-output-channel scale (TWN, XNOR/BWN) or not (hardware without a multiplier; BNN).

    ``bn_momentum``: when set, every BatchNorm's momentum becomes this value (binary and
    ternary models have noisy batch statistics; e.g. 0.01 steadies the running estimates).

    ``scheme``: ``"dorefa"`` (default) or ``"int8_affine"`` (needs ``w == a == 8``; 8-bit
    first/last layers then use it too): see ``SCHEMES``; or any scheme registered with
    ``register_scheme`` (docs/extending.md).

    ``freeze_bn_after`` / ``freeze_observers_after`` (``scheme="int8_affine"`` only): the
    late-training freezes of Jacob et al. 2018. After this many epochs of QAT (counted from the
    start of QAT; the ``"quant.quantize"`` stage applies them in ``after_epoch``), the
    BatchNorms folded into the convs switch to their running statistics and stop updating them
    (``freeze_bn_stats_``), and the activation range observers stop updating scale and zero
    point (``freeze_observers_``). ``0`` freezes from the start (for observers this means the
    ranges come only from ``calibrate_``); ``None`` (default) never.
    """

    w: Precision
    a: Precision
    w_estimator: str = "ste"
    a_estimator: str = "saturate_ste"
    first: str = "float"
    last: str = "float"
    a_clip: float = 1.0
    ternary_gap: float = 0.0
    ternary_scale: bool = True
    binary_scale: bool = True
    bn_momentum: float | None = None
    scheme: str = "dorefa"
    a_quantizer: str = "dorefa"
    freeze_bn_after: int | None = None
    freeze_observers_after: int | None = None
    a_calibrate: float | None = None
    a_clips: Any = ()  # tuple[tuple[str, float], ...] once validated (a mapping is accepted)
    binary_centring: str = "filter"

    def __post_init__(self) -> None:
        # the registries' names, so user-registered schemes, estimators and activation
        # quantizers are accepted (imported here: the quantizers package imports this module)
        from netshrink.quant.quantizers.registry import KBIT_ACT_QUANTIZERS, QUANT_SCHEMES

        check_choice("w", self.w, PRECISIONS)
        check_choice("a", self.a, PRECISIONS)
        check_choice("w_estimator", self.w_estimator, ESTIMATORS.ordered())
        check_choice("a_estimator", self.a_estimator, ESTIMATORS.ordered())
        check_choice("first", self.first, LAYER_POLICIES)
        check_choice("last", self.last, LAYER_POLICIES)
        check_float("a_clip", self.a_clip, min_value=0.0, min_exclusive=True)
        check_float("ternary_gap", self.ternary_gap, min_value=0.0)
        if self.ternary_gap >= 1.0:
            raise ValueError(f"ternary_gap={self.ternary_gap!r} must be in [0, 1) (a fraction "
                             "of the threshold)")
        if self.a_calibrate is not None:
            check_float("a_calibrate", self.a_calibrate, min_value=50.0, max_value=100.0,
                        min_exclusive=True)
        object.__setattr__(self, "a_clips", _as_clips(self.a_clips))
        check_choice("binary_centring", self.binary_centring, BINARY_CENTRINGS)
        check_choice("ternary_scale", self.ternary_scale, (True, False))
        check_choice("binary_scale", self.binary_scale, (True, False))
        if self.bn_momentum is not None:
            check_float("bn_momentum", self.bn_momentum, min_value=0.0, max_value=1.0,
                        min_exclusive=True)
        check_choice("scheme", self.scheme, QUANT_SCHEMES.ordered())
        scheme = QUANT_SCHEMES.get(self.scheme)
        scheme.validate(self)
        check_choice("a_quantizer", self.a_quantizer, KBIT_ACT_QUANTIZERS.ordered())
        if self.a_quantizer != "dorefa":
            if not scheme.kbit_act_quantizers or self.a not in KBIT_PRECISIONS:
                raise ValueError(
                    f"a_quantizer={self.a_quantizer!r} needs k-bit activations (a one of "
                    f"{', '.join(map(str, KBIT_PRECISIONS))}) and scheme='dorefa' (or another "
                    f"scheme that uses a_quantizer), got a={self.a!r}, scheme={self.scheme!r}; "
                    "a_quantizer='dorefa' works with every a")
            if (KBIT_ACT_QUANTIZERS.get(self.a_quantizer).own_gradient
                    and self.a_estimator != "saturate_ste"):
                raise ValueError(
                    f"a_estimator={self.a_estimator!r} cannot be used with a_quantizer="
                    f"{self.a_quantizer!r}, which has its own gradient (zero outside the "
                    "learned clip range): leave a_estimator at 'saturate_ste'")
        for name in ("freeze_bn_after", "freeze_observers_after"):
            value = getattr(self, name)
            if value is None:
                continue
            check_int(name, value, min_value=0)
            if not scheme.late_freezes:
                raise ValueError(f"{name}={value!r} needs scheme='int8_affine' (it freezes the "
                                 "folded BatchNorms and range observers of that scheme), got "
                                 f"scheme={self.scheme!r}; use None")

    def clip_for(self, layer_name: str) -> float:
        """The activation clip of the layer ``layer_name``: its ``a_clips`` entry or ``a_clip``."""
        return dict(self.a_clips).get(layer_name, self.a_clip)

    @property
    def is_float(self) -> bool:
        """True when neither weights nor activations are quantized (``w == a == 32``)."""
        return self.w == 32 and self.a == 32


def _as_clips(raw: Any) -> tuple[tuple[str, float], ...]:
    """``a_clips`` as sorted ``(layer name, clip)`` pairs; ValueError for anything else."""
    items = raw.items() if isinstance(raw, Mapping) else raw
    try:
        pairs = tuple(sorted((str(name), float(clip)) for name, clip in items))
    except (TypeError, ValueError) as err:
        raise ValueError(f"a_clips={raw!r} must map layer names to positive clips") from err
    for name, clip in pairs:
        check_float(f"a_clips[{name!r}]", clip, min_value=0.0, min_exclusive=True)
    return pairs
