"""QuantConfig accepts every W x A combination and rejects bad values with a clear message."""

import dataclasses

import pytest

from netshrink.quant import PRECISIONS, QuantConfig


@pytest.mark.parametrize("w", PRECISIONS)
@pytest.mark.parametrize("a", PRECISIONS)
def test_every_combination_is_legal(w, a):
    cfg = QuantConfig(w=w, a=a)
    assert (cfg.w, cfg.a) == (w, a)


def test_defaults_and_frozen():
    cfg = QuantConfig(w=4, a=4)
    assert (cfg.w_estimator, cfg.a_estimator) == ("ste", "saturate_ste")
    assert (cfg.first, cfg.last, cfg.a_clip, cfg.ternary_gap) == ("float", "float", 1.0, 0.0)
    assert cfg.ternary_scale and cfg.binary_scale and cfg.bn_momentum is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.w = 2


@pytest.mark.parametrize("field", ["w", "a"])
@pytest.mark.parametrize("bad", [0, 1, 33, -4, "tern", 8.0, True, "8", None])
def test_bad_precision_names_value_and_allowed(field, bad):
    kwargs = {"w": 8, "a": 8, field: bad}
    with pytest.raises(ValueError) as err:
        QuantConfig(**kwargs)
    msg = str(err.value)
    assert f"{field}={bad!r}" in msg
    assert "32, 16, 8, 4, 3, 2, 'ternary', 'binary'" in msg


@pytest.mark.parametrize(("field", "bad", "allowed"), [
    ("w_estimator", "straight", "'ste', 'saturate_ste', 'soft_ste'"),
    ("a_estimator", "STE", "'ste', 'saturate_ste', 'soft_ste'"),
    ("first", "fp32", "'float', '8bit', 'same'"),
    ("last", 8, "'float', '8bit', 'same'"),
    ("ternary_scale", 1, "True, False"),
    ("binary_scale", "yes", "True, False"),
])
def test_bad_choices(field, bad, allowed):
    with pytest.raises(ValueError, match=f"{field}={bad!r}.*{allowed}"):
        QuantConfig(w=2, a=2, **{field: bad})


@pytest.mark.parametrize(("field", "bad", "hint"), [
    ("ternary_gap", -0.1, "at least 0"),
    ("ternary_gap", 1.0, r"\[0, 1\)"),
    ("ternary_gap", float("nan"), "finite"),
    ("a_clip", 0.0, "greater than 0"),
    ("bn_momentum", 0.0, "greater than 0"),
    ("bn_momentum", 1.5, "at most 1"),
    ("bn_momentum", "0.1", "finite real number"),
])
def test_bad_numbers(field, bad, hint):
    with pytest.raises(ValueError, match=f"{field}=.*{hint}"):
        QuantConfig(w="ternary", a="binary", **{field: bad})


def test_scheme():
    assert QuantConfig(w=8, a=8).scheme == "dorefa"
    assert QuantConfig(w=8, a=8, scheme="int8_affine").scheme == "int8_affine"
    with pytest.raises(ValueError, match="scheme='int8_affine' needs w=8 and a=8"):
        QuantConfig(w="binary", a=8, scheme="int8_affine")
