"""Structural gradient paths on hand-built nets whose timestamps are computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradpath_lib.analysis import analyze_model
from gradpath_lib.analysis.measured import structure_check
from gradpath_lib.errors import GradpathError

C = 4  # channels of every hand-built layer
SHAPE = (C, 4, 4)  # input shape of the hand-built nets


def conv(c_in: int = C, c_out: int = C) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1)


class Head(nn.Module):
    """Global average pooling and a linear classifier (the logits layer, timestamp 1)."""

    def __init__(self, c: int = C):
        super().__init__()
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Chain(nn.Module):
    """`layers` convs in sequence, each followed by BN + ReLU; `shortcut` adds the identity."""

    def __init__(self, layers: int, shortcut: str = "none"):
        super().__init__()
        self.convs = nn.ModuleList(conv() for _ in range(layers))
        self.bns = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(layers))
        self.shortcut = shortcut
        self.head = Head()

    def forward(self, x):
        for conv_, bn in zip(self.convs, self.bns):
            if self.shortcut == "none":
                x = torch.relu(bn(conv_(x)))
            elif self.shortcut == "identity":
                x = x + bn(conv_(x))
            elif self.shortcut == "sg-identity":
                x = x.detach() + bn(conv_(x))
            elif self.shortcut == "sg-identity-function":
                x = torch.detach(x) + bn(conv_(x))
            elif self.shortcut == "sg-block":
                x = x + bn(conv_(x.detach()))
        return self.head(x)


def stamps(report, layer: str, start: int = 0) -> tuple[int, ...]:
    rows = report.layers
    row = rows[(rows.layer == layer) & (rows.group_start == start)]
    assert len(row) == 1, f"no single group {layer}[{start}:]"
    return row.timestamps.iloc[0]


def row_of(report, layer: str, start: int = 0):
    rows = report.layers
    return rows[(rows.layer == layer) & (rows.group_start == start)].iloc[0]


def rows_of(report, layer: str) -> list:
    """Every channel group row of `layer`, in channel order."""
    return [row for _, row in report.layers[report.layers.layer == layer].iterrows()]


def test_plain_chain_layer_k_of_l_gets_l_minus_k_plus_1():
    report = analyze_model(Chain(5), SHAPE)
    total = 6  # five convs and the linear layer
    for k in range(1, 6):
        assert stamps(report, f"convs.{k - 1}") == (total - k + 1,)
    assert stamps(report, "head.fc") == (1,)
    assert report.network["longest_shortest_path"] == report.network["longest_path"] == total
    assert report.network["n_weighted_layers"] == total
    assert report.network["aggregated_features_max"] == 1


def test_residual_chain_timestamps_and_exact_path_count_two_to_the_k():
    n = 70  # 2**69 paths: beyond float precision, so the count must be an exact int
    report = analyze_model(Chain(n, "identity"), SHAPE)
    for k in range(n):
        row = row_of(report, f"convs.{k}")
        assert row.timestamps == tuple(range(2, n - k + 2))
        assert row.n_paths == 2 ** (n - 1 - k)
        assert type(row.n_paths) is int
        assert row.sources_at_first == ("head.fc",)
    assert report.network["longest_shortest_path"] == 2
    assert report.network["longest_path"] == n + 1


def test_sg_identity_is_the_plain_net_and_sg_block_stays_short_however_deep():
    depth = 30
    plain = analyze_model(Chain(depth), SHAPE).layers
    sg_identity = analyze_model(Chain(depth, "sg-identity"), SHAPE).layers
    assert (sg_identity.shortest == sg_identity.longest).all()
    assert list(sg_identity.timestamps) == list(plain.timestamps)
    sg_function = analyze_model(Chain(depth, "sg-identity-function"), SHAPE).layers
    assert list(sg_function.timestamps) == list(plain.timestamps)  # torch.detach(x) cuts like x.detach()
    sg_block = analyze_model(Chain(depth, "sg-block"), SHAPE)
    convs = sg_block.layers[sg_block.layers.layer.str.startswith("convs")]
    assert set(convs.timestamps) == {(2,)}
    assert sg_block.network["longest_path"] == 2
    # detached inputs still count as aggregated features (forward view) but carry no gradient:
    # the head sums the input and every conv's output
    assert sg_block.network["aggregated_features_max"] == depth + 1


class PRN(nn.Module):
    """Stem, then `blocks` convs whose output gets the shortcut on its first half only."""

    def __init__(self, blocks: int = 3):
        super().__init__()
        self.stem = conv(3, C)
        self.convs = nn.ModuleList(conv() for _ in range(blocks))
        self.head = Head()

    def forward(self, x):
        x = self.stem(x)
        for conv_ in self.convs:
            y = conv_(x)
            x = torch.cat([y[:, : C // 2] + x[:, : C // 2], y[:, C // 2 :]], 1)
        return self.head(x)


def test_prn_masked_and_unmasked_channels_get_different_timestamps():
    report = analyze_model(PRN(), (3, 4, 4))
    # stem's first half reaches head.fc directly and every block conv through the shortcut chain
    assert stamps(report, "stem", 0) == (2, 3, 4, 5)
    assert stamps(report, "stem", 2) == (3, 4, 5)  # only through convs.0
    assert stamps(report, "convs.0", 0) == (2, 3, 4)
    assert stamps(report, "convs.0", 2) == (3, 4)
    assert stamps(report, "convs.2", 0) == (2,)  # last block: one group, both halves go to the head
    assert row_of(report, "stem", 0).sources_at_first == ("head.fc",)
    assert row_of(report, "stem", 2).sources_at_first == ("convs.0",)
    # gradient combination of stem[0:2]: (2, fc), (3, convs.0..2), (4, convs.0..1), (5, convs.0)
    assert row_of(report, "stem", 0).combination_size == 7
    assert row_of(report, "stem", 0).n_paths == 8
    # stem[2:4] only feeds convs.0, whose 4 paths stem[0:2] also counts: the module has 8 distinct
    # paths (convs.0: 4, convs.1: 2, convs.2: 1, head.fc: 1), not 8 + 4
    assert row_of(report, "stem", 2).n_paths == 4
    assert report.parameters.set_index("module").loc["stem", "n_paths"] == 8


class Aggregation(nn.Module):
    """DenseNet-like block: layer n concatenates the outputs `sources[n]` (0 is the stem)."""

    def __init__(self, sources: list[list[int]], growth: int = 2):
        super().__init__()
        self.sources = sources
        self.stem = conv(3, growth)
        self.layers = nn.ModuleList(conv(growth * len(s), growth) for s in sources[:-1])
        self.head = Head(growth * len(sources[-1]))

    def forward(self, x):
        outputs = [self.stem(x)]
        for layer, src in zip(self.layers, self.sources):
            outputs.append(torch.relu(layer(torch.cat([outputs[i] for i in src], 1))))
        return self.head(torch.cat([outputs[i] for i in self.sources[-1]], 1))


def test_dense_net_timestamps_are_every_length():
    report = analyze_model(Aggregation([[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]), (3, 4, 4))
    assert stamps(report, "stem") == (2, 3, 4, 5)
    assert stamps(report, "layers.0") == (2, 3, 4)
    assert stamps(report, "layers.1") == (2, 3)
    assert stamps(report, "layers.2") == (2,)
    assert report.network["aggregated_features_max"] == 4


def test_sparse_net_timestamps_follow_the_power_of_two_connections():
    # layer n aggregates n-1, n-2, n-4 (SparseNet); the output is "layer 5": 4, 3, 1
    report = analyze_model(Aggregation([[0], [0, 1], [1, 2], [0, 2, 3], [1, 3, 4]]), (3, 4, 4))
    assert stamps(report, "layers.3") == (2,)
    assert stamps(report, "layers.2") == (2, 3)
    assert stamps(report, "layers.1") == (3, 4)
    assert stamps(report, "layers.0") == (2, 3, 4, 5)
    assert stamps(report, "stem") == (3, 4, 5, 6)
    assert report.network["longest_shortest_path"] == 3


def test_csp_stage_splits_its_input_into_two_groups():
    from gradpath_lib.models.blocks import ConvBNAct, CSPStage, Stack

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv(3, 8)
            block = lambda c: Stack(ConvBNAct(c, c, 3), ConvBNAct(c, c, 3))  # noqa: E731
            self.stage = CSPStage(8, 8, block, split_ratio=0.5, fusion="full")
            self.head = Head(8)

        def forward(self, x):
            return self.head(self.stage(self.stem(x)))

    report = analyze_model(Net(), (3, 4, 4))
    # x1 = stem[0:4] crosses the stage to the final transition; x2 = stem[4:8] goes through
    # block (2 convs) and transition_block first
    assert stamps(report, "stem", 0) == (3,)
    assert stamps(report, "stem", 4) == (6,)
    assert row_of(report, "stem", 0).sources_at_first == ("stage.transition.conv",)
    assert row_of(report, "stem", 4).sources_at_first == ("stage.block.0.conv",)
    assert row_of(report, "stage.transition.conv").aggregated_features == 2


def test_elan_block_branches_get_their_own_paths():
    from gradpath_lib.models.blocks import ELANBlock

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.elan = ELANBlock(3, 8, hidden=4, blocks=2, depth=2)
            self.head = Head(8)

        def forward(self, x):
            return self.head(self.elan(x))

    report = analyze_model(Net(), (3, 4, 4))
    assert stamps(report, "elan.transition.conv") == (2,)
    assert stamps(report, "elan.split_a.conv") == (3,)
    assert stamps(report, "elan.split_b.conv") == (3, 5, 7)
    assert stamps(report, "elan.stacks.0.0.conv") == (4, 6)
    assert stamps(report, "elan.stacks.1.1.conv") == (3,)
    assert row_of(report, "elan.transition.conv").aggregated_features == 4


class GroupedThenSplit(nn.Module):
    """A grouped conv whose output groups part: group 0 goes through two more convs, group 1
    straight to the head. `groups=1` makes it dense (each output channel reads every input)."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.stem = conv(3, C)
        self.grouped = nn.Conv2d(C, C, 3, padding=1, groups=groups)
        self.deep = nn.Sequential(conv(2, 2), nn.ReLU(), conv(2, 2))
        self.head = Head()

    def forward(self, x):
        a, b = self.grouped(torch.relu(self.stem(x))).chunk(2, dim=1)
        return self.head(torch.cat([self.deep(a), b], 1))


