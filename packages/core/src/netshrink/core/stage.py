"""The Stage interface: one compression step (quantize, prune, fuse, ...) with a frozen config.

A stage turns a model into a compressed model with ``apply``. Stages that act during training
(a slimming penalty, a gradual sparsity schedule, distillation from a teacher) override the
optional hooks; the training engine calls them for every stage in the recipe. ``describe``
gives a JSON-able record that checkpoints store, so a saved model can be rebuilt:
``stage_from_description`` finds the stage class again by its ``kind``, importing the netshrink
package that owns it.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from netshrink.core.deprecation import deprecated_alias
from netshrink.core.registry import Registry

STAGES: Registry[type[Stage]] = Registry("stage kind")


def register_stage(kind: str):
    """Class decorator: register a Stage subclass under ``kind`` (``"<package>.<name>"``)."""
    def add(cls: type[Stage]) -> type[Stage]:
        cls.kind = kind
        return STAGES.register(kind)(cls)
    return add


class Stage(ABC):
    """One compression step. Subclasses set ``config_class`` and implement ``apply``."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """Return the compressed model (may be ``model`` itself, changed in place)."""

    def use_data(self, batches: list[Any]) -> None:
        """Receive a few ``(inputs, labels)`` batches before ``apply``, for stages whose result
        depends on data (Taylor or activation criteria, calibration). Default: ignore them."""

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Recreate this stage's structure on a fresh model before weights are loaded.

        The default re-applies the stage; stages whose result depends on data (pruning) override
        it to use what ``describe`` recorded.
        """
        return self.apply(model)

    def describe(self) -> dict[str, Any]:
        """A JSON-able record: the kind and the config's fields (tuples become lists, so config
        classes accept lists for tuple fields and convert them in ``__post_init__``)."""
        return {"kind": self.kind, "config": _jsonable(dataclasses.asdict(self.config))}

    # Optional training hooks --------------------------------------------------------------
    # Per step the engine computes, under its autocast, ``outputs = model(inputs)`` and
    # ``base_loss = cross_entropy(outputs, targets)``; then ``loss = training_loss(...)`` of the
    # one stage that overrides it (else ``base_loss``); then adds every ``extra_loss``.
    def training_loss(self, inputs: torch.Tensor, outputs: torch.Tensor,
                      targets: torch.Tensor, base_loss: torch.Tensor) -> torch.Tensor | None:
        """The loss to train on in place of ``base_loss``, for stages that need the batch
        (distillation: the teacher's logits for ``inputs``); None keeps ``base_loss``.

        Called every training step under the engine's autocast, with the batch's ``inputs``,
        the student's ``outputs`` (logits, possibly low precision) and ``targets``; keep
        ``base_loss`` in the result to add to it rather than replace it. At most one stage of a
        recipe may override this hook (``loss_stage`` checks), since a second replacement
        would silently drop the first.
        """
        return None

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the training loss (e.g. L1 on BN scales); None for none."""
        return None

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after every optimizer step (e.g. gradual pruning, re-applying masks)."""

    def after_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Called after every training epoch (e.g. soft filter pruning)."""

    def histograms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors the trainer logs as TensorBoard histograms every epoch (tag -> values),
        e.g. the |gamma| of every BN under a slimming penalty."""
        return {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


_PACKAGE_OF_PREFIX = {"quant": "netshrink-quant", "prune": "netshrink-prune",
                      "bnfuse": "netshrink-bnfuse", "core": "netshrink-core"}


def stage_from_description(description: dict[str, Any]) -> Stage:
    """Rebuild a Stage from ``describe()``'s record; a missing package gets a clear error."""
    kind = description.get("kind")
    if not isinstance(kind, str) or "." not in kind:
        raise ValueError(f"stage record has no valid 'kind' (got {kind!r}); "
                         "expected '<package>.<name>', e.g. 'quant.quantize'")
    if kind not in STAGES:
        prefix = kind.split(".", 1)[0]
        module = f"netshrink.{prefix}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name not in (module, "netshrink"):
                raise  # the package is there, but one of its own imports is missing
            dist = _PACKAGE_OF_PREFIX.get(prefix, f"netshrink-{prefix}")
            raise ModuleNotFoundError(
                f"stage kind {kind!r} needs the package {dist} ({module}), which is not "
                f"installed: pip install {dist}") from err
    cls = STAGES.get(kind)
    fields = description.get("config", {})
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"stage {kind!r}: unknown config fields {unknown}; "
                         f"allowed: {sorted(known)}")
    return cls(cls.config_class(**fields))


SPEC_ATTR = "netshrink_spec"


def apply_recipe_(model: nn.Module, stages: Sequence[Stage]) -> nn.Module:
    """Apply stages in order, keeping the model's build record (``netshrink_spec``) on the
    result even when a stage returns a new module (an fx GraphModule, a wrapper)."""
    spec = getattr(model, SPEC_ATTR, None)
    for stage in stages:
        model = stage.apply(model)
        if spec is not None and getattr(model, SPEC_ATTR, None) is None:
            setattr(model, SPEC_ATTR, spec)
    return model


def overrides_training_loss(stage: Stage) -> bool:
    """Whether ``stage``'s class overrides ``Stage.training_loss`` (a stage-like object that is
    no Stage subclass and has no such method, written before the hook existed, does not)."""
    hook = getattr(type(stage), "training_loss", None)
    return hook is not None and hook is not Stage.training_loss


def loss_stage(stages: Sequence[Stage]) -> Stage | None:
    """The one stage of ``stages`` that overrides ``training_loss`` (None if none); a recipe
    with two is a ValueError naming them, found before any training step runs."""
    owners = [(i, s) for i, s in enumerate(stages) if overrides_training_loss(s)]
    if len(owners) > 1:
        names = ", ".join(f"{getattr(s, 'kind', '') or type(s).__name__} (stage {i})"
                          for i, s in owners)
        raise ValueError(f"at most one stage of a recipe may replace the training loss "
                         f"(training_loss); these {len(owners)} do: {names}. Combine them in one "
                         "stage, or move the extra terms to extra_loss")
    return owners[0][1] if owners else None


def describe_recipe(stages: Sequence[Stage]) -> list[dict[str, Any]]:
    return [s.describe() for s in stages]


# The former names (docs/api-conventions.md): importable, with a DeprecationWarning on each call.
apply_recipe = deprecated_alias(apply_recipe_, "apply_recipe")
