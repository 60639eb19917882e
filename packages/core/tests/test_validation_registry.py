import pytest

from netshrink.core import Registry, check_choice, check_float, check_int


def test_check_choice_names_value_and_allowed():
    check_choice("mode", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"mode='c'.*'a', 'b'"):
        check_choice("mode", "c", ("a", "b"))


def test_check_choice_does_not_confuse_bool_with_int():
    with pytest.raises(ValueError, match="bits=True"):
        check_choice("bits", True, (1, 2))


@pytest.mark.parametrize("bad", [0, -4, 1.5, "3", True])
def test_check_int_rejects(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        check_int("epochs", bad, min_value=1)


def test_check_float_bounds_and_nan():
    check_float("lr", 0.1, min_value=0.0, min_exclusive=True)
    with pytest.raises(ValueError, match="greater than 0.0"):
        check_float("lr", 0.0, min_value=0.0, min_exclusive=True)
    with pytest.raises(ValueError, match="at most 1"):
        check_float("p", 1.5, max_value=1)
    with pytest.raises(ValueError, match="finite real number"):
        check_float("p", float("nan"))
    with pytest.raises(ValueError, match="p=inf must be a finite"):
        check_float("p", float("inf"))


def test_registry_register_get_list():
    reg: Registry[int] = Registry("widget")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.names() == ["a", "b"]
    assert reg.get("b") == 2
    assert "a" in reg
    with pytest.raises(ValueError, match=r"unknown widget 'c'; known: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(3)