def test_grouped_conv_gives_each_input_group_the_paths_of_its_own_output_group():
    from conftest import assert_structure_is_measured

    report = analyze_model(GroupedThenSplit(), (3, 4, 4))
    # grouped[0:2] -> deep.0 -> deep.2 -> head (t=4); grouped[2:4] -> head (t=2)
    assert stamps(report, "grouped", 0) == (4,) and stamps(report, "grouped", 2) == (2,)
    # the stem's channels 0-1 feed only grouped[0:2], its channels 2-3 only grouped[2:4]
    assert [(r.group_start, r.group_stop, r.timestamps, r.n_paths) for r in rows_of(report, "stem")] == [
        (0, 2, (5,), 1), (2, 4, (3,), 1)]
    assert row_of(report, "stem", 0).sources_at_first == ("grouped",)
    assert report.parameters.set_index("module").loc["stem", "n_paths"] == 2
    assert_structure_is_measured(GroupedThenSplit(), (3, 4, 4), report)


def test_dense_conv_gives_every_input_channel_all_paths():
    report = analyze_model(GroupedThenSplit(groups=1), (3, 4, 4))
    assert [(r.group_start, r.group_stop, r.timestamps, r.n_paths) for r in rows_of(report, "stem")] == [
        (0, 4, (3, 5), 2)]


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_conv_read_whole_has_the_paths_of_its_dense_version(groups):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.grouped, self.head = conv(3, C), nn.Conv2d(C, C, 3, padding=1, groups=groups), Head()

        def forward(self, x):
            y = self.stem(x)
            return self.head(self.grouped(y) + y)

    report = analyze_model(Net(), (3, 4, 4))
    assert [(r.group_start, r.group_stop, r.timestamps, r.n_paths) for r in rows_of(report, "stem")] == [
        (0, C, (2, 3), 2)]


