"""Reference designs outside the papers (ShuffleNetV2, MobileNetV2, ConvNeXt-T, ViT-Ti, GPT-2):
built with the public implementations' parameter counts, runnable on their inputs, and analysed."""

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
def test_each_design_has_the_public_parameter_count_and_runs_on_its_input(name):
    model, ref = reference_net(name).eval(), REFERENCE_NETS[name]
    assert sum(p.numel() for p in model.parameters()) == ref.params
    with torch.no_grad():
        out = model(torch.zeros(1, *ref.input_shape, dtype=ref.input_dtype))
    # GPT-2: next-token logits over its 50257-token vocabulary at every one of its 1024 positions
    assert out.shape == ((1, 1024, 50257) if name == "gpt2" else (1, IMAGENET_CLASSES))


def test_the_table_has_every_design_and_their_layer_counts(reports):
    table = designs_table(reports).set_index("design")
    assert list(table.index) == list(REFERENCE_NETS) and table["params as published"].all()
    # 56 convs + the classifier; 52 convs + the classifier (torchvision's layer counts)
    assert table.loc["shufflenet-v2", "weighted layers"] == 57
    assert table.loc["mobilenet-v2", "weighted layers"] == 53
    # ViT-Ti: patch embedding, 12 blocks of q, k, v, out and two MLP layers, the head
    assert table.loc["vit-tiny", "weighted layers"] == 1 + 12 * 6 + 1
    # GPT-2: the token and position embeddings, 12 blocks of 4 Linears; the output layer's weight
    # is the token embedding's, so it is not a layer of its own
    assert table.loc["gpt2", "weighted layers"] == 2 + 12 * 4
    assert table.loc["gpt2", "input"] == "1024 tokens" and table.loc["vit-tiny", "input"] == "3x224x224"
    # 2 x (parameters outside the embeddings + the output layer) x 1024 tokens, plus the causal
    # attention's two T x T x 768 matmuls per block (counted in full)
    # ViT-Ti: the patch embedding, 12 blocks' Linears on 197 tokens and their attention, the head
    vit_macs = 196 * 768 * 192 + 197 * 12 * (192 * 3 * 192 + 192 * 192 + 2 * 192 * 768) + 12 * 2 * 197 * 197 * 192
    assert table.loc["vit-tiny", "GFLOPs"] == round(2 * (vit_macs + 192 * 1000) / 1e9, 2)
    per_token = 12 * (768 * 3 * 768 + 768 * 768 + 2 * 768 * 3072) + 768 * 50257
    assert table.loc["gpt2", "GFLOPs"] == round(2 * (1024 * per_token + 12 * 2 * 1024 * 1024 * 768) / 1e9, 2)


def test_gpt2s_tied_output_layer_is_reported_with_the_token_embedding(reports):
    params = reports["gpt2"].parameters.set_index("module")
    assert "lm_head" not in params.index
    wte = params.loc["wte"]
    # the output layer's position gets gradient first; the embedding's after all 12 blocks' paths
    assert wte.positions == 2 and wte.shortest == 1 and wte.longest == reports["gpt2"].network["longest_path"]


def test_a_shuffle_unit_splits_its_branch_output_into_groups_with_different_shortest_paths(reports):
    layers = reports["shufflenet-v2"].layers
    last_conv = layers[layers.layer == "stages.1.1.branch2.2.0"]
    assert len(last_conv) > 1 and last_conv.shortest.nunique() > 1


def test_a_vit_reading_its_class_token_gives_the_patch_embedding_no_residual_path():
    shortest = {pool: analyze_model(VisionTransformer(depth=1, pool=pool), IMAGENET_INPUT)
                .parameters.set_index("module").loc["conv_proj", "shortest"] for pool in ("avg", "token")}
    assert shortest == {"avg": 2, "token": 4}  # the residual stream; v, the attention output and the head
    with pytest.raises(GradpathError, match="ViT pooling"):
        VisionTransformer(pool="max")


def test_analyze_takes_a_design_name_at_its_input_size(capsys):
    assert main(["analyze", "mobilenet-v2", "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 1 + 53  # header + one group per layer
