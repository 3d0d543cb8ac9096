"""Tensor ops that pad, roll, copy, index, accumulate or compare channels: after each, exactly the
channels of conv `a` that the rest of the model reads reach the loss, and the measured spectrum (an
independent, exact computation) agrees with the structural timestamps of every group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradpath_lib.analysis import analyze_model
from gradpath_lib.errors import GradpathError

from conftest import assert_structure_is_measured

C = 4
SHAPE = (3, 8, 8)
ALL = [(0, C)]

class Channels(nn.Module):
    """x[:, lo:hi], as a module to follow a module op in an nn.Sequential."""

    def __init__(self, lo: int, hi: int):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return x[:, self.lo:self.hi]


class Blur(nn.Module):
    """An anti-aliasing blur (a fixed 3x3 filter in a buffer) applied with F.conv2d, per channel
    (`groups` = the channels) or within groups of 2."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups
        self.register_buffer("filt", torch.ones(C, C // groups, 3, 3) / 9)

    def forward(self, x):
        return F.conv2d(x, self.filt, padding=1, groups=self.groups)


class ComputedWeightConv(nn.Module):
    """F.conv2d on a weight computed in forward from a Parameter: a weighted layer the analysis
    cannot name by a Parameter it multiplies by."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C, C, 1, 1))

    def forward(self, x):
        return F.conv2d(x, 2 * self.weight)


class FunctionalBatchNorm(nn.BatchNorm2d):
    """A norm whose own forward calls F.batch_norm (as timm's BatchNormAct2d does): fx traces into it."""

    def forward(self, x):
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                   self.eps))


# op applied to conv a's output (N, C, 8, 8) -> the ranges of a's channels that reach the loss
OPS = {
    "pad space": (lambda y: F.pad(y, (1, 1, 1, 1)), ALL),
    "pad channels, then crop": (lambda y: F.pad(y, (0, 0, 0, 0, 1, 2))[:, :3], [(0, 2)]),
    "roll space": (lambda y: torch.roll(y, 1, dims=3), ALL),
    "roll channels": (lambda y: torch.roll(y, 1, 1)[:, :1], [(3, 4)]),
    "roll with keywords (Swin's shifted windows)": (lambda y: torch.roll(y, shifts=(1, -1), dims=(1, 2))[:, :1],
                                                    [(3, 4)]),
    "space to depth, space outer (Swin's patch merging)": (
        lambda y: y.view(-1, C, 4, 2, 4, 2).permute(0, 3, 5, 1, 2, 4).reshape(-1, 4 * C, 4, 4)[:, C + 1:C + 2],
        [(1, 2)]),
    "space to depth, space inner": (
        lambda y: y.view(-1, C, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(-1, 4 * C, 4, 4)[:, 8:9], [(2, 3)]),
    "blur pool (a fixed filter in a buffer)": (nn.Sequential(Blur(C), Channels(1, 2)), [(1, 2)]),
    "fixed filter within groups of 2": (nn.Sequential(Blur(2), Channels(3, 4)), [(2, 4)]),
    "sliding windows along a row (Tensor.unfold, HaloNet)": (
        lambda y: y.unfold(3, 3, 1).mean(-1)[:, 2:], [(2, 4)]),
    "im2col (F.unfold)": (lambda y: F.unfold(y, 3, padding=1)[:, 9:18].unflatten(2, (8, 8)), [(1, 2)]),
    "im2col (nn.Unfold, VOLO)": (nn.Sequential(nn.Unfold(2, stride=2), nn.Unflatten(2, (4, 4)), Channels(12, 16)),
                                 [(3, 4)]),
    "col2im (F.fold of F.unfold)": (lambda y: F.fold(F.unfold(y, 2, stride=2), (8, 8), 2, stride=2)[:, 1:2],
                                    [(1, 2)]),
    "col2im (nn.Fold, VOLO's outlook attention)": (
        nn.Sequential(nn.Unfold(2, stride=2), Channels(4, 12), nn.Fold((8, 8), 2, stride=2), Channels(1, 2)),
        [(2, 3)]),
    "outer product by broadcasting": (lambda y: (y[:, :2, None] * y[:, None, 2:]).flatten(1, 2)[:, 1:2],
                                      [(0, 1), (3, 4)]),
    "pad with a keyword": (lambda y: F.pad(y, pad=(0, 0, 0, 0, 1, 0))[:, :2], [(0, 1)]),
    "unflatten and flatten": (lambda y: y.unflatten(1, (2, 2)).flatten(1, 2), ALL),
    "nn.Unflatten": (nn.Sequential(nn.Unflatten(1, (2, 2)), nn.Flatten(1, 2)), ALL),
    "unsqueeze and squeeze": (lambda y: y.unsqueeze(2).squeeze(2)[:, 1:], [(1, 4)]),
    "expand a channel mean": (lambda y: y.mean(1, keepdim=True).expand(-1, C, -1, -1), ALL),
    "expand space": (lambda y: y.mean((2, 3), keepdim=True).expand(-1, -1, 8, 8)[:, 1:2], [(1, 2)]),
    "repeat channels": (lambda y: y.repeat(1, 2, 1, 1)[:, 5:6], [(1, 2)]),
    "tile": (lambda y: y.tile((2, 1, 1))[:, 1:2], [(1, 2)]),
    "narrow": (lambda y: y.narrow(1, 1, 2), [(1, 3)]),
    "select": (lambda y: y.select(1, 2).unsqueeze(1), [(2, 3)]),
    "index_select": (lambda y: y.index_select(1, torch.tensor([1, 3])), [(1, 2), (3, 4)]),
    "list index": (lambda y: y[:, [3, 0]], [(0, 1), (3, 4)]),
    "slice from the shape": (lambda y: y[:, : y.shape[1] // 2], [(0, 2)]),
    "max over channels": (lambda y: y.max(1, keepdim=True)[0], ALL),
    "max over a row, indices unused": (lambda y: y.max(3)[0].unsqueeze(3)[:, 1:3], [(1, 3)]),
    "max of two tensors": (lambda y: torch.max(y, y.flip(1))[:, :1], [(0, 1), (3, 4)]),
    "where on a comparison": (lambda y: torch.where(y > 0, y, 0.1 * y)[:, 2:], [(2, 4)]),
    "gated by its own sign": (lambda y: y[:, 1:2] * torch.sign(y), [(1, 2)]),
    "maximum with zero": (lambda y: torch.maximum(y, torch.zeros(1)), ALL),
    "hardtanh": (F.hardtanh, ALL),
    "logsumexp over channels": (lambda y: y.logsumexp(1, keepdim=True), ALL),
    "cumsum over channels": (lambda y: y.cumsum(1)[:, 1:2], [(0, 2)]),
    "stack and sum": (lambda y: torch.stack([y, y.flip(1)], 1).sum(1)[:, :1], [(0, 1), (3, 4)]),
    "sort over channels": (lambda y: y.sort(1)[0][:, :1], ALL),
    "stack, then take one of the stacked": (lambda y: torch.stack([y[:, :2], y[:, 2:]], 1)[:, 1], [(2, 4)]),
    "selective kernel (stack, softmax-weighted sum)": (
        lambda y: (torch.stack([y[:, :2], y[:, 2:]], 1)
                   * y.mean((2, 3), keepdim=True).view(-1, 2, 2, 1, 1).softmax(1)).sum(1)[:, :1], [(0, 1), (2, 3)]),
    "norm over channels": (lambda y: y / y.norm(2, 1, keepdim=True), ALL),
    "local response norm": (lambda y: nn.functional.local_response_norm(y, 3)[:, :1], [(0, 2)]),
    "nn.LocalResponseNorm of size 2": (nn.Sequential(nn.LocalResponseNorm(2), Channels(3, 4)), [(2, 4)]),
    "glu over channels": (lambda y: F.glu(y, 1)[:, 1:], [(1, 2), (3, 4)]),
    "nn.GLU over space": (nn.GLU(2), ALL),
    "type_as and to": (lambda y: y.type_as(y).to(torch.float32)[:, 3:], [(3, 4)]),
    "a constant cast like the tensor (a RoPE table's type_as)": (
        lambda y: y[:, 1:2] * torch.ones(1, 1, 8, 8).type_as(y) + torch.zeros(1).to(y), [(1, 2)]),
    "RMSNorm over the channels (channels last)": (
        lambda y: F.rms_norm(y.permute(0, 2, 3, 1), (C,)).permute(0, 3, 1, 2)[:, :1], ALL),
    "a pool of a map its channels were averaged out of (SwinV2-CR's head)": (
        lambda y: F.adaptive_avg_pool2d(y.permute(0, 2, 3, 1).mean(-1).unsqueeze(1), 1), ALL),
    "nn.RMSNorm over a row, then a channel slice": (nn.Sequential(nn.RMSNorm(8), Channels(2, 3)), [(2, 3)]),
    "einsum keeping channels": (lambda y: torch.einsum("nchw->nhwc", y).permute(0, 3, 1, 2)[:, 1:2], [(1, 2)]),
    "einsum summing channels": (lambda y: torch.einsum("nchw,c->nhw", y, torch.ones(C)).unsqueeze(1), ALL),
    "einsum with an implicit output ('chnw')": (lambda y: torch.einsum("nchw", y).permute(2, 0, 1, 3)[:, 1:2], [(1, 2)]),
    "einsum with '...'": (lambda y: torch.einsum("n...hw->nhw...", y).permute(0, 3, 1, 2)[:, 2:], [(2, 4)]),
    "einsum with '...' broadcast": (
        lambda y: torch.einsum("...chw,...c->...chw", y, torch.ones(1, C))[:, :1], [(0, 1)]),
    "F.batch_norm in a norm's forward": (nn.Sequential(FunctionalBatchNorm(C), Channels(1, 3)), [(1, 3)]),
    "F.instance_norm": (lambda y: F.instance_norm(y)[:, :2], [(0, 2)]),
    "softmax over the outer dim of split channels": (
        lambda y: y.unflatten(1, (2, 2)).softmax(1)[:, :, :1].flatten(1, 2), [(0, 1), (2, 3)]),
    "radix softmax of split attention (ResNeSt)": (
        lambda y: y.view(-1, 1, 2, 2, 8, 8).transpose(1, 2).softmax(1)[:, :, :, :1].reshape(-1, 2, 8, 8),
        [(0, 1), (2, 3)]),
    "softmax over the middle dim of split channels": (
        lambda y: y.unflatten(1, (2, 2, 1)).softmax(2)[:, :1].flatten(1, 3), [(0, 2)]),
}


class Op(nn.Module):
    """conv `a` (C channels), the op, a spatial mean and a linear head on what the op returns."""

    def __init__(self, op):
        super().__init__()
        self.a, self.op = nn.Conv2d(3, C, 1), op
        self.head = nn.Linear(op(torch.zeros(1, C, *SHAPE[1:])).shape[1], 3)

    def forward(self, x):
        return self.head(self.op(self.a(x)).mean((2, 3)))


@pytest.mark.parametrize("name", OPS)
def test_each_op_passes_gradient_to_exactly_the_channels_it_reads(name):
    op, used = OPS[name]
    torch.manual_seed(0)
    model = Op(op)
    report = analyze_model(model, SHAPE)
    reached = [(g.start, g.stop) for g in report.groups if g.position.name == "a" and g.timestamps]
    assert reached == used
    assert_structure_is_measured(model, SHAPE, report)


class ConstantEncoding(nn.Module):
    """A position encoding computed from constants and projected by a conv of its own (as XCiT's
    and EdgeNeXt's Fourier encodings are): a weighted layer with nothing upstream."""

    def __init__(self):
        super().__init__()
        self.a, self.encode, self.head = nn.Conv2d(3, C, 1), nn.Conv2d(2, C, 1), nn.Linear(C, 3)

    def forward(self, x):
        grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")).unsqueeze(0)
        return self.head((self.a(x) + self.encode(grid)).mean((2, 3)))


def test_a_layer_reading_constants_has_nothing_upstream():
    torch.manual_seed(0)
    model = ConstantEncoding()
    report = analyze_model(model, SHAPE)
    rows = report.layers.set_index("layer")
    assert rows.loc["encode", "timestamps"] == (2,) and rows.loc["encode", "aggregated_features"] == 0
    assert rows.loc["a", "timestamps"] == (2,) and rows.loc["head", "aggregated_features"] == 2
    assert_structure_is_measured(model, SHAPE, report)


class RepeatedEncoding(ConstantEncoding):
    """The encoding repeated by the batch size before the add (as XCiT repeats its own): the
    measured check needs no output computed from constants to broadcast."""

    def forward(self, x):
        grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")).unsqueeze(0)
        return self.head((self.a(x) + self.encode(grid).repeat(x.shape[0], 1, 1, 1)).mean((2, 3)))


def test_an_encoding_repeated_over_the_batch_is_measured():
    torch.manual_seed(0)
    model = RepeatedEncoding()
    report = analyze_model(model, SHAPE)
    assert report.layers.set_index("layer").loc["encode", "timestamps"] == (2,)
    assert_structure_is_measured(model, SHAPE, report)


class DataIndexed(nn.Module):
    """Channels picked by an index computed from the input: which ones get gradient depends on the data."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, C, 1)

    def forward(self, x):
        y = self.a(x)
        return y.index_select(1, y.mean((0, 2, 3)).max(0)[1].unsqueeze(0)).mean((2, 3))


@pytest.mark.parametrize("model, names", [
    (DataIndexed(), "indexing with a tensor computed from the input"),
    (Op(lambda y: torch.roll(y, 1)), "torch.roll without dims"),
    (Op(ComputedWeightConv()), "F.conv2d on a weight tensor that is no Parameter"),
    (Op(lambda y: y.unflatten(1, (2, 2)).repeat(1, 1, 2, 1, 1).flatten(1, 2)), "repeating along one of several"),
])
def test_what_it_cannot_follow_is_named(model, names):
    with pytest.raises(GradpathError, match=names):
        analyze_model(model, SHAPE)