class Shared(nn.Module):
    """One conv applied twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.stem = conv(3, C)
        self.shared = conv()
        self.head = Head()

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(self.stem(x)))))


def test_shared_module_is_one_parameter_with_two_positions():
    report = analyze_model(Shared(), (3, 4, 4))
    assert stamps(report, "shared") == (3,)  # first call, feeding the second
    assert stamps(report, "shared@1") == (2,)
    params = report.parameters.set_index("module")
    assert params.loc["shared", "positions"] == 2
    assert params.loc["shared", "timestamps"] == (2, 3)
    assert params.loc["shared", "n_paths"] == 2  # one path from each position
    assert report.network["n_weighted_layers"] == 3 and report.network["n_positions"] == 4


class ConstantMask(nn.Module):
    """PRN written with a constant channel mask: the masked half gets no shortcut gradient."""

    def __init__(self):
        super().__init__()
        self.stem = conv(3, C)
        self.conv = conv()
        self.register_buffer("mask", torch.tensor([1.0, 1.0, 0.0, 0.0]))
        self.head = Head()

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.conv(x) + x * self.mask.view(1, C, 1, 1))


def test_constant_channel_mask_cuts_the_masked_channels():
    report = analyze_model(ConstantMask(), (3, 4, 4))
    assert stamps(report, "stem", 0) == (2, 3)
    assert stamps(report, "stem", 2) == (3,)


class Permuting(nn.Module):
    """A detection-style head: channels moved last, then sliced; `conv_after` reads the wrong dim."""

    def __init__(self, conv_after: bool = False):
        super().__init__()
        self.stem = conv(3, C)
        self.conv = conv()
        self.conv_after = conv_after

    def forward(self, x):
        x = self.stem(x)
        if self.conv_after:  # SHAPE is (C, 4, 4): the permuted map still fits the conv
            return self.conv(x.permute(0, 2, 3, 1))
        y = (x + self.conv(x)).flatten(2).permute(0, 2, 1)
        return {"first": y[..., :1], "rest": torch.sigmoid(y[..., 1:])}


def test_channels_moved_by_permute_are_still_tracked():
    report = analyze_model(Permuting(), (3, 4, 4))
    assert stamps(report, "stem", 0) == (1, 2)
    assert report.network["n_groups"] == 2  # conv's channels all reach the loss the same way


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv(3, C)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


@pytest.mark.parametrize(
    "model, names",
    [
        (Permuting(conv_after=True), "Conv2d 'conv' reading channels from dim 3"),
        (nn.Sequential(conv(3, C), nn.Flatten(1), nn.Unflatten(1, (4, 4 * C))), "a reshape from"),
        (Branching(), "control flow"),
    ],
)
def test_unsupported_constructs_raise_an_error_naming_them(model, names):
    with pytest.raises(GradpathError, match=names):
        analyze_model(model, (3, 4, 4))


class FlipGrad(torch.autograd.Function):
    """Identity forward whose backward reverses the channels: fx sees only the forward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.flip(1)


class CustomFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = conv(3, C), conv(C // 2, C // 2), Head()

    def forward(self, x):
        y = FlipGrad.apply(self.a(x))
        return self.head(torch.cat([self.b(y[:, : C // 2]), y[:, C // 2 :]], 1))


class NoGrad(nn.Module):
    """`a` (or only the activation after it, `where="activation"`) runs under torch.no_grad()."""

    def __init__(self, where: str):
        super().__init__()
        self.a, self.b, self.head = conv(3, C), conv(), Head()
        self.where = where

    def forward(self, x):
        if self.where == "layer":
            with torch.no_grad():
                y = self.a(x)
        else:
            y = self.a(x)
            with torch.no_grad():
                y = torch.relu(y)
        return self.head(self.b(y))


class MemorySavingSwish(torch.autograd.Function):
    """x * sigmoid(x), saving only x (as timm's `SwishAutoFn`): its backward is its derivative."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))


class SwishNet(CustomFunction):
    def forward(self, x):
        y = MemorySavingSwish.apply(self.a(x))
        return self.head(torch.cat([self.b(y[:, : C // 2]), y[:, C // 2 :]], 1))


def test_a_trusted_custom_backward_that_is_the_derivative_agrees_with_the_measured_gradient():
    model = SwishNet()
    with pytest.raises(GradpathError, match="'MemorySavingSwish'"):
        analyze_model(model, (3, 4, 4))
    report = analyze_model(model, (3, 4, 4), trust_custom_backward=True)
    assert report.layers[report.layers.layer == "a"].timestamps.tolist() == [(3,), (2,)]
    assert structure_check(model, (3, 4, 4), report=report).agrees.all()


def test_custom_autograd_function_is_an_error_naming_it():
    with pytest.raises(GradpathError, match="custom autograd Function 'FlipGrad'.*--trust-custom-backward"):
        analyze_model(CustomFunction(), (3, 4, 4))


def test_a_trusted_custom_backward_follows_the_forward_and_the_check_catches_one_that_does_not():
    model = CustomFunction()
    report = analyze_model(model, (3, 4, 4), trust_custom_backward=True)
    a = report.layers[report.layers.layer == "a"]
    assert a.group_start.tolist() == [0, C // 2]  # the forward's paths: a's first half through b
    assert a.timestamps.tolist() == [(3,), (2,)]  # through b and the head, or the head alone
    check = structure_check(model, (3, 4, 4), report=report)
    # the backward flips the channels: a's halves get each other's gradient
    assert check[check.layer == "a"].measured.tolist() == [(2,), (3,)]
    assert check[check.layer != "a"].agrees.all()


@pytest.mark.parametrize("where", ["layer", "activation"])
def test_no_grad_inside_forward_is_an_error_naming_the_cut_layer(where):
    with pytest.raises(GradpathError, match=r"layer\(s\) 'a' receive gradient .* e\.g\. torch\.no_grad\(\)"):
        analyze_model(NoGrad(where), (3, 4, 4))


def test_frozen_weights_are_analysed_and_stay_frozen():
    model = Chain(3)
    for p in model.parameters():
        p.requires_grad_(False)
    report = analyze_model(model, SHAPE)
    assert stamps(report, "convs.0") == (4,)
    assert not any(p.requires_grad for p in model.parameters())


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(GradpathError, match="input shape"):
        analyze_model(Chain(2), (C, 0, 4))
    with pytest.raises(GradpathError, match="cannot run"):
        analyze_model(Chain(2), (C + 1, 4, 4))


def test_analysis_leaves_the_training_mode_alone():
    model = Chain(2)
    model.bns[0].eval()
    analyze_model(model, SHAPE)
    assert model.training and not model.bns[0].training and model.bns[1].training
