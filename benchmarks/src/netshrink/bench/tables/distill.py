"""Architecture -> distillation -> pruning -> quantization: the compression homework's
pipeline, measured.

1. A float resnet18_cifar **teacher**.
2. A MobileNet-v1-style depthwise-separable student (``mobilenet_student``) trained from
   scratch on the same schedule **alone** and **distilled** from the teacher
   (``alpha T^2 KL(teacher || student) + (1 - alpha) CE``, alpha 0.9, T 4), on two seeds: the
   training subset of the quick profile is small, so one seed's difference could be noise.
3. The seed-0 distilled student **slimmed in three rounds** of increasing rate (network
   slimming: the BatchNorm scales rank the channels globally, whole channels are cut out),
   each round fine-tuned, with the teacher still distilling and the slimming penalty
   (L1 on the BN scales) readying the next round.
4. The final student's weights stored as **uint8** (per-tensor min-max, the
   ``uint8_minmax`` scheme) and as **float16**, every layer, without further training.

Every distilled row (and every row downstream of one) names its teacher in its label, and its
result records the teacher's row and accuracy (the report's "teacher" column). The baseline,
for the "loss vs float" and compression columns, is the teacher: the pipeline's total gain.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from netshrink.bench.tables.prune import PRUNE
from netshrink.bench.tables.recipes import prune, quantize, slimming
from netshrink.bench.tables.spec import NO_TRAINING, Row, Schedule, Table, register_table

#: The teacher is the prune table's float resnet18_cifar, row for row (same name and spec, so
#: the same hash): ``bench reproduce --table all`` trains it once and reuses it here.
TEACHER_ROW = "r18-float"
TEACHER = PRUNE.row(TEACHER_ROW)
TEACHER_NAME = TEACHER.model
#: The student at half the profile's width (x0.125 in the quick profile, 0.28 M parameters in
#: the full one, 1/40 of the teacher's). Measured (quick profile, seeds 0 / 1): at the profile's
#: width the student came within 4.4 points of this 8-epoch teacher alone, and distillation
#: moved it by -0.2 / +0.3 points; at half width it trails by 13 points, and gains from KD.
STUDENT_KWARGS: dict[str, Any] = {"width": 0.5}
# the same schedule for the student alone and distilled: only the loss differs
STUDENT = Schedule(epochs={"full": 200, "quick": 6, "smoke": 2}, lr=0.1)
FINETUNE = Schedule(epochs={"full": 40, "quick": 1, "smoke": 1}, lr=0.02)
SEEDS: tuple[int, ...] = (0, 1)
ALPHA, TEMPERATURE = 0.9, 4.0
#: Fraction of the student's channels removed after each round (cumulative, increasing).
ROUNDS: tuple[float, ...] = (0.2, 0.35, 0.5)
SLIMMING = 1e-4  # the L1 penalty on BN scales while fine-tuning each round


def distill(alpha: float = ALPHA, temperature: float = TEMPERATURE) -> dict[str, Any]:
    """netshrink.distill knowledge distillation; the row's ``teacher`` gives the model."""
    return {"kind": "distill.kd", "config": {"alpha": alpha, "temperature": temperature}}


def round_amounts(removed: tuple[float, ...] = ROUNDS) -> list[float]:
    """Per-round ``amount`` (a fraction of the channels the model has then) that removes the
    cumulative fractions ``removed`` of the original channels: ``1 - (1 - r_k) / (1 - r_k-1)``."""
    out, kept = [], 1.0
    for r in removed:
        if not kept > 1.0 - r >= 0.0:
            raise ValueError(f"rounds {removed!r} must increase within [0, 1)")
        out.append(round(1.0 - (1.0 - r) / kept, 6))
        kept = 1.0 - r
    return out


def _student_rows() -> list[Row]:
    rows = []
    for seed in SEEDS:
        rows.append(Row(f"mbs-alone-s{seed}", f"mobilenet_student, trained alone, seed {seed}",
                        model="mobilenet_student", model_kwargs=STUDENT_KWARGS,
                        schedule=STUDENT, seed=seed))
        rows.append(Row(f"mbs-kd-s{seed}",
                        f"mobilenet_student, distilled from {TEACHER_NAME} ({TEACHER_ROW}, "
                        f"alpha {ALPHA:g}, T {TEMPERATURE:g}), seed {seed}",
                        model="mobilenet_student", model_kwargs=STUDENT_KWARGS,
                        stages=(distill(),), schedule=STUDENT, teacher=TEACHER_ROW, seed=seed))
    return rows


def _slimming_rows() -> list[Row]:
    rows, upstream = [], f"mbs-kd-s{SEEDS[0]}"
    for i, (removed, amount) in enumerate(zip(ROUNDS, round_amounts(), strict=True), start=1):
        name = f"mbs-kd-slim{i}"
        rows.append(Row(name, f"distilled student, slimming round {i}: {removed:.0%} of the "
                              f"channels removed, fine-tuned with KD from {TEACHER_ROW}",
                        upstream=upstream, teacher=TEACHER_ROW,
                        stages=(prune("bn_gamma", amount), slimming(SLIMMING), distill()),
                        schedule=FINETUNE))
        upstream = name
    return rows


def _storage_rows() -> list[Row]:
    last = f"mbs-kd-slim{len(ROUNDS)}"
    every_layer = {"first": "same", "last": "same"}
    return [
        Row(f"{last}-uint8", f"slimmed distilled student ({TEACHER_ROW}), weights uint8 "
                             "(per-tensor min-max)", upstream=last,
            stages=(quantize(8, 32, scheme="uint8_minmax", **every_layer),),
            schedule=NO_TRAINING),
        Row(f"{last}-fp16", f"slimmed distilled student ({TEACHER_ROW}), weights float16",
            upstream=last, stages=(quantize(16, 32, **every_layer),), schedule=NO_TRAINING),
    ]


DISTILL = register_table(Table(
    name="distill",
    title="CIFAR-10, architecture -> distillation -> slimming -> 8/16-bit weights "
          "(resnet18_cifar teacher, MobileNet-style student)",
    baseline=TEACHER_ROW,
    rows=(
        dataclasses.replace(TEACHER, label=f"{TEACHER_NAME}, float (the teacher)"),
        *_student_rows(),
        *_slimming_rows(),
        *_storage_rows(),
    ),
))
