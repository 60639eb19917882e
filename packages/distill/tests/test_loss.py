import math

import pytest
import torch
import torch.nn.functional as F

from netshrink.distill import DistillConfig, kd_divergence, kd_loss

# hand-made logits: two samples, three classes
STUDENT = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
TEACHER = [[1.0, 3.0, 0.0], [-2.0, 0.5, 1.5]]
TARGETS = [1, 2]


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum p log(p / q)."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _expected(alpha: float, t: float, student=STUDENT, teacher=TEACHER) -> float:
    kl = sum(_kl(_softmax(tr, t), _softmax(sr, t))
             for sr, tr in zip(student, teacher, strict=True)) / len(student)
    ce = sum(-math.log(_softmax(sr, 1.0)[y]) for sr, y in zip(student, TARGETS, strict=True))
    return alpha * t * t * kl + (1 - alpha) * ce / len(student)


@pytest.mark.parametrize(("alpha", "t"), [(0.9, 4.0), (0.5, 2.0), (1.0, 1.0), (0.0, 3.0),
                                          (0.3, 0.5)])
def test_kd_loss_is_the_formula_on_hand_made_logits(alpha: float, t: float):
    s, te, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)
    got = kd_loss(s, te, y, alpha, t)
    assert got.item() == pytest.approx(_expected(alpha, t), rel=1e-5, abs=1e-7)


def test_the_kl_runs_from_teacher_to_student_and_carries_t_squared():
    s, te = torch.tensor(STUDENT), torch.tensor(TEACHER)
    t = 4.0
    forward = kd_divergence(s, te, t).item()
    swapped = kd_divergence(te, s, t).item()
    assert forward == pytest.approx(_expected(1.0, t), rel=1e-5)
    # the other direction, KL(student || teacher), is a different number on these logits
    assert swapped == pytest.approx(_expected(1.0, t, student=TEACHER, teacher=STUDENT), rel=1e-5)
    assert abs(forward - swapped) > 1e-3 * forward
    # T^2: the same KL without the factor is 16 times smaller
    plain_kl = F.kl_div(F.log_softmax(s / t, 1), F.softmax(te / t, 1), reduction="batchmean")
    assert forward == pytest.approx(t * t * plain_kl.item(), rel=1e-6)


def test_given_cross_entropy_is_used_as_the_hard_term():
    s, te, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)
    ce = torch.tensor(10.0)
    got = kd_loss(s, te, y, 0.25, 2.0, ce=ce)
    assert got.item() == pytest.approx(0.25 * kd_divergence(s, te, 2.0).item() + 0.75 * 10.0)


def test_gradients_reach_the_student_only_and_low_precision_logits_are_fine():
    s = torch.tensor(STUDENT, requires_grad=True)
    te = torch.tensor(TEACHER, requires_grad=True)
    kd_loss(s.bfloat16(), te.detach().bfloat16(), torch.tensor(TARGETS), 0.9, 4.0).backward()
    assert s.grad is not None and te.grad is None
    assert kd_loss(s.bfloat16(), te.bfloat16(), torch.tensor(TARGETS), 0.9, 4.0).dtype == \
        torch.float32


def test_mismatched_class_counts_are_refused():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\).*same shape"):
        kd_divergence(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("alpha", -0.1, r"\[0, 1\]"), ("alpha", 1.5, r"\[0, 1\]"), ("alpha", math.nan, r"\[0, 1\]"),
    ("alpha", math.inf, r"\[0, 1\]"), ("alpha", True, r"\[0, 1\]"), ("alpha", "0.5", r"\[0, 1\]"),
    ("temperature", 0.0, "> 0"), ("temperature", -4.0, "> 0"), ("temperature", math.nan, "> 0"),
    ("temperature", math.inf, "> 0"), ("temperature", None, "> 0"),
])
def test_bad_config_values_name_field_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=rf"{field}={value!r}".replace(".", r"\.") + ".*"
                       + allowed):
        DistillConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                **{"alpha": 0.5, "temperature": 1.0, field: value})


def test_good_config_values_are_kept_as_floats():
    config = DistillConfig(alpha=1, temperature=2)
    assert (config.alpha, config.temperature) == (1.0, 2.0)
    assert isinstance(config.alpha, float) and isinstance(config.temperature, float)
    assert DistillConfig(alpha=0.0).alpha == 0.0
