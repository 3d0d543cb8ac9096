"""Token inputs: nn.Embedding as a weighted layer that ends every path, position embeddings from
constants, weights tied between the output layer and the token embedding, F.embedding on a bare
Parameter, and the errors for lookups the analysis cannot name."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_structure_is_measured
from gradpath_lib.analysis import analyze_model
from gradpath_lib.errors import GradpathError
from gradpath_lib.models.cost import count_flops
from gradpath_lib.models.reference import GPT2
from test_analysis_cli import run_cli

SEQ = 8


def tiny_gpt(depth: int = 2) -> GPT2:
    return GPT2(vocab=50, context=16, dim=16, depth=depth, heads=2)


def timestamps(report, layer: str) -> tuple[int, ...]:
    (stamps,) = report.layers.loc[report.layers.layer == layer, "timestamps"]
    return stamps


def test_a_gpt_s_structural_timestamps_are_the_measured_ones():
    assert_structure_is_measured(tiny_gpt(), (SEQ,), tokens=True)


def test_the_embeddings_are_the_first_layers_and_the_residual_stream_reaches_them_by_every_block():
    report = analyze_model(tiny_gpt(), (SEQ,), torch.long)
    # each block adds two branches of two layers each to the stream: 2 + 2 per branch
    assert timestamps(report, "wte") == timestamps(report, "wpe") == (2, 4, 6, 8, 10)
    assert timestamps(report, "lm_head") == (1,)
    aggregated = report.layers.set_index("layer").aggregated_features
    assert aggregated["wte"] == 1 and aggregated["wpe"] == 0  # reads the input; reads constants


def test_a_tied_output_layer_is_one_parameter_with_the_token_embedding():
    tied = analyze_model(tiny_gpt(), (SEQ,), torch.long)
    params = tied.parameters.set_index("module")
    assert "lm_head" not in params.index
    assert params.loc["wte", "positions"] == 2 and params.loc["wte", "timestamps"] == (1, 2, 4, 6, 8, 10)
    assert tied.network["n_weighted_layers"] == 2 + 2 * 4

    untied = tiny_gpt()
    untied.lm_head.weight = nn.Parameter(untied.lm_head.weight.detach().clone())
    params = analyze_model(untied, (SEQ,), torch.long).parameters.set_index("module")
    assert params.loc["lm_head", "timestamps"] == (1,) and params.loc["wte", "positions"] == 1


class CodebookNet(nn.Module):
    """A conv whose argmax over the channels picks codebook rows: no gradient through the lookup."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.codebook = nn.Embedding(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv(x)
        codes = self.codebook(y.argmax(1)).permute(0, 3, 1, 2)
        return self.head((y + codes).mean((2, 3)))


def test_an_embedding_passes_no_gradient_to_the_layer_that_computed_its_ids():
    report = analyze_model(CodebookNet(), (3, 8, 8))
    assert timestamps(report, "conv") == timestamps(report, "codebook") == (2,)
    assert report.layers.set_index("layer").aggregated_features["codebook"] == 1  # the conv, detached
    assert_structure_is_measured(CodebookNet(), (3, 8, 8), report)


class TableLookup(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.table = nn.Parameter(torch.randn(10, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, idx):
        rows = F.embedding(idx, self.table) if self.functional else self.table[idx]
        return self.head(rows.mean(1))


def test_indexing_a_parameter_with_the_ids_is_refused_naming_nn_embedding():
    model = TableLookup(functional=False)
    model.vocab = nn.Embedding(10, 1)  # gives the input's id range; unused by forward
    with pytest.raises(GradpathError, match="nn.Embedding"):
        analyze_model(model, (SEQ,), torch.long)


def test_f_embedding_on_a_bare_parameter_is_an_embedding_named_by_the_parameter():
    model = TableLookup(functional=True)
    model.vocab = nn.Embedding(10, 1)
    report = analyze_model(model, (SEQ,), torch.long)
    table = report.parameters.set_index("module").loc["table"]
    assert (table.shortest, table.longest) == (2, 2)
    assert_structure_is_measured(model, (SEQ,), report=report, tokens=True)


def test_integer_input_without_an_embedding_and_float_input_to_one_are_explained():
    with pytest.raises(GradpathError, match="has no nn.Embedding to read an integer"):
        analyze_model(nn.Sequential(nn.Linear(SEQ, 2)), (SEQ,), torch.long)
    with pytest.raises(GradpathError, match="if it reads token ids, give an integer input dtype"):
        analyze_model(tiny_gpt(), (SEQ,))


def test_flops_of_a_token_model_count_its_linears_and_attention_but_no_lookup():
    dim, vocab, depth = 16, 50, 2
    linears = depth * (dim * 3 * dim + dim * dim + 2 * dim * 4 * dim) + dim * vocab
    attention = depth * 2 * SEQ * SEQ * dim
    assert count_flops(tiny_gpt(depth), (SEQ,), torch.long) == 2 * (SEQ * linears + attention)


TOKEN_MODULE = '''
from gradpath_lib.models.reference import GPT2

def build():
    return GPT2(vocab=50, context=16, dim=16, depth=1, heads=2)
'''


def test_analyze_takes_tokens_from_the_command_line(tmp_path, monkeypatch):
    (tmp_path / "my_token_net.py").write_text(TOKEN_MODULE)
    monkeypatch.chdir(tmp_path)
    status, out = run_cli("analyze", "my_token_net:build", "--tokens", "--input", str(SEQ), "--format", "json")
    payload = json.loads(out)
    assert status == 0 and payload["tokens"] is True
    assert {row["layer"]: row["timestamps"] for row in payload["layers"]}["wte"] == [2, 4, 6]
    assert run_cli("analyze", "my_token_net:build", "--tokens")[0] == 2  # no --input
    assert run_cli("analyze", "vit-tiny", "--tokens")[0] == 2
