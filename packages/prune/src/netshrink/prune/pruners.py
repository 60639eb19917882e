"""Per-module-type channel pruners: the registry that channel surgery and the analysis dispatch on.

A *layer pruner* says, for one module type, how to cut its channels:

* ``prune_out(module, keep_idx) -> module``: keep only the output channels ``keep_idx`` (a 1-D
  long tensor of original indices, in order); returns the pruned module (a new one or
  ``module`` changed in place);
* ``prune_in(module, keep_idx) -> module``: the same for the input channels; None for a
  *per-channel* layer (BatchNorm, a channel scale, PReLU, a channels-last LayerNorm): its
  input channel i is its output channel i, so pruning its outputs prunes its inputs;
* ``per_channel``: what the dependency graph reads: True means "passes channels through and
  is prunable" (the channels are tied to its input's, like a BatchNorm); False means it makes
  new output channels from all its inputs (a producer, like a conv or linear);
* ``channel_dim``: the dimension of the module's input that holds channels (1 for NCHW; -1 for
  a channels-last layer), or a function of the module giving it per instance;
* ``applies(module) -> bool``: whether an instance can be pruned at all (default: yes); the
  channels of one that cannot are kept (a LayerNorm over more than one dimension);
* ``shape(module) -> {name: int}`` / ``resize(module, shape) -> module``: the shape numbers a
  checkpoint records for a pruned module and how a freshly built module gets them back.
  Per-channel layers default to ``{"channels": n}`` (``n`` the first dimension of their first
  parameter or buffer) and ``prune_out(module, arange(n))``.

Look-up is by the module's type along its MRO, so subclasses of a registered type use its
pruner. A type registered with ``register_pruner`` is also traced as an fx *leaf* (its forward
is not traced into), so the analysis sees one call of it. The built-in pruners (convs incl.
grouped and depthwise, Linear, BatchNorm) are registered the same way, below.

    @register_pruner(MyScale, per_channel=True)
    def prune_my_scale(m: MyScale, keep: torch.Tensor) -> MyScale:
        m.scale = nn.Parameter(m.scale.detach()[keep])
        return m
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from netshrink.prune import _labels as L
from netshrink.prune.slicing import (
    channel_count,
    conv_resize,
    conv_slice_in,
    conv_slice_out,
    slice_channels_,
)

PruneFn = Callable[[Any, torch.Tensor], nn.Module]


@dataclasses.dataclass(frozen=True)
class LayerPruner:
    """How to prune one module type's channels (see the module docstring)."""

    module_type: type[nn.Module]
    prune_out: PruneFn
    prune_in: PruneFn | None
    per_channel: bool
    channel_dim: int | Callable[[Any], int] = 1
    shape: Callable[[Any], dict[str, int]] | None = None
    resize: Callable[[Any, dict[str, int]], nn.Module] | None = None
    applies: Callable[[Any], bool] | None = None

    def dim_of(self, module: nn.Module) -> int:
        """The channel dimension of ``module``'s input (``channel_dim``, or its value for this
        instance when ``channel_dim`` is a function of the module)."""
        dim = self.channel_dim
        return int(dim(module)) if callable(dim) else dim

    def prunable(self, module: nn.Module) -> bool:
        """False when this instance cannot be pruned (``applies``): its channels are kept."""
        return self.applies is None or bool(self.applies(module))

    def shape_of(self, module: nn.Module) -> dict[str, int]:
        if self.shape is not None:
            return self.shape(module)
        return {"channels": _first_dim(module)}

    def resized(self, module: nn.Module, shape: dict[str, int]) -> nn.Module:
        if self.resize is not None:
            return self.resize(module, shape)
        return self.prune_out(module, _arange(shape["channels"], module))

    def passes_channels(self, module: nn.Module) -> bool:
        """True when this module's outputs are its inputs' channels (one index set)."""
        return self.per_channel or _is_depthwise(module)


PRUNERS: dict[type[nn.Module], LayerPruner] = {}


