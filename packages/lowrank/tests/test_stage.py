"""The lowrank.factorise stage on real models: rank choice, MACs target, checkpoints, fx."""

import json

import pytest
import torch
from torch import nn

from netshrink.core import STAGES, ModelStats, apply_recipe_, stage_from_description
from netshrink.lowrank import LowRankConfig, LowRankStage, energy_rank, plan_low_rank
from netshrink.models import create_model, load_model, save_model

X = torch.zeros(1, 3, 32, 32)


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, width=0.25).eval()


def _small() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
                         nn.Conv2d(32, 32, 1), nn.AdaptiveAvgPool2d(8), nn.Flatten(1),
                         nn.Linear(32 * 64, 64),
                         nn.ReLU(), nn.Linear(64, 10))


def test_registered_and_described_as_json() -> None:
    assert STAGES.get("lowrank.factorise") is LowRankStage
    stage = LowRankStage(LowRankConfig(energy=0.8, skip=["9"]))
    stage.apply(_small())
    record = json.loads(json.dumps(stage.describe()))
    assert record["kind"] == "lowrank.factorise"
    assert record["config"]["energy"] == 0.8 and record["config"]["skip"] == ["9"]
    assert set(record["config"]["ranks"]) == {"2", "6"}
    assert record["note"] == "grouped and depthwise convolutions are left alone"
    assert record["report"]["left_alone"] == {"0": "first layer (skip_first)",
                                              "4": "grouped or depthwise conv",
                                              "9": "in skip",
                                              "11": "last layer (skip_last)"}
    again = stage_from_description(record)
    assert again.ranks == stage.ranks and again.config == LowRankConfig(
        energy=0.8, skip=("9",), ranks=stage.ranks)
    with pytest.raises(TypeError, match="needs a LowRankConfig"):
        LowRankStage({"energy": 0.8})


def test_tucker2_energy_picks_each_modes_smallest_rank_and_records_pairs() -> None:
    model = _model("nin")
    stage = LowRankStage(LowRankConfig(method="tucker2", energy=0.7))
    plan = plan_low_rank(model, stage.config)
    tucker = [(n, r) for n, s, r in plan.ranks if s == "tucker2"]
    assert tucker
    for name, (r_in, r_out) in tucker:
        (_, s_in, _), (_, s_out, _) = plan.candidates[name].svd
        assert r_in == energy_rank(s_in.square().cumsum(0) / s_in.square().sum(), 0.7)
        assert r_out == energy_rank(s_out.square().cumsum(0) / s_out.square().sum(), 0.7)
        assert model.get_submodule(name).kernel_size != (1, 1)
    stage.apply(model)
    record = json.loads(json.dumps(stage.describe()))
    assert record["config"]["ranks"][tucker[0][0]] == {"scheme": "tucker2",
                                                       "rank": list(tucker[0][1])}
    assert stage_from_description(record).ranks == stage.ranks


def test_tucker2_record_naming_a_grouped_conv_names_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2))
    stage = LowRankStage(LowRankConfig(ranks={"1": {"scheme": "tucker2", "rank": [2, 2]}}))
    with pytest.raises(ValueError, match=r"layer '1': scheme 'tucker2' leaves grouped/depthwise "
                                         r"convs alone \(groups=2\); only groups=1"):
        stage.rebuild(model)
    plan = plan_low_rank(model, LowRankConfig(method="tucker2", skip_first=False,
                                              skip_last=False, input_shape=[1, 4, 12, 12]))
    assert plan.left_alone["1"] == "grouped or depthwise conv"


def test_energy_picks_each_layers_smallest_rank_meeting_it() -> None:
    model = _model("nin")
    plan = plan_low_rank(model, LowRankConfig(method="spatial", energy=0.6))
    assert len(plan.ranks) == 7
    for name, scheme, rank in plan.ranks:
        shares = plan.candidates[name].shares
        assert rank == energy_rank(shares, 0.6)
        assert shares[rank - 1] >= 0.6 and (rank == 1 or shares[rank - 2] < 0.6)
        kernel = model.get_submodule(name).kernel_size
        assert scheme == ("channel" if kernel == (1, 1) else "spatial")


