"""Issue 16, item 5: every public quant function that takes a model keeps the naming rule
(``netshrink.core.call_checked``): with a trailing ``_`` it modifies the model it is given and
returns it; without, the model is left exactly as it was."""

import inspect

import pytest
import torch
from torch import nn

import netshrink.quant as quant
from netshrink.core import call_checked, takes_a_model
from netshrink.quant import QuantConfig

G = torch.Generator().manual_seed(0)
X = torch.randn(4, 3, 8, 8, generator=G)


def _float(make_small_cnn):
    return make_small_cnn(0)


def _int8(make_small_cnn):
    return quant.quantize_(make_small_cnn(0), QuantConfig(w=8, a=8, scheme="int8_affine"))


def _binary_changed(make_small_cnn):
    """Binary weights, one changed in place since the layer last constrained it."""
    model = quant.quantize_(make_small_cnn(0), QuantConfig(w="binary", a=4))
    with torch.no_grad():
        quant.quantized_layers(model)[0][1].weight.mul_(5.0)
    return model


def _k_bit(make_small_cnn):
    return quant.quantize_(make_small_cnn(0), QuantConfig(w=4, a=4)).eval()


def _named(name, fn):
    fn.__name__ = name
    return fn


#: name -> (model maker, the call's other arguments)
CASES = {
    "quantize_": (_float, (QuantConfig(w=4, a=4),)),
    "calibrate_": (_float, ([X],)),
    "convert_fp16_": (_float, ()),
    "quantize_weights_uint8_": (_float, ()),
    "freeze_bn_stats_": (_int8, ()),
    "freeze_observers_": (_int8, ()),
    "constrain_latent_weights_": (_binary_changed, ()),
    "calibrate_act_clips_": (_k_bit, ([X], 99.0)),
    "find_conv_bn_pairs": (_float, ()),
    "quantizable_layers": (_float, ()),
    "quantized_layers": (_k_bit, ()),
    "packed_size": (_k_bit, ()),
    "save_packed": (_k_bit, None),  # a path: given by the test
}


def test_every_public_function_taking_a_model_is_classified():
    public = {n for n in quant.__all__ if inspect.isfunction(getattr(quant, n))
              and takes_a_model(getattr(quant, n))}
    assert public == set(CASES), "add the new function to CASES (docs/api-conventions.md)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_quant_functions_keep_the_naming_rule(name, make_small_cnn, tmp_path):
    make, args = CASES[name]
    fn = getattr(quant, name)
    if args is None:
        fn, args = _named(name, lambda m: quant.save_packed(m, tmp_path / "m.safetensors")), ()
    call_checked(fn, make(make_small_cnn), *args)


def test_the_former_names_still_work_and_warn(make_small_cnn):
    with pytest.warns(DeprecationWarning, match="quantize is renamed quantize_"):
        model = quant.quantize(make_small_cnn(0), QuantConfig(w=4, a=4))
    assert quant.quantized_layers(model)
    for old in ("calibrate", "convert_fp16", "quantize_weights_uint8", "freeze_bn_stats",
                "freeze_observers", "constrain_latent_weights", "calibrate_act_clips"):
        alias = getattr(quant, old)
        assert alias.__wrapped__ is getattr(quant, old + "_") and old not in quant.__all__


def test_quantize_returns_the_model_it_changed(make_small_cnn):
    model = make_small_cnn(0)
    assert quant.quantize_(model, QuantConfig(w=2, a=2)) is model
    assert isinstance(model[3], nn.Conv2d) and type(model[3]) is not nn.Conv2d