def register_pruner(module_type: type[nn.Module], *, per_channel: bool,
                    prune_in: PruneFn | None = None,
                    channel_dim: int | Callable[[Any], int] = 1,
                    shape: Callable[[Any], dict[str, int]] | None = None,
                    resize: Callable[[Any, dict[str, int]], nn.Module] | None = None,
                    applies: Callable[[Any], bool] | None = None
                    ) -> Callable[[PruneFn], PruneFn]:
    """Decorator: register ``prune_out(module, keep_idx)`` as ``module_type``'s pruner.

    ``per_channel=True``: a channel-preserving layer (output channel i is input channel i),
    pruned with its input's channels; ``prune_in`` must then be None. ``per_channel=False``:
    a producer of new channels; ``prune_in`` is required. See the module docstring for the
    other arguments; ``applies(module) -> bool`` says whether an instance can be pruned at all
    (e.g. a LayerNorm over one dimension only); the channels of one that cannot are kept."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_pruner needs an nn.Module subclass, got {module_type!r}")
    if per_channel and prune_in is not None:
        raise ValueError(f"{module_type.__name__}: a per_channel pruner has no prune_in "
                         "(its input channels are its output channels)")
    if not per_channel and prune_in is None:
        raise ValueError(f"{module_type.__name__}: a producer pruner (per_channel=False) "
                         "needs prune_in")
    if not per_channel and not issubclass(module_type, L.CONV_TYPES + L.LINEAR_TYPES):
        raise ValueError(f"{module_type.__name__}: per_channel=False is supported for "
                         "subclasses of the convolutions and nn.Linear (the analysis reads "
                         "their groups / features); register a channel-preserving layer with "
                         "per_channel=True")

    def add(prune_out: PruneFn) -> PruneFn:
        if module_type in PRUNERS:
            raise ValueError(f"a pruner for {module_type.__name__} is registered twice")
        PRUNERS[module_type] = LayerPruner(module_type, prune_out, prune_in, per_channel,
                                           channel_dim, shape, resize, applies)
        return prune_out
    return add


def unregister_pruner(module_type: type[nn.Module]) -> None:
    """Remove ``module_type``'s pruner (KeyError naming it when there is none)."""
    if module_type not in PRUNERS:
        raise KeyError(f"no pruner is registered for {module_type.__name__}")
    del PRUNERS[module_type]


@contextlib.contextmanager
def registered_pruner(module_type: type[nn.Module], prune_out: PruneFn, *, per_channel: bool,
                      **options: Any) -> Iterator[LayerPruner]:
    """``register_pruner`` for the duration of a ``with`` block (tests, experiments)."""
    register_pruner(module_type, per_channel=per_channel, **options)(prune_out)
    try:
        yield PRUNERS[module_type]
    finally:
        PRUNERS.pop(module_type, None)


def find_pruner(module_type: type) -> LayerPruner | None:
    """The pruner registered for ``module_type`` or its nearest registered base class."""
    load_third_party()
    for base in module_type.__mro__:
        found = PRUNERS.get(base)
        if found is not None:
            return found
    return None


def get_pruner(module: nn.Module, name: str = "") -> LayerPruner:
    """``find_pruner`` for a module, or a TypeError naming the module and its type."""
    found = find_pruner(type(module))
    if found is None:
        where = f"module {name!r} " if name else ""
        raise TypeError(f"cannot prune the channels of {where}({type(module).__name__}): no "
                        f"pruner is registered for {type(module).__name__}; register one with "
                        "netshrink.prune.register_pruner (see docs/extending.md); registered: "
                        f"{', '.join(list_pruners())}")
    return found


def is_registered_leaf(module: nn.Module) -> bool:
    """True when ``type(module)`` itself has a pruner or is a registered leaf (traced as one
    fx node: its forward is not traced into); False for a type with a registered traced
    forward (``register_traced_forward``), which is traced through that."""
    load_third_party()
    kind = type(module)
    return kind not in TRACED_FORWARDS and (kind in PRUNERS or kind in LEAVES)


#: module types traced as fx leaves without a pruner of their own (a subclass of a registered
#: type uses its base's pruner; any other leaf's channels are kept): layers whose forward
#: branches on the input's shape (TF-"same" padding) or reads its own tensors per channel.
LEAVES: set[type[nn.Module]] = set()
#: functions fx calls as one node instead of tracing into (as ``torch.fx.wrap``).
LEAF_FUNCTIONS: set[Callable[..., Any]] = set()
#: module types traced through a stand-in forward ``fn(module, *args, **kwargs)`` instead of
#: their own: a forward fx cannot trace only because it branches on the input's spatial size
#: (which pruning never changes), e.g. timm VGG's ``ConvMlp`` head, which pools an input
#: smaller than its kernel. The stand-in must compute the same; the module's own submodules
#: then appear in the graph and prune as usual (a composite leaf would keep their channels).
TRACED_FORWARDS: dict[type[nn.Module], Callable[..., Any]] = {}


def register_leaf(module_type: type[nn.Module]) -> type[nn.Module]:
    """Trace ``module_type`` as one fx node (usable as a class decorator)."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_leaf needs an nn.Module subclass, got {module_type!r}")
    LEAVES.add(module_type)
    return module_type


def register_leaf_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Call ``fn`` as one fx node when tracing (its channels are kept)."""
    if not callable(fn):
        raise TypeError(f"register_leaf_function needs a function, got {fn!r}")
    LEAF_FUNCTIONS.add(fn)
    return fn


