"""The quantizer registries: plain name -> object dicts filled by ``@...register("name")``.

* ``WEIGHT_QUANTIZERS`` / ``ACT_QUANTIZERS``: quantizer classes by ``kind``. Packed files record
  each quantizer as its ``spec()`` (``kind`` plus constructor arguments), so a loaded model
  rebuilds the same quantizer classes by name (a user-registered class included).
* ``QUANT_SCHEMES``: ``QuantConfig.scheme`` -> the handler that builds a layer's weight and
  activation quantizers (``QuantScheme``): ``quantize_`` makes one look-up, and the names
  ``QuantConfig`` accepts are the registered ones.
* ``KBIT_ACT_QUANTIZERS``: ``QuantConfig.a_quantizer`` -> how a k-bit activation quantizer is
  built (``KBitActQuantizer``), for the built-in schemes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from netshrink.core import Registry
from netshrink.quant.quantizers.base import ActQuantizer, WeightQuantizer

if TYPE_CHECKING:
    from netshrink.quant.config import Precision, QuantConfig

WEIGHT_QUANTIZERS: Registry[type[WeightQuantizer]] = Registry("weight quantizer")
ACT_QUANTIZERS: Registry[type[ActQuantizer]] = Registry("activation quantizer")


class QuantScheme:
    """A quantization scheme's handler: the quantizers ``quantize_`` puts in each layer.

    ``weight`` / ``act`` get a precision other than 32 (float layers get no quantizer) and the
    config; ``shape`` is the layer's out-major weight shape ``(out, fan_in)``. ``validate``
    rejects configs the scheme cannot run (a ValueError naming the field), called by
    ``QuantConfig.__post_init__``. ``fold_bn``: every quantized Conv2d followed only by a
    BatchNorm2d absorbs it (``QuantConvBn2d``) when its weight quantizer is ``AffineWeight``.
    ``kbit_act_quantizers``: the scheme builds k-bit activations with ``config.a_quantizer``
    (so a non-default one is allowed). ``late_freezes``: ``freeze_bn_after`` /
    ``freeze_observers_after`` apply. Register an instance with ``@register_scheme("name")``
    on the class (see docs/extending.md)."""

    fold_bn: bool = False
    kbit_act_quantizers: bool = True
    late_freezes: bool = False

    def validate(self, config: QuantConfig) -> None:
        """Raise ValueError for a config this scheme cannot run (default: accept all)."""

    def weight(self, precision: Precision, config: QuantConfig,
               shape: tuple[int, int] | None) -> WeightQuantizer | None:
        raise NotImplementedError

    def act(self, precision: Precision, config: QuantConfig) -> ActQuantizer | None:
        raise NotImplementedError


QUANT_SCHEMES: Registry[QuantScheme] = Registry("quantization scheme")


def register_scheme(name: str) -> Callable[[type[QuantScheme]], type[QuantScheme]]:
    """Class decorator: register an instance of a ``QuantScheme`` subclass as ``name``."""
    def add(cls: type[QuantScheme]) -> type[QuantScheme]:
        if not (isinstance(cls, type) and issubclass(cls, QuantScheme)):
            raise TypeError(f"register_scheme({name!r}) needs a QuantScheme subclass, got "
                            f"{cls!r}")
        QUANT_SCHEMES.register(name)(cls())
        return cls
    return add


def list_schemes() -> list[str]:
    """Names ``QuantConfig.scheme`` accepts."""
    return QUANT_SCHEMES.names()


@dataclasses.dataclass(frozen=True)
class KBitActQuantizer:
    """How ``a_quantizer=name`` builds a k-bit activation quantizer: ``build(bits, config)``.
    ``own_gradient``: it brings its own backward (then ``a_estimator`` must stay at its
    default, ``"saturate_ste"``)."""

    build: Callable[[int, QuantConfig], ActQuantizer]
    own_gradient: bool = False


KBIT_ACT_QUANTIZERS: Registry[KBitActQuantizer] = Registry("k-bit activation quantizer")


def register_kbit_act_quantizer(name: str, *, own_gradient: bool = False
                                ) -> Callable[[Callable[[int, QuantConfig], ActQuantizer]],
                                              Callable[[int, QuantConfig], ActQuantizer]]:
    """Decorator: ``build(bits, config) -> ActQuantizer`` becomes ``a_quantizer=name``."""
    def add(build: Callable[[int, QuantConfig], ActQuantizer]
            ) -> Callable[[int, QuantConfig], ActQuantizer]:
        KBIT_ACT_QUANTIZERS.register(name)(KBitActQuantizer(build, own_gradient))
        return build
    return add


def list_kbit_act_quantizers() -> list[str]:
    """Names ``QuantConfig.a_quantizer`` accepts."""
    return KBIT_ACT_QUANTIZERS.names()


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
