"""The naming rule for functions that take a model (docs/api-conventions.md), as a check.

A public function whose name ends in ``_`` modifies the model (or layer) it is given, in place;
when it returns a module, that module is the one it was given (``quantize_``, ``apply_plan_``).
A function without the trailing ``_`` never modifies its argument; when it returns a module, it
is a new one (``fuse``, ``prune_channels``). ``call_checked`` calls a function and raises an
AssertionError naming what broke the rule, which each package's tests run over its ``__all__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["call_checked", "model_fingerprint", "modifies_its_argument", "takes_a_model"]


def modifies_its_argument(fn: Callable[..., Any]) -> bool:
    """True when ``fn``'s name says it modifies the model it is given (a trailing ``_``)."""
    return fn.__name__.endswith("_")


def takes_a_model(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a model or layer: a parameter annotated with ``nn.Module`` (not a
    module *type*, as registries take, nor a callable returning one). The functions the rule is
    about."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any("Module" in str(p.annotation)
               and not any(w in str(p.annotation) for w in ("type[", "Callable"))
               for p in params)


def model_fingerprint(model: nn.Module) -> list[tuple[Any, ...]]:
    """What a modification changes: each module's name, type, training flag and
    ``extra_repr()`` (settings such as a clip or a momentum), and each parameter's and buffer's
    name, shape, dtype and values (copied)."""
    out: list[tuple[Any, ...]] = [(name, type(m), m.training, m.extra_repr())
                                  for name, m in model.named_modules()]
    for kind, items in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for name, t in items:
            out.append((kind, name, tuple(t.shape), t.dtype, t.detach().clone()))
    return out


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if len(x) != len(y):
            return False
        for u, v in zip(x, y, strict=True):
            if isinstance(u, torch.Tensor):
                if not (isinstance(v, torch.Tensor) and torch.equal(u, v)):
                    return False
            elif u != v:
                return False
    return True


def call_checked(fn: Callable[..., Any], model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``fn(model, *args, **kwargs)``, checked against the naming rule: with a trailing ``_``,
    ``model`` must change and a returned module must be ``model`` itself; without, ``model``
    must stay exactly as it was and a returned module must be another object."""
    before = model_fingerprint(model)
    out = fn(model, *args, **kwargs)
    changed = not _same(before, model_fingerprint(model))
    name = getattr(fn, "__name__", repr(fn))
    if modifies_its_argument(fn):
        assert changed, f"{name} ends in '_' but left the model it was given unchanged"
        assert not isinstance(out, nn.Module) or out is model, (
            f"{name} ends in '_' but returned another module than the one it was given")
    else:
        assert not changed, f"{name} has no trailing '_' but modified the model it was given"
        assert not isinstance(out, nn.Module) or out is not model, (
            f"{name} has no trailing '_' but returned the module it was given")
    return out