def register_traced_forward(module_type: type[nn.Module], forward: Callable[..., Any]
                            ) -> Callable[..., Any]:
    """Trace ``module_type`` (exactly that type, leaf or not) through ``forward(module, *args,
    **kwargs)``, an equivalent traceable forward (see ``TRACED_FORWARDS``); returns
    ``forward``. The model itself keeps running its own forward."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_traced_forward needs an nn.Module subclass, got "
                        f"{module_type!r}")
    if not callable(forward):
        raise TypeError(f"register_traced_forward needs a function, got {forward!r}")
    TRACED_FORWARDS[module_type] = forward
    return forward


#: layer types that need at least this many weights per filter (its fan-in: input channels
#: per group x kernel size): a weight-standardized conv divides each filter by its standard
#: deviation, which one value does not have (torch refuses it); selection keeps enough of such
#: a layer's input channels (``register_min_fan_in``).
MIN_FAN_IN: dict[type[nn.Module], int] = {}


def register_min_fan_in(module_type: type[nn.Module], fan_in: int) -> type[nn.Module]:
    """Pruning keeps at least ``fan_in`` weights per filter of ``module_type`` (and its
    subclasses), e.g. 2 for a weight-standardized conv; returns ``module_type``."""
    if not (isinstance(module_type, type) and issubclass(module_type, L.CONV_TYPES)):
        raise TypeError(f"register_min_fan_in needs a convolution subclass, got {module_type!r}")
    if not isinstance(fan_in, int) or isinstance(fan_in, bool) or fan_in < 1:
        raise ValueError(f"fan_in={fan_in!r} must be an integer of at least 1")
    MIN_FAN_IN[module_type] = fan_in
    return module_type


def min_input_channels(module: nn.Module) -> int:
    """How many input channels ``module`` must keep for its registered minimum fan-in
    (``register_min_fan_in``): 1 for a layer without one."""
    load_third_party()
    need = next((MIN_FAN_IN[b] for b in type(module).__mro__ if b in MIN_FAN_IN), 1)
    if need <= 1 or not isinstance(module, L.CONV_TYPES):
        return 1
    per_channel = 1
    for k in module.kernel_size:
        per_channel *= int(k)
    return module.groups * -(-need // per_channel)


def load_third_party() -> None:
    """Register the leaves and pruners of the model libraries already imported (timm); a
    library that is not imported cannot have built the model, so nothing is imported here."""
    from netshrink.prune.third_party import load

    load()


def list_pruners() -> list[str]:
    """Names of the module types with a registered pruner."""
    return sorted(t.__name__ for t in PRUNERS)


# -- helpers --------------------------------------------------------------------------------


def _first_dim(module: nn.Module) -> int:
    for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if t.ndim >= 1:
            return int(t.shape[0])
    raise TypeError(f"{type(module).__name__} holds no tensor to read its channel count "
                    "from; give register_pruner a shape= function")


def _arange(n: int, like: nn.Module) -> torch.Tensor:
    ref = next(iter(like.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    return torch.arange(n, dtype=torch.long, device=device)


def _is_depthwise(m: nn.Module) -> bool:
    """groups == in_channels (> 1), with or without a channel multiplier (out = m x in)."""
    return (isinstance(m, L.CONV_TYPES) and m.groups > 1 and m.groups == m.in_channels
            and m.out_channels % m.in_channels == 0)


def _factory(old: nn.Module) -> dict[str, Any]:
    ref = next(iter(old.parameters()), None)
    if ref is None:
        ref = next(iter(old.buffers()), torch.empty(0))
    return {"device": ref.device, "dtype": ref.dtype}


def _finish(new: nn.Module, old: nn.Module) -> nn.Module:
    new.train(old.training)
    for pname, p in new.named_parameters():
        p.requires_grad_(getattr(old, pname).requires_grad)
    return new


# -- built-in pruners: convolutions ---------------------------------------------------------


def _conv_shape(m: nn.Module) -> dict[str, int]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}


def _conv_like(old: nn.Module, shape: dict[str, int]) -> nn.Module:
    if type(old) not in L.CONV_TYPES:  # a subclass: its constructor may differ
        return conv_resize(old, shape)
    new = type(old)(shape["in_channels"], shape["out_channels"], old.kernel_size,
                    stride=old.stride, padding=old.padding, dilation=old.dilation,
                    groups=shape["groups"], bias=old.bias is not None,
                    padding_mode=old.padding_mode, **_factory(old))
    return _finish(new, old)


@torch.no_grad()
def _conv_prune_in(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep input channels ``keep``; a grouped conv keeps each output's own group's inputs at
    their local positions (the group count stays; the plan keeps the groups balanced)."""
    if type(old) not in L.CONV_TYPES:
        return conv_slice_in(old, keep)
    g = old.groups
    if g == 1:
        weight = old.weight[:, keep]
    else:
        b_in, b_out, nb_in = old.in_channels // g, old.out_channels // g, len(keep) // g
        rows = []
        for oi in range(old.out_channels):
            j = oi // b_out
            local = keep[j * nb_in:(j + 1) * nb_in] - j * b_in
            rows.append(old.weight[oi][local])
        weight = torch.stack(rows)
    new = _conv_like(old, {"in_channels": len(keep), "out_channels": old.out_channels,
                           "groups": g})
    new.weight.copy_(weight)
    if old.bias is not None:
        new.bias.copy_(old.bias)
    return new


