"""netshrink.share: weight sharing through per-layer k-means codebooks, as a Stage.

``ShareStage(ShareConfig(bits=5))`` replaces conv and linear layers by ``SharedConv2d`` /
``SharedLinear``: ``weight = centroids[indices]`` with ``2**bits`` trainable centroids per layer
(linear k-means initialisation, deterministic) and fixed indices; pruned weights stay zero.
Fine-tuning trains the centroids (each gets the sum of its weights' gradients). The packed
format (``netshrink.quant.save_packed``) stores the indices at ``bits`` bits or, after a
``share.code`` stage (``CodingStage``), Huffman coded.
"""

from netshrink.share.coding import CodingConfig, CodingStage
from netshrink.share.config import BITS_RANGE, ShareConfig
from netshrink.share.kmeans import assign, kmeans_1d, linear_init
from netshrink.share.layers import (
    SHARED_LAYERS,
    SHARED_TYPES,
    SharedConv2d,
    SharedLinear,
    empty_shared,
)
from netshrink.share.stage import ShareStage, share_layer

__all__ = [
    "BITS_RANGE", "SHARED_LAYERS", "SHARED_TYPES", "CodingConfig", "CodingStage", "ShareConfig",
    "ShareStage", "SharedConv2d", "SharedLinear", "assign", "empty_shared", "kmeans_1d",
    "linear_init", "share_layer",
]
