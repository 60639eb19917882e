"""netshrink.kernels: bit-packed XNOR-popcount kernels for binary / ternary layers (CPU).

    from netshrink.kernels import load_packed, accelerate
    model = load_packed("nin-wbin-abin.safetensors", backend="bitpacked")
    fast = accelerate(quantized_model)   # or on a model in memory (returns a copy)

Layers with a binary (sign) input and binary or ternary weights run on C++ kernels (AVX-512
VPOPCNTQ or AVX2 when the CPU has them, a portable path otherwise, multi-threaded); everything
else stays as it is, except sign-preserving layers right before them (``absorb``).
The kernels are compiled by torch on first use and cached (``_build``); without a compiler
``kernels_available()`` is False and the pure-PyTorch path (``netshrink.quant``) is unchanged.
Modules: ``weights`` (codes -> bit-planes), ``layers`` (``BitConv2d``), ``absorb`` (the
sign-preserving layers before one), ``accelerate``.
"""

from netshrink.kernels._build import (
    available_paths,
    build_dir,
    kernels_available,
    kernels_unavailable_reason,
    simd_path,
)
from netshrink.kernels.absorb import absorb_sign_preserving
from netshrink.kernels.accelerate import BACKENDS, accelerate, bit_layers, load_packed
from netshrink.kernels.layers import KERNEL_PATHS, BitConv2d, BitLinear, convertible_reason
from netshrink.kernels.weights import BitPlanes, bit_planes

__all__ = [
    "BACKENDS", "KERNEL_PATHS", "BitConv2d", "BitLinear", "absorb_sign_preserving",
    "available_paths", "BitPlanes", "accelerate", "bit_layers", "bit_planes", "build_dir",
    "convertible_reason", "kernels_available", "kernels_unavailable_reason", "load_packed",
    "simd_path",
]
