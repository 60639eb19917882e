import math

import pytest

from netshrink.bench.engine import TrainConfig, lr_at


def test_cosine_starts_at_peak_and_reaches_zero():
    cfg = TrainConfig(epochs=2, lr=0.2, schedule="cosine")
    assert lr_at(0, 100, 50, cfg) == pytest.approx(0.2)
    assert lr_at(50, 100, 50, cfg) == pytest.approx(0.1)
    assert lr_at(100, 100, 50, cfg) == pytest.approx(0.0, abs=1e-12)


def test_multistep_drops_at_milestones():
    cfg = TrainConfig(epochs=4, lr=1.0, schedule="multistep", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_at(s, 100, 25, cfg) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_linear_warmup_then_schedule():
    cfg = TrainConfig(epochs=4, lr=0.4, schedule="constant", warmup_epochs=1)
    assert [lr_at(s, 40, 10, cfg) for s in (0, 4, 9, 10, 39)] == pytest.approx(
        [0.04, 0.2, 0.4, 0.4, 0.4])
    cos = TrainConfig(epochs=2, lr=1.0, schedule="cosine", warmup_epochs=1)
    assert lr_at(10, 20, 10, cos) == pytest.approx(1.0)
    assert lr_at(15, 20, 10, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("epochs", 0, "epochs=0 must be at least 1"),
    ("optimizer", "rmsprop", "optimizer='rmsprop' is not allowed; choose one of: 'sgd', 'adam'"),
    ("schedule", "step", "schedule='step' is not allowed"),
    ("lr", -0.1, "lr=-0.1 must be greater than 0.0"),
    ("amp", "fp16", "amp='fp16' is not allowed"),
    ("milestones", (0.5, 1.5), "milestones=1.5 must be at most 1.0"),
])
def test_bad_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{field: value})
