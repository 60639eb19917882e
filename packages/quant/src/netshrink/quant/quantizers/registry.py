"""The quantizer registries: plain name -> class dicts filled by ``@...register("name")``.

Packed files record each quantizer as its ``spec()`` (``kind`` plus constructor arguments), so a
loaded model rebuilds the same quantizer classes by name.
"""

from __future__ import annotations

from typing import Any

from netshrink.core import Registry
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer

WEIGHT_QUANTIZERS: Registry[type[WeightQuantizer]] = Registry("weight quantizer")
ACT_QUANTIZERS: Registry[type[ActQuantizer]] = Registry("activation quantizer")


def list_weight_quantizers() -> list[str]:
    return WEIGHT_QUANTIZERS.names()


def list_act_quantizers() -> list[str]:
    return ACT_QUANTIZERS.names()


def weight_quantizer_from_spec(spec: dict[str, Any]) -> WeightQuantizer:
    """Rebuild a weight quantizer from its ``spec()`` record."""
    options = {k: v for k, v in spec.items() if k != "kind"}
    return WEIGHT_QUANTIZERS.get(spec.get("kind"))(**options)


def act_quantizer_from_spec(spec: dict[str, Any]) -> ActQuantizer:
    """Rebuild an activation quantizer from its ``spec()`` record."""
    options = {k: v for k, v in spec.items() if k != "kind"}
    return ACT_QUANTIZERS.get(spec.get("kind"))(**options)
