"""Weight-shared layers: ``weight = centroids[indices]`` (pruned weights exactly zero).

``SharedConv2d`` and ``SharedLinear`` are ``nn.Conv2d`` / ``nn.Linear`` whose ``weight`` is no
parameter but computed at every use from a trainable codebook ``centroids`` (``2**bits``
values, an ``nn.Parameter``) and a fixed ``indices`` buffer (uint8, the weight's shape). The
gather is differentiable in ``centroids``, so autograd gives each centroid the sum of the
gradients of the weights that share it: exactly Deep Compression's centroid update
(Han et al. 2016, eq. 3), with no hook. A pruned layer also keeps a ``mask`` buffer (bool):
masked weights are zero, not a centroid, and send no gradient to any centroid.

Both implement core's ``HasCodebookForm``, which the packed format reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netshrink.core import CODEBOOK_BITS, PACKED_BITS_ATTR, CodebookForm


class _Shared:
    """The weight-sharing part of a shared layer (mixed into an ``nn`` layer class)."""

    bits: int
    centroids: nn.Parameter
    indices: torch.Tensor
    mask: torch.Tensor | None

    def _make_shared(self, bits: int, sparse: bool) -> None:
        if isinstance(bits, bool) or bits not in CODEBOOK_BITS:
            raise ValueError(f"bits={bits!r} is not allowed; choose one of {list(CODEBOOK_BITS)}")
        if not isinstance(sparse, bool):
            raise ValueError(f"sparse={sparse!r} must be True or False")
        weight = self._parameters.pop("weight")  # type: ignore[attr-defined]
        shape, device = weight.shape, weight.device
        self.bits = bits
        self.coding = "fixed"  # how a packed file stores the indices (share.code sets it)
        self.centroids = nn.Parameter(torch.zeros(2 ** bits, device=device, dtype=weight.dtype))
        self.register_buffer("indices",  # type: ignore[attr-defined]
                             torch.zeros(shape, dtype=torch.uint8, device=device))
        self.register_buffer("mask",  # type: ignore[attr-defined]
                             torch.ones(shape, dtype=torch.bool, device=device) if sparse
                             else None)
        self._declare_packed_bits()

    def _declare_packed_bits(self) -> None:
        """``ModelStats``' packed size: the indices at ``bits`` per kept weight, plus a 1-bit
        map when pruned (as ``prune.magnitude`` counts a sparse layer); the centroids float."""
        if self.mask is None or self.mask.is_meta:
            declared = {"indices": float(self.bits)}
        else:
            density = int(self.mask.sum()) / max(self.mask.numel(), 1)
            declared = {"indices": self.bits * density, "mask": 1.0}
        setattr(self, PACKED_BITS_ATTR, declared)

    def __getattr__(self, name: str) -> Any:
        if name == "weight" and "weight" not in self.__dict__.get("_parameters", {}):
            return self.shared_weight()  # the weight parameter is gone once built
        return super().__getattr__(name)  # type: ignore[misc]

    def shared_weight(self) -> torch.Tensor:
        """``centroids[indices]``, zero where masked; differentiable in ``centroids``."""
        w = self.centroids[self.indices.long()]
        if self.mask is not None:
            w = w * self.mask.to(w.dtype)
        return w

    @torch.no_grad()
    def set_codebook(self, centroids: torch.Tensor, indices: torch.Tensor,
                     mask: torch.Tensor | None = None) -> None:
        """Install a codebook (``2**bits`` values), indices (the weight's shape) and, for a
        pruned layer, its mask."""
        if centroids.shape != self.centroids.shape or indices.shape != self.indices.shape:
            raise ValueError(f"need {tuple(self.centroids.shape)} centroids and indices of "
                             f"shape {tuple(self.indices.shape)}, got "
                             f"{tuple(centroids.shape)} and {tuple(indices.shape)}")
        if (mask is None) != (self.mask is None):
            raise ValueError("a mask is needed exactly when the layer was built sparse")
        self.centroids.copy_(centroids)
        self.indices.copy_(indices.to(torch.uint8))
        if mask is not None:
            self.mask.copy_(mask)
            self.indices.masked_fill_(~self.mask, 0)
        self._declare_packed_bits()

    def codebook_form(self) -> CodebookForm:
        """The layer's codebook, indices and mask (``HasCodebookForm``)."""
        mask = None if self.mask is None else self.mask.detach()
        return CodebookForm(self.centroids.detach(), self.indices.detach(), mask, self.bits,
                            self.coding)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[misc]
        self._declare_packed_bits()


class SharedConv2d(_Shared, nn.Conv2d):
    """An ``nn.Conv2d`` whose weight is ``centroids[indices]`` (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, bits: int, sparse: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias, padding_mode, device=device, dtype=dtype)
        self._make_shared(bits, sparse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, sparse={self.mask is not None}"


class SharedLinear(_Shared, nn.Linear):
    """An ``nn.Linear`` whose weight is ``centroids[indices]`` (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int,
                 sparse: bool = False, device: Any = None, dtype: Any = None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._make_shared(bits, sparse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, sparse={self.mask is not None}"


#: The layer types weight sharing replaces (exact types: subclasses such as quantized layers
#: have their own weight representation) and their shared counterparts.
SHARED_TYPES: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: SharedConv2d,
                                                        nn.Linear: SharedLinear}
SHARED_LAYERS: tuple[type[nn.Module], ...] = (SharedConv2d, SharedLinear)


def empty_shared(layer: nn.Module, bits: int, sparse: bool) -> nn.Module:
    """A shared layer with ``layer``'s shape (codebook not yet set), on ``layer``'s device;
    its bias is ``layer``'s bias, copied."""
    first = next(iter(layer.parameters()))
    device, dtype = first.device, first.dtype
    if type(layer) is nn.Conv2d:
        shared: nn.Module = SharedConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
            layer.padding, layer.dilation, layer.groups, layer.bias is not None,
            layer.padding_mode, bits=bits, sparse=sparse, device=device, dtype=dtype)
    elif type(layer) is nn.Linear:
        shared = SharedLinear(layer.in_features, layer.out_features, layer.bias is not None,
                              bits=bits, sparse=sparse, device=device, dtype=dtype)
    else:
        raise TypeError(f"weight sharing takes nn.Conv2d and nn.Linear layers, not "
                        f"{type(layer).__name__}")
    if layer.bias is not None:
        with torch.no_grad():
            shared.bias.copy_(layer.bias)
    shared.train(layer.training)
    return shared
