"""In-place methods (`y.add_(z)`, `y.copy_(z)`, `y.mul_(mask)`) change what a tensor carries for
every later use of it, under any name; a tensor that another one still in use views, and the
graph's own blind spot (`z = y; z += w`, traced as out of place) are refused by name. Tensors made
only in the shape of a traced one (`zeros_like`, `new_zeros`, `randn_like`) are constants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradpath_lib.analysis import analyze_model
from gradpath_lib.errors import GradpathError

from conftest import assert_structure_is_measured

C, SHAPE = 4, (3, 4, 4)


def conv(c_in: int = C, c_out: int = C) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


def timestamps(report, name: str) -> list[tuple[int, ...]]:
    return [g.timestamps for g in report.groups if g.position.name == name]


class Pair(nn.Module):
    """Two branches a and b from the stem, read by the head after an in-place op (`combine`)."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b, self.head = conv(3, C), conv(), conv(), conv()
        self.keep = nn.Identity()

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.combine(self.a(x), self.b(x)))


class AddedInPlace(Pair):
    def combine(self, y, z):
        self.keep(y).add_(z)  # nn.Identity returns y itself: y changes
        return y


class CopiedInPlace(Pair):
    def combine(self, y, z):
        y = y * 2
        return y.copy_(z)  # y's own values are gone: a reaches the head no more


class HalfMasked(Pair):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, C, 1, 1))

    def combine(self, y, z):
        y.mul_(self.mask)  # channels 2 and 3 of a reach the head no more
        return y + z


class ChunkScaled(Pair):
    def combine(self, y, z):
        first, second = y[:, :2], y[:, 2:]
        first.mul_(z[:, :2])  # a view of y, but y is not used again, and `second` does not share it
        return torch.cat([first, second], dim=1)


class ViewChanged(Pair):
    def combine(self, y, z):
        kept = y[:, :2]
        y.add_(z)  # `kept` views y: it changes too
        return torch.cat([kept, y[:, 2:]], dim=1)


class AliasedAdd(Pair):
    def combine(self, y, z):
        w = y
        w += z  # in place on y at run time, but fx records w = y + z
        return y


class FilledZeros(Pair):
    def combine(self, y, z):
        out = torch.zeros_like(y)
        out[:, :2] = y[:, :2]  # y's channels 2 and 3 are dropped
        return out + z.new_zeros(z.shape) + z


class Sampled(Pair):
    def combine(self, y, z):  # a VAE's sample: the noise carries no path
        return y + torch.randn_like(y) * (0.5 * z).exp()


def test_an_in_place_add_reaches_every_name_of_the_tensor():
    report = analyze_model(AddedInPlace(), SHAPE)
    assert timestamps(report, "b") == [(2,)] and timestamps(report, "a") == [(2,)]
    assert report.graph.assigns  # the measured check keeps copies
    assert_structure_is_measured(AddedInPlace(), SHAPE, report)


def test_copy_drops_the_old_values_and_a_constant_mask_the_masked_channels():
    copied = analyze_model(CopiedInPlace(), SHAPE)
    assert timestamps(copied, "a") == [()] and timestamps(copied, "b") == [(2,)]
    assert_structure_is_measured(CopiedInPlace(), SHAPE, copied)
    masked = analyze_model(HalfMasked(), SHAPE)
    assert {(g.start, g.timestamps) for g in masked.groups if g.position.name == "a"} == {(0, (2,)), (2, ())}
    assert_structure_is_measured(HalfMasked(), SHAPE, masked)


def test_a_view_changed_in_place_is_followed_unless_another_view_in_use_shares_it():
    report = analyze_model(ChunkScaled(), SHAPE)
    assert {(g.start, g.timestamps) for g in report.groups if g.position.name == "b"} == {(0, (2,)), (2, ())}
    assert_structure_is_measured(ChunkScaled(), SHAPE, report)
    with pytest.raises(GradpathError, match="in-place add_ into a tensor that 'getitem', still to be used, views"):
        analyze_model(ViewChanged(), SHAPE)


def test_an_in_place_op_the_graph_records_out_of_place_is_refused():
    with pytest.raises(GradpathError, match="computes another output than the model itself"):
        analyze_model(AliasedAdd(), SHAPE)


def test_tensors_shaped_like_a_traced_one_are_constants():
    filled = analyze_model(FilledZeros(), SHAPE)
    assert {(g.start, g.timestamps) for g in filled.groups if g.position.name == "a"} == {(0, (2,)), (2, ())}
    assert_structure_is_measured(FilledZeros(), SHAPE, filled)
    sampled = analyze_model(Sampled(), SHAPE)  # the traced graph and the model draw the same noise
    assert timestamps(sampled, "a") == [(2,)] and timestamps(sampled, "b") == [(2,)]
    assert_structure_is_measured(Sampled(), SHAPE, sampled)
