"""Every zoo model traces with torch.fx and the trace computes the same output."""

import pytest
import torch
import torch.fx

from netshrink.models import create_model


@pytest.mark.parametrize(("name", "kwargs"), [
    ("nin", {"width": 0.25}),
    ("nin", {"width": 0.25, "block_order": "bacp", "act": "hardtanh"}),
    ("nin_gc", {"width": 0.125}),
    ("nin_gc", {"width": 0.125, "block_order": "bacp"}),
    ("mobilenet_student", {"width": 0.25}),
    ("resnet18_cifar", {"width": 0.25}),
])
def test_symbolic_trace(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(traced(x), model(x))
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert any("conv" in str(t) for t in targets)


def test_nin_gc_trace_contains_six_shuffles() -> None:
    graph = torch.fx.symbolic_trace(create_model("nin_gc", width=0.125)).graph
    unflattens = [n for n in graph.nodes if n.op == "call_method" and n.target == "unflatten"]
    assert [n.args[2][0] for n in unflattens] == [2, 2, 16, 4, 4, 32]
