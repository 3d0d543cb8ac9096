"""Weighted layers called functionally on a weight Parameter (`analysis.layer_calls`): BEiT's
`F.linear(x, qkv.weight, bias)`, an output layer `F.linear(h, wte.weight)` tied to the token
embedding, a grouped `F.conv2d` on a conv's weight, and bare Parameters: `x @ W`, Hugging Face
GPT-2's `Conv1D` (`torch.addmm(bias, x, weight)`), `F.conv2d` on a module's own `weight`. Each is a
position of the layer owning the weight, in the traced graph and in the measured and autograd
checks alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_structure_is_measured
from gradpath_lib.analysis import analyze_model
from gradpath_lib.errors import GradpathError
from test_analysis_tokens import SEQ, tiny_gpt

SHAPE = (3, 8, 8)
C = 8


class BiasedQKV(nn.Module):
    """Patch tokens, one attention layer whose qkv projection is BEiT's: the Linear holds no bias, a
    bias of q and v (k's is zero) is concatenated and passed to F.linear with the Linear's weight."""

    def __init__(self, functional: bool = True):
        super().__init__()
        self.functional = functional
        self.stem, self.qkv = nn.Conv2d(3, C, 2, stride=2), nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(C)), nn.Parameter(torch.randn(C))
        self.register_buffer("k_bias", torch.zeros(C), persistent=False)
        self.proj, self.head = nn.Linear(C, C), nn.Linear(C, 3)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        if self.functional:
            qkv = F.linear(tokens, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        else:
            qkv = self.qkv(tokens)
        q, k, v = qkv.unflatten(2, (3, 2, C // 2)).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.head((tokens + self.proj(y)).mean(1))


def layer_table(report):
    return report.layers[["layer", "kind", "timestamps", "aggregated_features"]].to_dict("records")


def test_f_linear_on_a_linear_s_weight_is_that_linear_s_position():
    report = analyze_model(BiasedQKV(), SHAPE)
    assert layer_table(report) == layer_table(analyze_model(BiasedQKV(functional=False), SHAPE))
    assert "qkv" in set(report.layers.layer)
    assert_structure_is_measured(BiasedQKV(), SHAPE, report)


class FunctionalHeadGPT(nn.Module):
    """The tiny GPT-2 with its output layer written as `F.linear(h, wte.weight)` (no lm_head module)."""

    def __init__(self):
        super().__init__()
        self.gpt = tiny_gpt()
        del self.gpt.lm_head

    def forward(self, idx):
        g = self.gpt
        positions = torch.arange(idx.shape[1], device=idx.device)
        return F.linear(g.ln_f(g.h(g.wte(idx) + g.wpe(positions))), g.wte.weight)


def test_an_output_layer_tied_functionally_is_the_embedding_s_second_position():
    report = analyze_model(FunctionalHeadGPT(), (SEQ,), torch.long)
    layers = report.layers.set_index("layer")
    assert layers.loc["gpt.wte@1", "kind"] == "Linear" and layers.loc["gpt.wte@1", "timestamps"] == (1,)
    params = report.parameters.set_index("module")
    module_tied = analyze_model(tiny_gpt(), (SEQ,), torch.long).parameters.set_index("module")
    assert params.loc["gpt.wte", "positions"] == 2
    assert params.loc["gpt.wte", "timestamps"] == module_tied.loc["wte", "timestamps"]
    assert_structure_is_measured(FunctionalHeadGPT(), (SEQ,), report, tokens=True)


class GroupedFunctionalConv(nn.Module):
    """A conv module called once as itself and once functionally, with 2 groups, on its own weight."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 1)
        self.conv = nn.Conv2d(C, C, 3, padding=1, groups=2)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        y = self.stem(x)
        y = self.conv(y) + y[:, :C // 2].repeat(1, 2, 1, 1)
        return self.head(F.conv2d(y, self.conv.weight, None, 1, 1, 1, 2).mean((2, 3)))


def test_a_grouped_functional_conv_keeps_its_groups_and_counts_as_the_module_s_next_call():
    report = analyze_model(GroupedFunctionalConv(), SHAPE)
    assert report.layers.set_index("layer").loc["conv@1", "kind"] == "Conv2d"
    stem = {(g.start, g.timestamps) for g in report.groups if g.position.name == "stem"}
    assert stem == {(0, (3, 4)), (C // 2, (4,))}  # the skip adds the stem's first half alone
    assert_structure_is_measured(GroupedFunctionalConv(), SHAPE, report)


class InputBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return F.linear(x, self.b.weight, self.a(x).mean(0))


def test_a_functional_layer_with_a_bias_from_the_input_is_refused_by_name():
    with pytest.raises(GradpathError, match="F.linear with a bias computed from the input"):
        analyze_model(InputBias(), (4,))


class Conv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D: a Linear whose (in, out) weight is a bare Parameter, run by addmm."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(0.3 * torch.randn(c_in, c_out))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class BareParameters(nn.Module):
    """Tokens through an MLP of two Conv1D, a residual `x @ W` used twice (tied), and a head;
    `conv` holds a bare `weight` that F.conv2d runs on the input image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(0.3 * torch.randn(C, 3, 2, 2))
        self.fc, self.proj = Conv1D(C, 2 * C), Conv1D(2 * C, C)
        self.mix = nn.Parameter(0.3 * torch.randn(C, C))
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        tokens = F.conv2d(x, self.conv.weight, stride=2).flatten(2).transpose(1, 2)
        h = tokens + self.proj(F.gelu(self.fc(tokens)))
        h = h + torch.tanh(torch.tanh(h @ self.mix) @ self.mix)
        return self.head(h.mean(1))


class LeftParameter(nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.a, self.w, self.head = nn.Linear(4, 4), nn.Parameter(torch.randn(*shape)), nn.Linear(4, 3)

    def forward(self, x):
        y = self.a(x)
        return self.head((self.w @ y if self.w.ndim == 2 else y @ self.w).mean(1))


@pytest.mark.parametrize("shape, names", [((5, 5), "Parameter 'w' on the left"), ((2, 4, 4), "3-d Parameter 'w'")])
def test_products_by_a_parameter_that_are_no_linear_are_refused_by_name(shape, names):
    with pytest.raises(GradpathError, match=names):
        analyze_model(LeftParameter(shape), (5, 4))


class EinsumLayers(nn.Module):
    """Tokens through einsum layers on bare Parameters: '...d,de->...e', 'bnd,de->bne', W first in
    the list form 'de,bnd->bne', and one used twice (tied); `table` read as x @ W.T ('bnd,ed->bne')
    is no step, as in a product (a table of positions, as BoTNet's relative logits)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 2, stride=2)
        self.up, self.down = nn.Parameter(0.3 * torch.randn(C, 2 * C)), nn.Parameter(0.3 * torch.randn(2 * C, C))
        self.mix, self.table = nn.Parameter(0.3 * torch.randn(C, C)), nn.Parameter(0.3 * torch.randn(5, C))
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        h = self.stem(x).flatten(2).transpose(1, 2)
        h = h + torch.einsum("bnd,de->bne", F.gelu(torch.einsum("...d,de->...e", h, self.up)), self.down)
        h = h * torch.einsum("bnd,ed->bne", h, self.table).softmax(-1).mean(-1, keepdim=True)
        mixed = torch.tanh(torch.einsum("de,bnd->bne", self.mix, h))
        h = h + torch.tanh(torch.einsum("de,bnd->bne", [self.mix, mixed]))
        return self.head(h.mean(1))


@pytest.mark.parametrize("make, names", [
    (lambda: BareParameters(), ("conv", "fc", "proj", "mix", "head")),
    (lambda: EinsumLayers(), ("stem", "up", "down", "mix", "head")),
], ids=["products", "einsum"])
def test_bare_parameters_multiplied_by_are_positions_named_by_their_layer(make, names):
    model = make()
    report = analyze_model(model, SHAPE)
    rows = report.parameters.set_index("module")
    first, up, down, mix, _ = names
    assert tuple(rows.index) == names
    assert rows.loc[mix, "positions"] == 2  # one Parameter, two products: tied
    assert rows.loc[up, "timestamps"] == (3, 5) and rows.loc[down, "timestamps"] == (2, 4)
    # the head along the residual stream (2), through both products or the MLP (4), through the MLP and both (6)
    assert rows.loc[first, "timestamps"] == (2, 4, 6)
    assert_structure_is_measured(model, SHAPE, report=report)


class EinsumParameter(nn.Module):
    def __init__(self, equation: str, shape: tuple[int, ...]):
        super().__init__()
        self.equation, self.w = equation, nn.Parameter(torch.randn(*shape))
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.einsum(self.equation, self.a(x), self.w).reshape(x.shape[0], -1, 4).mean(1))


@pytest.mark.parametrize("equation, shape", [
    ("bnd,de->ben", (4, 4)),  # the new letter is not last
    ("bnd,ed->ebn", (4, 4)),  # nor as x @ W.T
    ("bnd,nd->bn", (5, 4)),  # a letter of x in W kept: a weight per token
    ("bnd,hde->bnhe", (2, 4, 2)),  # a 3-d Parameter
])
def test_einsums_by_a_parameter_that_are_no_linear_are_refused_by_name(equation, shape):
    with pytest.raises(GradpathError, match="einsum with the Parameter 'w' that is no Linear"):
        analyze_model(EinsumParameter(equation, shape), (5, 4))