@pytest.mark.parametrize(("name", "method"), [
    ("nin", "channel"), ("nin", "spatial"), ("nin", "tucker2"),
    pytest.param("resnet18_cifar", "channel", marks=pytest.mark.slow),
    pytest.param("resnet18_cifar", "spatial", marks=pytest.mark.slow),
    pytest.param("resnet18_cifar", "tucker2", marks=pytest.mark.slow)])
def test_macs_target_half_is_met_as_closely_as_the_search_allows(name, method) -> None:
    model = _model(name)
    before = ModelStats.measure(model, X)
    stage = LowRankStage(LowRankConfig(method=method, macs_target=0.5))
    small = stage.apply(model)
    plan = stage.plan
    after = ModelStats.measure(small, X)
    assert after.macs == plan.macs_after <= 0.5 * before.macs
    assert after.params < before.params
    # maximal: no one-rank step of any factorised layer fits in what is left of the budget
    slack = 0.5 * before.macs - after.macs
    for layer, _, rank in plan.ranks:
        c = plan.candidates[layer]
        for new, _gain in c.steps(rank):  # one per mode for tucker2
            assert c.cost(new) - c.cost(rank) > slack
    assert after.macs > 0.49 * before.macs
    if method == "tucker2":
        assert {s for _, s, _ in plan.ranks} == {"channel", "tucker2"}


def test_unreachable_macs_target_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="macs_target cannot be met"):
        LowRankStage(LowRankConfig(macs_target=0.05)).apply(_model("nin"))


@pytest.mark.parametrize("method", ["spatial", "tucker2"])
def test_save_and_load_round_trip_is_exact(tmp_path, method) -> None:
    model = _model("nin", seed=3)
    stage = LowRankStage(LowRankConfig(method=method, macs_target=0.5, min_rank=2))
    small = apply_recipe_(model, [stage])
    path = save_model(tmp_path / "m.safetensors", small, recipe=[stage])
    loaded = load_model(path)
    assert {s for _, s, _ in stage.ranks} == {"channel", method}
    assert loaded.state_dict().keys() == small.state_dict().keys()
    for key, value in small.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), small.eval()(x))
    assert ModelStats.measure(loaded, X) == ModelStats.measure(small, X)


def test_rebuild_without_the_record_does_not_load(tmp_path) -> None:
    """The load test above depends on the recorded ranks: without them the shapes differ."""
    small = LowRankStage(LowRankConfig()).apply(_model("nin"))
    path = save_model(tmp_path / "m.safetensors", small,
                      recipe=[LowRankStage(LowRankConfig())])  # never applied: no ranks
    with pytest.raises(ValueError, match="lacks|does not have|shape"):
        load_model(path)


def test_rebuild_refuses_a_record_naming_a_missing_or_wrong_layer() -> None:
    stage = LowRankStage(LowRankConfig(ranks={"nope": {"scheme": "svd", "rank": 2}}))
    with pytest.raises(ValueError, match="'nope'"):
        stage.rebuild(_model("nin"))
    stage = LowRankStage(LowRankConfig(ranks={"features.conv2": ["channel", 99]}))
    with pytest.raises(ValueError, match=r"rank=99 must be an integer in \[1, 40\]"):
        stage.rebuild(_model("nin"))