@torch.no_grad()
def _conv_prune_out(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep output channels ``keep``; a depthwise conv (groups == in_channels) keeps the
    matching channels of its input too (one index set: with a channel multiplier m, whole
    blocks of m outputs)."""
    if type(old) not in L.CONV_TYPES:
        return conv_slice_out(old, keep)
    if _is_depthwise(old):  # whole multiplier blocks: in = groups = kept outputs / m
        n_in = len(keep) // (old.out_channels // old.in_channels)
        shape = {"in_channels": n_in, "out_channels": len(keep), "groups": n_in}
    else:
        shape = {"in_channels": old.in_channels, "out_channels": len(keep),
                 "groups": old.groups}
    new = _conv_like(old, shape)
    new.weight.copy_(old.weight[keep])
    if old.bias is not None:
        new.bias.copy_(old.bias[keep])
    return new


for _conv in L.CONV_TYPES:
    register_pruner(_conv, per_channel=False, prune_in=_conv_prune_in, shape=_conv_shape,
                    resize=_conv_like)(_conv_prune_out)


# -- built-in pruners: linear ---------------------------------------------------------------


def _linear_shape(m: nn.Linear) -> dict[str, int]:
    return {"in_features": m.in_features, "out_features": m.out_features}


def _linear_like(old: nn.Linear, shape: dict[str, int]) -> nn.Linear:
    new = type(old)(shape["in_features"], shape["out_features"], bias=old.bias is not None,
                    **_factory(old))
    return _finish(new, old)


@torch.no_grad()
def _linear_prune_in(old: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = _linear_like(old, {"in_features": len(keep), "out_features": old.out_features})
    new.weight.copy_(old.weight[:, keep])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    return new


@torch.no_grad()
def _linear_prune_out(old: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = _linear_like(old, {"in_features": old.in_features, "out_features": len(keep)})
    new.weight.copy_(old.weight[keep])
    if old.bias is not None:
        new.bias.copy_(old.bias[keep])
    return new


for _linear in L.LINEAR_TYPES:
    register_pruner(_linear, per_channel=False, prune_in=_linear_prune_in,
                    shape=_linear_shape, resize=_linear_like)(_linear_prune_out)


# -- built-in pruners: BatchNorm ------------------------------------------------------------


def _bn_shape(m: nn.Module) -> dict[str, int]:
    return {"num_features": m.num_features}


def _bn_like(old: nn.Module, shape: dict[str, int]) -> nn.Module:
    if type(old) not in L.BN_TYPES:  # a subclass (e.g. fused with its activation)
        return slice_channels_(old, _arange(shape["num_features"], old))
    new = type(old)(shape["num_features"], eps=old.eps, momentum=old.momentum,
                    affine=old.affine, track_running_stats=old.track_running_stats,
                    **_factory(old))
    return _finish(new, old)


@torch.no_grad()
def _bn_prune(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    if type(old) not in L.BN_TYPES:
        return slice_channels_(old, keep)
    new = _bn_like(old, {"num_features": len(keep)})
    for tname in ("weight", "bias", "running_mean", "running_var"):
        src = getattr(old, tname)
        if src is not None:
            getattr(new, tname).copy_(src[keep])
    if old.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new


for _bn in L.BN_TYPES:
    register_pruner(_bn, per_channel=True, shape=_bn_shape, resize=_bn_like)(_bn_prune)


# -- built-in pruners: LayerNorm over the channels --------------------------------------------
# A LayerNorm over one (the last) dimension normalizes each position across its channels: it
# is pruned with them (channels-last, as in ConvNeXt and transformers). Its statistics then
# cover the kept channels only, so unlike a BatchNorm the pruned model is an approximation of
# the original with the channels zeroed (fine-tuning closes the gap).


def _one_dim_norm(m: nn.Module) -> bool:
    return len(m.normalized_shape) == 1


register_pruner(nn.LayerNorm, per_channel=True, channel_dim=-1, applies=_one_dim_norm,
                shape=lambda m: {"channels": channel_count(m)})(slice_channels_)
