"""Every weight x activation precision on nin: W in {32, 8, 4, 2, ternary, binary} x A in
{32, 8, 4, 2, binary}, each row QAT fine-tuned from a trained float model.

k-bit activation rows calibrate their clips when quantizing (``A_PERCENTILE``).
Binary activations need the bacp block order (BatchNorm before the sign, so the sign sees
centred values, not ReLU outputs that are all non-negative), so the A-binary column starts from
a float nin trained in that order and uses the binary tricks (low BN momentum, saturating STE);
the other columns start from the usual cbap float nin. Binary and ternary weights use the low
BN momentum too (and ternary a 0.05 gap). Every quantized row re-estimates its BN statistics
after training. The A-binary column trains on the micronet table's binary-activation schedule
(10 quick epochs of Adam at lr 5e-3), so its W binary / A binary cell is the micronet table's
``nin-wbin-abin`` row (same spec: trained once per ``--table all``, reused there).
"""

from __future__ import annotations

from typing import Any

from netshrink.bench.tables.micronet import BINARY_QAT_LONG
from netshrink.bench.tables.recipes import binary_tricks, quantize
from netshrink.bench.tables.spec import Row, Schedule, Table, register_table

FLOAT = Schedule(epochs={"full": 200, "quick": 8, "smoke": 2}, lr=0.1)
QAT = Schedule(epochs={"full": 150, "quick": 2, "smoke": 1}, lr=0.02, recalibrate_bn=20)
# The quick profile's epochs go where they buy accuracy: rows whose weights and activations
# both have 4 bits or more start near float accuracy with calibrated clips (W32/A8 before any
# training: 61% against float 61%) and get one epoch; the binary-activation column, the furthest
# from float and still climbing after 3 epochs (18-24 points below float at 3 epochs of Adam at
# lr 1e-3), gets the micronet table's ten at lr 5e-3 (measured there: W binary / A binary 41.2 ->
# 48.9 %, float 60.8 %).
QAT_SHORT = Schedule(epochs={"full": 150, "quick": 1, "smoke": 1}, lr=0.02, recalibrate_bn=20)
BINARY_QAT = BINARY_QAT_LONG
_WIDE: tuple[int | str, ...] = (32, 8, 4)  # precisions of the QAT_SHORT rows (W and A)

WEIGHTS: tuple[int | str, ...] = (32, 8, 4, 2, "ternary", "binary")
ACTIVATIONS: tuple[int | str, ...] = (32, 8, 4, 2, "binary")
_SHORT = {"ternary": "tern", "binary": "bin"}


def _short(p: int | str) -> str:
    return _SHORT.get(p, str(p)) if isinstance(p, str) else str(p)


#: k-bit activation clips are calibrated when quantizing, at this percentile of each layer's
#: input (``a_calibrate``): the fixed clip 1.0 after BatchNorm + ReLU saturated most of the
#: range (the inputs' 99.99th percentiles are 3-6) and cost 5-12 points at every width
#: (measured before QAT on the quick float nin, W32: A8 23% with the fixed clip, 61% calibrated,
#: float 61%; after the 2-epoch QAT W32/A8 went from 55.3% to 62.5%). Fewer levels want a
#: tighter clip (less rounding error, more clipping): W32/A2 before QAT, 98th percentile 55%,
#: 99th 49%.
A_PERCENTILE: dict[int | str, float] = {8: 99.99, 4: 99.9, 2: 98.0}


def _row(w: int | str, a: int | str) -> Row:
    options: dict[str, Any] = {}
    if a in A_PERCENTILE:
        options["a_calibrate"] = A_PERCENTILE[a]
    if a == "binary":
        options.update(binary_tricks())
    elif w in ("ternary", "binary"):
        options["bn_momentum"] = 0.01
    if w == "ternary":
        options["ternary_gap"] = 0.05
    return Row(f"nin-w{_short(w)}-a{_short(a)}", f"nin, W {w} / A {a}",
               upstream="nin-bacp-float" if a == "binary" else "nin-float",
               stages=(quantize(w, a, **options),),
               schedule=(BINARY_QAT if a == "binary" else
                         QAT_SHORT if w in _WIDE and a in _WIDE else QAT),
               cell=(str(w), str(a)))


BITS = register_table(Table(
    name="bits",
    title="CIFAR-10, nin: every weight x activation precision (QAT from float)",
    baseline="nin-float",
    grid=("W", "A"),
    rows=(
        Row("nin-float", "nin, float (W 32 / A 32)", model="nin", schedule=FLOAT,
            cell=("32", "32")),
        Row("nin-bacp-float", "nin bacp order, float (start of the A binary column)",
            model="nin", model_kwargs={"block_order": "bacp"}, schedule=FLOAT),
        *(_row(w, a) for w in WEIGHTS for a in ACTIVATIONS if (w, a) != (32, 32)),
    ),
))