@pytest.mark.parametrize("method", ["channel", "tucker2"])
def test_factorised_model_traces_with_fx_and_trains(method) -> None:
    small = LowRankStage(LowRankConfig(method=method, macs_target=0.5)).apply(
        _model("resnet18_cifar"))
    traced = torch.fx.symbolic_trace(small)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(traced(x), small(x))
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert "layer1.0.conv1.0" in targets and "layer1.0.conv1.1" in targets
    small.train()
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    before = small.layer2[0].conv1[0].weight.detach().clone()
    loss = nn.functional.cross_entropy(small(x), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(small.layer2[0].conv1[0].weight, before)


@pytest.mark.parametrize("method", ["channel", "tucker2"])
def test_prune_and_quant_act_on_the_factorised_model(tmp_path, method) -> None:
    prune = pytest.importorskip("netshrink.prune")
    quant = pytest.importorskip("netshrink.quant")
    small = LowRankStage(LowRankConfig(method=method, macs_target=0.5)).apply(_model("nin"))
    pruned = prune.prune_channels(small, X, prune.ChannelPruneConfig(criterion="l1",
                                                                      amount=0.25))
    assert ModelStats.measure(pruned, X).macs < ModelStats.measure(small, X).macs
    q = quant.quantize_(pruned, quant.QuantConfig(w=8, a=8)).eval()
    names = [n for n, _ in quant.quantized_layers(q)]
    assert "features.conv2.0" in names and "features.conv2.1" in names
    if method == "tucker2":  # a k x k conv became three quantized convs
        assert {"features.conv4.0", "features.conv4.1", "features.conv4.2"} <= set(names)
    x = torch.randn(2, 3, 32, 32)
    path = quant.save_packed(q, tmp_path / "q.safetensors")
    assert torch.equal(quant.load_packed(path)(x), q(x))


def test_method_svd_leaves_kxk_convs_and_min_rank_is_kept() -> None:
    stage = LowRankStage(LowRankConfig(method="svd", energy=0.5, skip_last=False))
    stage.apply(_small())
    assert [(n, s) for n, s, _ in stage.ranks] == [("6", "channel"), ("9", "svd"),
                                                  ("11", "svd")]
    assert stage.report["left_alone"]["2"].startswith("k x k conv: method 'svd'")
    stage = LowRankStage(LowRankConfig(energy=0.01, min_rank=3, skip_first=False))
    stage.apply(_small())
    assert {n: r for n, _, r in stage.ranks} == {"0": 3, "2": 3, "6": 3, "9": 3}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"method": "tucker"}, "method='tucker'"),
    ({"energy": 0.0}, "energy=0.0"),
    ({"energy": 1.5}, "energy=1.5"),
    ({"energy": float("nan")}, "energy=nan"),
    ({"macs_target": 0.0}, "macs_target=0.0"),
    ({"macs_target": 2}, "macs_target=2"),
    ({"macs_target": 0.5, "energy": 0.9}, "energy=0.9 and macs_target=0.5"),
    ({"min_rank": 0}, "min_rank=0"),
    ({"min_rank": 1.5}, "min_rank=1.5"),
    ({"skip": "fc"}, "skip='fc'"),
    ({"skip": [1]}, "skip=[1]"),
    ({"skip_first": 1}, "skip_first=1"),
    ({"skip_last": "no"}, "skip_last='no'"),
    ({"input_shape": [0, 3]}, "input_shape=[0, 3]"),
    ({"input_shape": [8]}, "input_shape=[8]"),
    ({"ranks": {"fc": {"scheme": "tucker", "rank": 2}}}, "ranks="),
    ({"ranks": {"fc": {"scheme": "svd", "rank": 0}}}, "ranks="),
    ({"ranks": {"fc": {"scheme": "svd"}}}, "ranks="),
    ({"ranks": [("fc", "svd", 2), ("fc", "svd", 3)]}, "names a module twice"),
    ({"ranks": 3}, "ranks=3"),
    ({"ranks": {"c": {"scheme": "tucker2", "rank": 2}}}, "ranks="),
    ({"ranks": {"c": {"scheme": "tucker2", "rank": [2, 0]}}}, "ranks="),
    ({"ranks": {"c": {"scheme": "tucker2", "rank": [2, 2, 2]}}}, "ranks="),
    ({"ranks": {"c": {"scheme": "svd", "rank": [2, 2]}}}, "ranks="),
])
def test_bad_config_values_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError) as err:
        LowRankConfig(**kwargs)
    assert field in str(err.value)


class _Unused(nn.Module):
    """A linear layer the forward never calls, a 1 -> 8 one no rank can make cheaper."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 1, 3)
        self.tiny = nn.Linear(1, 8)
        self.spare = nn.Linear(8, 8)
        self.body = nn.Linear(8, 64)
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).mean((2, 3))
        return self.head(self.body(self.tiny(y)))


def test_layers_left_alone_say_why() -> None:
    stage = LowRankStage(LowRankConfig(energy=1.0, input_shape=[2, 3, 8, 8]))
    stage.apply(_Unused())
    assert stage.ranks == ()
    assert stage.report["left_alone"] == {
        "stem": "first layer (skip_first)",
        "tiny": "no rank >= min_rank=1 reduces its MACs",
        "spare": "not called by the forward pass on input_shape (2, 3, 8, 8)",
        "body": "rank 8 (of 8) would not reduce its MACs",
        "head": "last layer (skip_last)"}
    assert stage.report["macs_after"] == stage.report["macs_before"]
