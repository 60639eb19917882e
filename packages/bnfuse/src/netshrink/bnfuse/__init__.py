"""netshrink.bnfuse: fold BatchNorm into the neighbouring layer, and check the result.

``fuse(model)`` returns a new eval-mode model with every foldable BN folded (normal affine folds,
binary-activation threshold folds, and folds into an unpadded following layer);
``fuse_report(fused)`` is its ``FuseReport`` of what was folded and what was left and why.
``compare(reference, fused, batches)`` measures logit differences, top-1 agreement and
accuracies. Quantized layers take part through netshrink.core's ``FoldsAffine`` and input-sign
protocols only.
"""

from netshrink.bnfuse.binary_fold import threshold_affine
from netshrink.bnfuse.comparison import CompareReport, compare
from netshrink.bnfuse.fold_math import (  # noqa: F401 - the former names stay importable
    bn_affine,
    fold_input_affine,
    fold_input_affine_,
    fold_output_affine,
    fold_output_affine_,
)
from netshrink.bnfuse.fusion import (  # noqa: F401 - fuse_with_report: deprecated
    REPORT_ATTR,
    FuseConfig,
    fuse,
    fuse_report,
    fuse_with_report,
)
from netshrink.bnfuse.report import FoldedBN, FuseReport, LeftBN
from netshrink.bnfuse.stage import FuseStage

__all__ = [
    "REPORT_ATTR", "CompareReport", "FoldedBN", "FuseConfig", "FuseReport", "FuseStage",
    "LeftBN", "bn_affine", "compare", "fold_input_affine_", "fold_output_affine_", "fuse",
    "fuse_report", "threshold_affine",
]
