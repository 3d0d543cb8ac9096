"""DSFB: one shared basis object per stage, the orthogonality penalty, gradient monitoring, a smoke run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import pytest

from gradpath_lib.analysis import analyze_model
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import create_model
from gradpath_lib.models.cost import count_flops, count_params
from gradpath_lib.models.dsfb import ORTHOGONALITY_LAMBDA, SharedBasisConv, orthogonality_penalty
from gradpath_lib.runs import ensure_run
from gradpath_lib.train.classify import classify_config

SMOKE_BLOCKS = len(create_model("resnet-dsfb", "smoke").stages[0].blocks)


def shared_convs(stage: nn.Module) -> list[SharedBasisConv]:
    return [m for m in stage.modules() if isinstance(m, SharedBasisConv)]


def test_every_block_but_the_first_uses_the_same_basis_object():
    model = create_model("resnet-dsfb", "smoke")
    bases = model.shared_bases()
    assert len(bases) == len(model.stages) == 3 and len({id(b) for b in bases}) == 3
    for stage, basis in zip(model.stages, bases):
        first, *rest = stage.blocks
        assert not shared_convs(first)  # the first block of a stage is unshared
        convs = [conv for block in rest for conv in (block.conv1, block.conv2)]
        assert convs == shared_convs(stage)
        assert all(conv.shared_basis is basis for conv in convs)
        assert all(conv.shared_basis.weight is basis.weight for conv in convs)
        assert len({id(conv.unique_basis) for conv in convs}) == len(convs)  # unique bases are per layer
    # a shared parameter is counted once
    all_uses = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert count_params(model) < all_uses


def test_double_shared_stages_have_one_basis_per_conv_position():
    model = create_model("resnet-dsfb-double", "smoke")
    bases = model.shared_bases()
    assert len(bases) == 2 * len(model.stages) and len({id(b) for b in bases}) == len(bases)
    for stage in model.stages:
        first_conv_basis, second_conv_basis = stage.shared_bases
        _, *rest = stage.blocks
        assert all(block.conv1.shared_basis is first_conv_basis for block in rest)
        assert all(block.conv2.shared_basis is second_conv_basis for block in rest)
    targets = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        bases[-1].weight.mul_(2.0)  # the penalty covers the second basis of a stage too
    torch.testing.assert_close(model.orthogonality_penalty(), orthogonality_penalty(bases[-1]), atol=1e-6, rtol=0)
    assert float(model.extra_loss(targets).detach()) > 0
    with pytest.raises(GradpathError, match="bases_per_stage 3; valid choices: 1, 2"):
        create_model("resnet-dsfb", "smoke", bases_per_stage=3)


def test_double_shared_network_has_the_printed_parameter_count():
    single, double = (create_model(name, "mini") for name in ("resnet-dsfb", "resnet-dsfb-double"))
    # one more 3x3 basis C -> s per stage, with s = C at S16 on widths 16, 32, 64
    assert count_params(double) - count_params(single) == 9 * (16 * 16 + 32 * 32 + 64 * 64)
    assert abs(count_params(double) / 0.31e6 - 1) < 0.05  # the paper's ResNet56-S16U1: 0.31 M
    assert count_flops(double, (3, 32, 32)) == count_flops(single, (3, 32, 32))  # same convs, other weights


def test_penalty_is_zero_for_orthonormal_bases_and_positive_otherwise():
    model = create_model("resnet-dsfb", "smoke")
    targets = torch.zeros(2, dtype=torch.long)
    assert float(model.orthogonality_penalty().detach()) < 1e-10  # orthogonal initialization
    assert float(model.extra_loss(targets).detach()) < 1e-9
    basis = model.shared_bases()[1]
    with torch.no_grad():
        basis.weight.mul_(1.5)
    assert float(orthogonality_penalty(basis).detach()) > 0.1
    torch.testing.assert_close(model.extra_loss(targets), ORTHOGONALITY_LAMBDA * model.orthogonality_penalty())
    # a hand-made orthonormal basis: rows of the identity
    eye_basis = nn.Conv2d(1, 4, 3, bias=False)
    with torch.no_grad():
        eye_basis.weight.copy_(torch.eye(9)[:4].view(4, 1, 3, 3))
    assert float(orthogonality_penalty(eye_basis).detach()) == 0.0
    assert create_model("resnet-dsfb-noreg", "smoke").extra_loss(targets) is None
    assert create_model("resnet-dsfb-depth-ref", "smoke").extra_loss(targets) is None


def test_counterparts_match_depth_and_parameters():
    dsfb = create_model("resnet-dsfb", "mini")
    depth_ref = create_model("resnet-dsfb-depth-ref", "mini")
    param_ref = create_model("resnet-dsfb-param-ref", "mini")
    assert len(dsfb.blocks()) == len(depth_ref.blocks()) == 27  # ResNet-56
    assert abs(count_params(param_ref) / count_params(dsfb) - 1) < 0.05
    assert count_params(dsfb) < 0.4 * count_params(depth_ref)
    # on CIFAR the basis is wider than the layer (s + u > C): FLOPs rise although parameters fall
    smoke = {name: create_model(name, "smoke") for name in ("resnet-dsfb", "resnet-dsfb-depth-ref")}
    assert count_flops(smoke["resnet-dsfb"], (3, 32, 32)) > count_flops(smoke["resnet-dsfb-depth-ref"], (3, 32, 32))


def test_block_gradient_norms_are_recorded_per_epoch_and_only_in_training():
    model = create_model("resnet-dsfb", "smoke", blocks=2)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    for _ in range(2):
        F.cross_entropy(model(x), y).backward()
    norms = model.epoch_metrics()["block_grad_norm"]
    assert len(norms) == 3 * 2 and all(n > 0 for n in norms)
    assert model.epoch_metrics() == {}  # read and reset
    model.eval()
    F.cross_entropy(model(x), y).backward()
    assert model.epoch_metrics() == {}


def test_shared_basis_receives_gradient_at_several_timestamps():
    model = create_model("resnet-dsfb", "smoke")
    report = analyze_model(model, (3, 32, 32))
    params = report.parameters.set_index("module")
    layers = report.layers
    for i in range(3):
        name = f"stages.{i}.shared_bases.0"
        assert params.loc[name, "positions"] == 2 * (SMOKE_BLOCKS - 1)  # both convs of every sharing block
        per_position = [set(t) for t in layers.loc[layers["module"] == name, "timestamps"]]
        union = set().union(*per_position)
        assert set(params.loc[name, "timestamps"]) == union
        assert all(len(union) > len(stamps) for stamps in per_position)


def test_smoke_run_records_block_gradient_norms(tmp_path):
    config = classify_config("resnet-dsfb", "smoke", 0, model_kwargs={"blocks": 2}, epochs=1)
    record = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert record["status"] == "ok"
    history = record["metrics"]["history"]
    assert len(history) == 1 and len(history[0]["block_grad_norm"]) == 3 * 2
    assert record["params"] == count_params(create_model("resnet-dsfb", "smoke", blocks=2))


@pytest.mark.parametrize("scale", ["smoke", "mini", "paper"])
def test_parameter_matched_reference_has_the_closest_whole_block_depth(scale: str):
    from gradpath_lib.experiments.extensions import param_ref_note
    from gradpath_lib.models.dsfb import PARAM_MATCHED_BLOCKS
    from gradpath_lib.models.registry import model_kwargs

    target = count_params(create_model("resnet-dsfb", scale))
    blocks = model_kwargs("resnet-dsfb", scale)["blocks"]
    gaps = {b: abs(count_params(create_model("resnet-dsfb-param-ref", scale, blocks=b)) - target)
            for b in range(1, blocks + 1)}
    assert PARAM_MATCHED_BLOCKS[scale] == min(gaps, key=gaps.get)
    ref = count_params(create_model("resnet-dsfb-param-ref", scale))
    note = param_ref_note(scale)
    assert f"{ref:,} parameters against {target:,} ({ref / target - 1:+.1%})" in note
    assert "closest to it" in note
    # a reference that is not the closest is said to be so (the depth-matched net has one block too many)
    closest = min(gaps, key=gaps.get)
    if closest != blocks:
        assert f"although {closest} would come closer" in param_ref_note(scale, reference="resnet-dsfb-depth-ref")


def test_printed_count_note_compares_counts_only_at_the_papers_size():
    from gradpath_lib.experiments.extensions import printed_count_note

    smoke, mini, paper = (printed_count_note(s) for s in ("smoke", "mini", "paper"))
    assert smoke.startswith("At this scale `resnet-dsfb-double` is not the paper's CIFAR-10 ResNet56-S16U1 "
                            "(`blocks` 3 instead of 9")
    assert f"its {count_params(create_model('resnet-dsfb-double', 'smoke')):,} parameters do not compare" in smoke
    assert paper == mini  # the paper scale is the paper's CIFAR-10 network too
    double = count_params(create_model("resnet-dsfb-double", "mini"))
    assert mini.startswith("At this scale `resnet-dsfb-double` has the paper's size: "
                           f"{double / 1e6:.3f} M parameters against the printed 0.31 M ({double / 0.31e6 - 1:+.1%})")
    assert "the paper's -63.5% (0.31 vs 0.85 M)" in mini


def test_shared_basis_note_reports_positions_and_timestamps():
    import pandas as pd

    from gradpath_lib.experiments.extensions import shared_basis_note, shared_basis_paths

    paths = shared_basis_paths("smoke")
    note = shared_basis_note(paths)
    n = paths["n_timestamps"]
    assert note.startswith(f"Each shared basis is used at {2 * (SMOKE_BLOCKS - 1)} positions")
    assert f"receives gradient at {n.min()} to {n.max()} timestamps" in note
    assert f"here from {n.max()} (`stages.0.shared_bases.0`)" in note
    same = pd.DataFrame({"module": ["a", "b"], "positions": [4, 6], "n_timestamps": [7, 7]})
    assert "used at 4 to 6 positions" in shared_basis_note(same) and "at 7 timestamps" in shared_basis_note(same)
    assert shared_basis_note(same.iloc[:0]) == "The network has no shared basis."


def test_the_paper_scale_trains_the_dsfb_papers_cifar10_setting() -> None:
    from gradpath_lib.experiments import chapter
    from gradpath_lib.experiments.extensions import DSFB_PAPER_RECIPE
    from gradpath_lib.models.registry import model_kwargs

    configs = chapter("dsfb").runs("paper", [0])
    assert {c["data"] for c in configs} == {"cifar10"}
    assert all(c["recipe"][k] == v for c in configs for k, v in DSFB_PAPER_RECIPE.items())
    assert {model_kwargs(c["model"], "paper")["num_classes"] for c in configs} == {10}
    assert {c["data"] for c in chapter("dsfb").runs("mini", [0])} == {"cifar10"}  # mini: the scale's own recipe
