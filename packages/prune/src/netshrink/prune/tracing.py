"""torch.fx tracing with an error that names the module that could not be traced.

Pruning reads a model's structure from its fx graph, never from per-model rules, so a model
must be symbolically traceable. When it is not, ``trace`` raises ``UntraceableModelError``
naming the innermost module whose ``forward`` failed (or the model's own forward), its type and
the original reason, so the user knows which module to rewrite or wrap.
"""

from __future__ import annotations

import functools
from typing import Any

import torch.fx
from torch import nn

from netshrink.prune.pruners import (
    LEAF_FUNCTIONS,
    TRACED_FORWARDS,
    is_registered_leaf,
    load_third_party,
)


class UntraceableModelError(RuntimeError):
    """The model cannot be traced with torch.fx; the message names the failing module."""


class _NamingTracer(torch.fx.Tracer):
    """A default fx tracer that turns a failure inside a module into UntraceableModelError,
    and keeps modules whose type has a registered pruner or is a registered leaf (``pruners``)
    as leaves; a type with a registered traced forward is traced through that."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_registered_leaf(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        stand_in = TRACED_FORWARDS.get(type(m))
        if stand_in is not None:
            forward = functools.partial(stand_in, m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except UntraceableModelError:
            raise
        except Exception as err:
            name = self.path_of_module(m)
            raise UntraceableModelError(
                f"cannot trace module {name!r} ({type(m).__name__}) with torch.fx: "
                f"{type(err).__name__}: {err}. Pruning needs a traceable model: avoid "
                "data-dependent control flow in that module's forward") from err


def trace_graph(module: nn.Module) -> torch.fx.Graph:
    """The fx graph of ``module``'s own (class) forward, with the same leaves as ``trace``
    (``forward_edits`` rewrites it)."""
    load_third_party()
    return _NamingTracer(autowrap_functions=tuple(LEAF_FUNCTIONS)).trace(module)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model``; the GraphModule shares the model's submodules."""
    load_third_party()
    tracer = _NamingTracer(autowrap_functions=tuple(LEAF_FUNCTIONS))
    try:
        graph = tracer.trace(model)
    except UntraceableModelError:
        raise
    except Exception as err:
        raise UntraceableModelError(
            f"cannot trace the forward of {type(model).__name__} itself with torch.fx: "
            f"{type(err).__name__}: {err}") from err
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
