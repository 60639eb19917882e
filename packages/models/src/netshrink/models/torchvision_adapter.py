"""Torchvision classification models as ``tv:<name>``, always built without pretrained weights.

Only ``num_classes`` is exposed (default 10, like the rest of the zoo, not torchvision's 1000);
register a wrapper with ``@register_model`` when another torchvision option is needed, so that it
is recorded in checkpoints. torchvision is imported lazily: importing ``netshrink.models`` stays
fast.
"""

from __future__ import annotations

from torch import nn

from netshrink.core import check_int

TV_PREFIX = "tv:"


def torchvision_names() -> list[str]:
    """Torchvision's classification model names (no detection/segmentation/video models)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_torchvision_name(name: str) -> None:
    """Reject a name that is not a torchvision classification model, listing the allowed ones."""
    names = torchvision_names()
    if name not in names:
        shown = ", ".join(TV_PREFIX + n for n in names)
        raise ValueError(f"unknown torchvision model {TV_PREFIX + name!r}; "
                         f"torchvision classification models: {shown}")


def build_torchvision(name: str, *, num_classes: int = 10) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes)``."""
    import torchvision

    check_torchvision_name(name)
    check_int("num_classes", num_classes, min_value=1)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
