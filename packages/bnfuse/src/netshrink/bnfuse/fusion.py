"""fuse(): a new inference model with every foldable BatchNorm folded away (the model given is
left as it is).

For each BatchNorm module in the traced graph, in this order of preference:

1. **threshold** (``binary=True``): every use of the BN's output ends in a sign activation, so
   only its sign matters; fold it into the producing layer as a bias shift (negating channels
   with a negative scale), possibly through a max-pool (see ``binary_fold``);
2. **affine**: the BN directly follows a conv, transposed conv or linear layer whose output
   nothing else uses; fold the exact affine map into that layer's weight and bias (a FoldsAffine
   layer absorbs it with ``fold_affine``, keeping its weight codes);
3. **input** (``into_next=True``): the BN is the only input of a conv without zero padding or a
   linear layer; fold it into that layer's input side.

A folded BN is replaced by ``nn.Identity`` (module names, the model's class and its forward stay
as they were). Everything else is left in place with the reason in the report. Passes repeat
until nothing changes, so ``conv -> BN -> BN`` folds both.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from netshrink.bnfuse.binary_fold import is_max_pool, sign_only_reason, threshold_affine
from netshrink.bnfuse.fold_math import apply_output_affine, bn_affine, fold_input_affine_
from netshrink.bnfuse.graph import GraphView, consumer, producer
from netshrink.bnfuse.report import FoldedBN, FuseReport, LeftBN
from netshrink.core import check_choice

#: The fused model carries its FuseReport under this attribute.
REPORT_ATTR = "netshrink_bnfuse_report"


@dataclass(frozen=True)
class FuseConfig:
    """``binary``: allow threshold folds before sign activations. ``into_next``: allow folding
    a BN into the following unpadded conv / linear layer. ``only``: fold only these BN modules
    (qualified names); None folds every foldable one."""

    binary: bool = True
    into_next: bool = True
    only: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("binary", self.binary, (True, False))
        check_choice("into_next", self.into_next, (True, False))
        if self.only is not None:
            ok = isinstance(self.only, (list, tuple)) and all(
                isinstance(s, str) and s for s in self.only)
            if not ok:
                raise ValueError(f"only={self.only!r} must be None or a list of BatchNorm "
                                 f"module names (non-empty strings)")
            object.__setattr__(self, "only", tuple(self.only))


def fuse(model: nn.Module, config: FuseConfig | None = None, *,
         example_input: torch.Tensor | None = None) -> nn.Module:
    """A fused copy of ``model`` in eval mode (``model`` is untouched: no trailing ``_``, see
    docs/api-conventions.md). What was folded and what was left, and why, is
    ``fuse_report(fused)``. ``example_input`` (optional) lets shape propagation confirm that a
    linear layer's output is 2-D where the graph alone cannot tell."""
    config = config or FuseConfig()
    fused = copy.deepcopy(model).eval()
    bn_names = [n for n, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    unknown = sorted(set(config.only or ()) - set(bn_names))
    if unknown:
        raise ValueError(f"only names {unknown} that are not BatchNorm modules of "
                         f"{type(model).__name__}; its BatchNorms: {bn_names}")
    folded: list[FoldedBN] = []
    while True:
        view = GraphView.build(fused, example_input)
        new, left = _one_pass(view, config)
        folded += new
        if not new or not left:
            break
    called = {str(n.target) for n in view.graph.nodes if n.op == "call_module"}
    done = {f.bn for f in folded}
    left += [LeftBN(n, "the traced forward never calls it") for n in bn_names
             if n not in called and n not in done]
    setattr(fused, REPORT_ATTR, FuseReport(folded=tuple(folded), left=tuple(left)))
    return fused


def fuse_report(fused: nn.Module) -> FuseReport:
    """The ``FuseReport`` of a model returned by ``fuse`` (kept on it, under ``REPORT_ATTR``,
    through copies and checkpoints of the module object); a ValueError for any other model."""
    report = getattr(fused, REPORT_ATTR, None)
    if not isinstance(report, FuseReport):
        raise ValueError(f"{type(fused).__name__} carries no fuse report: fuse_report takes a "
                         "model returned by netshrink.bnfuse.fuse")
    return report


def fuse_with_report(model: nn.Module, config: FuseConfig | None = None, *,
                     example_input: torch.Tensor | None = None,
                     ) -> tuple[nn.Module, FuseReport]:
    """Deprecated: ``fused = fuse(model, ...)`` then ``fuse_report(fused)``."""
    warnings.warn("fuse_with_report is deprecated: fused = fuse(model, ...) and "
                  "fuse_report(fused) (docs/api-conventions.md)", DeprecationWarning,
                  stacklevel=2)
    fused = fuse(model, config, example_input=example_input)
    return fused, fuse_report(fused)


def _one_pass(view: GraphView, config: FuseConfig) -> tuple[list[FoldedBN], list[LeftBN]]:
    folded: list[FoldedBN] = []
    left: list[LeftBN] = []
    for node in list(view.graph.nodes):
        bn = view.batchnorm(node)
        if bn is None:
            continue
        name = str(node.target)
        if config.only is not None and name not in config.only:
            left.append(LeftBN(name, "not selected (FuseConfig.only)"))
            continue
        result = _fold_one(view, node, bn, config)
        if isinstance(result, FoldedBN):
            _remove(view.model, bn)
            folded.append(result)
        else:
            left.append(LeftBN(name, result))
    return folded, left


def _remove(model: nn.Module, bn: _BatchNorm) -> None:
    """Replace ``bn`` by nn.Identity under every name it has (aliases included)."""
    names = [n for n, m in model.named_modules(remove_duplicate=False) if m is bn]
    for name in names:
        model.set_submodule(name, nn.Identity())


def _bn_problem(view: GraphView, node: fx.Node, bn: _BatchNorm) -> str | None:
    if bn.running_mean is None or bn.running_var is None:
        return ("it has no running statistics (track_running_stats=False), so it always "
                "normalises with batch statistics")
    if bn._forward_hooks or bn._forward_pre_hooks:
        return "it has forward hooks, which removing it would drop"
    if len(node.args) != 1 or node.kwargs:
        return "it is called with more than one argument"
    return view.shared_use(node)


def _fold_one(view: GraphView, node: fx.Node, bn: _BatchNorm,
              config: FuseConfig) -> FoldedBN | str:
    """Fold the BN at ``node`` (changing the absorbing layer) or return why it stays."""
    name = str(node.target)
    problem = _bn_problem(view, node, bn)
    if problem:
        return problem
    a, b = bn_affine(bn)
    reasons: list[str] = []
    if config.binary and sign_only_reason(view, node) is None:
        src, via, why = producer(view, node, through=lambda n: is_max_pool(view, n))
        pools = tuple(str(v.target) if v.op == "call_module" else v.name for v in via)
        negative = int((a < 0).sum())
        if src is not None and via and negative:
            src, why = None, (f"a sign-threshold fold through the max-pool {', '.join(pools)} "
                              f"needs every BN scale >= 0, and {negative} channel(s) are "
                              f"negative")
        if src is not None:
            scale, shift = threshold_affine(a, b)
            apply_output_affine(view.module(src), scale, shift)
            return FoldedBN(name, str(src.target), "threshold", via=pools, negated=negative,
                            constant=int((a == 0).sum()))
        reasons.append(why)
    src, _, why = producer(view, node)
    if src is not None:
        apply_output_affine(view.module(src), a, b)
        return FoldedBN(name, str(src.target), "affine")
    reasons.append(why)
    if config.into_next:
        dst, why = consumer(view, node)
        if dst is not None:
            fold_input_affine_(view.module(dst), a, b)
            return FoldedBN(name, str(dst.target), "input")
        if why is not None:
            reasons.append(why)
    return "; ".join(dict.fromkeys(r for r in reasons if r))
