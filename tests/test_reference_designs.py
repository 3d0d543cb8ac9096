"""Reference designs outside the papers (ShuffleNetV2, MobileNetV2, ConvNeXt-T, ViT-Ti): built
with the public implementations' parameter counts, runnable at 224 x 224, and analysed."""

from __future__ import annotations

import pytest
import torch

from gradpath_lib.analysis.designs import design_reports, designs_table
from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.models.reference import IMAGENET_CLASSES, IMAGENET_INPUT, REFERENCE_NETS, reference_net
from gradpath_lib.models.reference import VisionTransformer
from gradpath_lib.analysis import analyze_model


@pytest.fixture(scope="module")
def reports():
    return design_reports()


@pytest.mark.parametrize("name", REFERENCE_NETS)
def test_each_design_has_the_public_parameter_count_and_classifies_an_image(name):
    model = reference_net(name).eval()
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_NETS[name].params
    with torch.no_grad():
        assert model(torch.randn(1, *IMAGENET_INPUT)).shape == (1, IMAGENET_CLASSES)


def test_the_table_has_every_design_and_their_layer_counts(reports):
    table = designs_table(reports).set_index("design")
    assert list(table.index) == list(REFERENCE_NETS) and table["params as published"].all()
    # 56 convs + the classifier; 52 convs + the classifier (torchvision's layer counts)
    assert table.loc["shufflenet-v2", "weighted layers"] == 57
    assert table.loc["mobilenet-v2", "weighted layers"] == 53
    # ViT-Ti: patch embedding, 12 blocks of q, k, v, out and two MLP layers, the head
    assert table.loc["vit-tiny", "weighted layers"] == 1 + 12 * 6 + 1


def test_a_shuffle_unit_splits_its_branch_output_into_groups_with_different_shortest_paths(reports):
    layers = reports["shufflenet-v2"].layers
    last_conv = layers[layers.layer == "stages.1.1.branch2.2.0"]
    assert len(last_conv) > 1 and last_conv.shortest.nunique() > 1


def test_a_vit_reading_its_class_token_is_warned_about():
    with pytest.warns(UserWarning, match="reads only some positions"):
        analyze_model(VisionTransformer(depth=1, pool="token"), IMAGENET_INPUT)
    with pytest.raises(GradpathError, match="ViT pooling"):
        VisionTransformer(pool="max")


def test_analyze_takes_a_design_name_at_its_input_size(capsys):
    assert main(["analyze", "mobilenet-v2", "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 1 + 53  # header + one group per layer
