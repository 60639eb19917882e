"""Shared models in packed files (netshrink.quant): exact round trip, sizes from the file."""

import pytest
import torch

from netshrink.core import CodebookForm
from netshrink.models import create_model
from netshrink.prune import magnitude_prune_
from netshrink.quant import load_packed, save_packed
from netshrink.quant.packing import packed_size
from netshrink.share import ShareConfig, ShareStage

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_pruned_shared_nin_round_trips_and_coding_shrinks_the_file(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("nin", width=0.25).eval()
    float_file = save_packed(model, tmp_path / "float.pt").stat().st_size
    magnitude_prune_(model, 0.8)
    ShareStage(ShareConfig(bits=4)).apply(model)
    expect = model(X)
    sizes = {}
    for coding in ("fixed", "huffman"):
        path = save_packed(model, tmp_path / f"{coding}.pt", coding=coding)
        sizes[coding] = path.stat().st_size
        assert torch.equal(load_packed(path)(X), expect)
        formula = packed_size(model, coding).total
        assert formula <= sizes[coding] <= formula + 8192  # + the structure and the header
    # 80 % pruned, 4-bit codebooks: about 1 + 4 * 0.2 bits per weight, then coded
    assert float_file / sizes["fixed"] > 10  # BN, biases and the structure stay float
    assert sizes["huffman"] < 0.9 * sizes["fixed"]


def test_codebook_form_checks() -> None:
    with pytest.raises(ValueError, match="bits=9"):
        CodebookForm(torch.zeros(4), torch.zeros(3, dtype=torch.uint8), None, 9)
    with pytest.raises(ValueError, match="2\\*\\*bits = 4"):
        CodebookForm(torch.zeros(3), torch.zeros(3, dtype=torch.uint8), None, 2)
    with pytest.raises(ValueError, match="uint8"):
        CodebookForm(torch.zeros(4), torch.zeros(3, dtype=torch.int64), None, 2)
    with pytest.raises(ValueError, match="does not fit"):
        CodebookForm(torch.zeros(4), torch.full((3,), 4, dtype=torch.uint8), None, 2)
    with pytest.raises(ValueError, match="mask"):
        CodebookForm(torch.zeros(4), torch.zeros(3, dtype=torch.uint8), torch.ones(2) > 0, 2)
    form = CodebookForm(torch.tensor([0.5, 1.0, 2.0, 3.0]), torch.tensor([3, 0, 1],
                        dtype=torch.uint8), torch.tensor([True, False, True]), 2)
    assert form.weight().tolist() == [3.0, 0.0, 1.0]


def test_coding_stage_makes_save_packed_code_the_shared_layers(tmp_path) -> None:
    from netshrink.core import stage_from_description
    from netshrink.quant.packing import read_structure
    from netshrink.share import CodingConfig, CodingStage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 30 * 30, 4)).eval()
    with pytest.raises(ValueError, match="no shared layers"):
        CodingStage().apply(model)
    ShareStage(ShareConfig(bits=3)).apply(model)
    stage = stage_from_description(CodingStage(CodingConfig("huffman")).describe())
    path = save_packed(stage.apply(model), tmp_path / "m.pt")
    records = read_structure(path)["tensors"]
    assert {records[n]["weight"][3]["coding"] for n in ("0", "2")} == {"huffman"}
    fixed = save_packed(model, tmp_path / "f.pt", coding="fixed")  # an explicit coding wins
    assert read_structure(fixed)["tensors"]["0"]["weight"][3]["coding"] == "fixed"
    with pytest.raises(ValueError, match="coding='zip'"):
        CodingConfig("zip")
