"""The classification registry: every network runs, variants are fair and cheaper, the CLI lists them."""

import functools

import pytest
import torch
import torch.fx
from torch import nn

from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import create_model, get_entry, model_names
from gradpath_lib.models.blocks import OSAModule
from gradpath_lib.models.cost import count_flops, count_params

CLASSIFIERS = model_names("classify")
PAPER_NAMES = [
    "plain", "resnet", "resnext", "prn", "prn-asym", "darknet", "densenet", "sparsenet",
    *(f"csp-{base}{fusion}" for base in ("resnet", "resnext", "darknet", "densenet") for fusion in ("", "-first", "-last")),
    "vovnet", "vovnet-deep", "vovnet-deep-planned", "vovnet-deep-planned-csp", "elan",
    "resnet-sg-identity", "resnet-sg-block", "plain-deep", "resnet-deep",
]


def test_the_paper_networks_are_registered():
    assert set(PAPER_NAMES) <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_trains_at_smoke_size_and_traces_with_fx(name):
    torch.manual_seed(0)
    model = create_model(name, "smoke")
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    # the trainer adds a model's own loss terms (`extra_loss(targets)`, None when there are none)
    extra = model.extra_loss(torch.zeros(2, dtype=torch.long)) if hasattr(model, "extra_loss") else None
    (logits.sum() if extra is None else logits.sum() + extra).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()  # the gradient-path analyzer traces with torch.fx: the trace must be the same function
    assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))


def test_number_of_classes_is_a_constructor_argument():
    assert create_model("elan", "smoke", num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_same_seed_builds_the_same_network():
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(create_model("csp-densenet", "smoke")(torch.randn(2, 3, 32, 32)))
    assert torch.equal(*outputs)


def _csp_names() -> list[str]:
    return [n for n in CLASSIFIERS if n.startswith("csp-")]


@functools.cache
def _mini_cost(name: str) -> tuple[int, int]:
    with torch.device("meta"):  # shapes only
        model = create_model(name, "mini")
    return count_params(model), count_flops(model, (3, 32, 32))


@pytest.mark.parametrize("name", _csp_names())
def test_csp_variants_cost_less_than_their_base_at_mini_size(name):
    (params, flops), (base_params, base_flops) = _mini_cost(name), _mini_cost(get_entry(name).base)
    assert params < base_params and flops < base_flops


def _stage_widths(model: nn.Module) -> list[int]:
    return [stage.out_channels for stage in model.stages]


OWN_FAMILIES = ("gradpath_lib.models.residual_nets", "gradpath_lib.models.dense_nets")


@pytest.mark.parametrize(
    "name", [n for n in CLASSIFIERS if get_entry(n).base and get_entry(n).factory.__module__ in OWN_FAMILIES]
)
def test_variants_share_their_base_stage_widths(name):
    base = get_entry(name).base
    assert len(create_model(name, "smoke").stages) == len(create_model(base, "smoke").stages)
    if name != "sparsenet":  # SparseNet aggregates fewer features, so its stage widths differ by design
        assert _stage_widths(create_model(name, "smoke")) == _stage_widths(create_model(base, "smoke"))


def _transitions_per_stage(model: nn.Module) -> list[int]:
    return [
        sum(isinstance(m, OSAModule) and not isinstance(m.transition, nn.Identity) for m in stage.modules())
        for stage in model.stages
    ]


def test_deep_vovnet_stacks_transitions_and_planning_keeps_one_per_stage():
    assert _transitions_per_stage(create_model("vovnet", "mini")) == [1, 1, 1]
    deep = _transitions_per_stage(create_model("vovnet-deep", "mini"))
    assert sum(deep) >= 3 * 3 and deep[-1] > 1
    assert _transitions_per_stage(create_model("vovnet-deep-planned", "mini")) == [1, 1, 1]


def test_prn_masks_half_of_every_shortcut():
    model = create_model("prn", "smoke")
    blocks = [m for m in model.modules() if hasattr(m, "shortcut_channels")]
    assert blocks and all(b.shortcut_channels * 2 == b.out_channels for b in blocks)


def test_unknown_model_name_lists_the_valid_names():
    with pytest.raises(GradpathError, match="unknown model 'resnet-9000'.*csp-resnet"):
        create_model("resnet-9000")


def test_models_command_prints_costs_and_ratios_to_the_base(capsys):
    assert main(["models", "csp-darknet", "prn", "--scale", "smoke", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model,family,task,params,flops,base,flops_vs_base,params_vs_base"
    rows = {line.split(",")[0]: line.split(",") for line in lines[1:]}
    assert set(rows) == {"darknet", "csp-darknet", "resnet", "prn"}
    csp, darknet = rows["csp-darknet"], rows["darknet"]
    assert csp[5] == "darknet" and float(csp[6]) == round(int(csp[4]) / int(darknet[4]), 3) < 1
    assert int(rows["resnet"][3]) == count_params(create_model("resnet", "smoke"))


def test_models_input_is_a_side_or_a_square_rgb_shape(capsys):
    argv = ["models", "prn", "--scale", "smoke", "--format", "csv", "--input"]
    assert main([*argv, "3x48x48"]) == 0
    shaped = capsys.readouterr().out
    assert main([*argv, "48"]) == 0
    assert capsys.readouterr().out == shaped
    assert main([*argv, "3x48x32"]) == 2
    assert "give its side (32) or its shape (3x32x32)" in capsys.readouterr().err


def test_models_command_rejects_an_unknown_scale_or_name(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--scale", "huge"])
    assert main(["models", "resnet-9000"]) == 2
    assert "unknown model 'resnet-9000'" in capsys.readouterr().err


def test_smoke_plain_and_resnet_costs_are_hand_computed():
    """smoke presets: 3x3 stem 3->8 at 32x32; stages (8, 16, 32) of one basic block (two 3x3 convs,
    bias-free, each followed by BN), strides 1, 2, 2; a 10-way linear head. ResNet adds a 1x1
    projection (+ BN) where the shape changes (stages 2 and 3)."""
    convs = [(3, 8, 32), (8, 8, 32), (8, 8, 32), (8, 16, 16), (16, 16, 16), (16, 32, 8), (32, 32, 8)]
    weights = sum(9 * c_in * c_out for c_in, c_out, _ in convs)
    bn = sum(2 * c_out for _, c_out, _ in convs)
    head = 32 * 10 + 10
    conv_flops = sum(2 * 9 * c_in * c_out * side * side for c_in, c_out, side in convs)
    plain = create_model("plain", "smoke")
    assert count_params(plain) == weights + bn + head == 19218
    assert count_flops(plain, (3, 32, 32)) == conv_flops + 2 * 32 * 10
    projections = [(8, 16, 16), (16, 32, 8)]
    resnet = create_model("resnet", "smoke")
    assert count_params(resnet) == count_params(plain) + sum(c_in * c_out + 2 * c_out for c_in, c_out, _ in projections)
    assert count_flops(resnet, (3, 32, 32)) == count_flops(plain, (3, 32, 32)) + sum(
        2 * c_in * c_out * side * side for c_in, c_out, side in projections)
