"""Positions told apart along a non-channel dim where tensors that differ are joined along it (a
class token), and the copies of a weighted layer's outputs that follow them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradpath_lib.analysis import analyze_model

from conftest import assert_structure_is_measured

SHAPE = (3, 8, 8)
C, HEADS = 8, 2


def stamps(report, layer: str) -> tuple[int, ...]:
    """The union of the timestamps of `layer`'s groups."""
    return tuple(sorted(set().union(*(g.timestamps for g in report.groups if g.position.name == layer))))


def copies(report) -> dict[str, int]:
    return {p.name: p.copies for p in report.graph.positions}


class ClassAttention(nn.Module):
    """CaiT's class attention in miniature: a class token computed from the tokens, joined to them
    (two traced tensors that differ), a per-token Linear with a residual, the head on the class
    token alone. The tokens reach the head only through `q`, never along the residual."""

    def __init__(self):
        super().__init__()
        self.stem, self.q = nn.Conv2d(3, C, 2, stride=2), nn.Linear(C, C)
        self.mix, self.head = nn.Linear(C, C), nn.Linear(C, 3)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (B, 16, C)
        u = torch.cat([self.q(tokens.mean(1, keepdim=True)), tokens], 1)
        return self.head((u + self.mix(u))[:, 0])


def test_traced_parts_that_differ_are_told_apart_along_the_join():
    torch.manual_seed(0)
    report = analyze_model(ClassAttention(), SHAPE)
    assert stamps(report, "stem") == (3, 4)  # stem, q, head / stem, q, mix, head: no residual path (2)
    assert copies(report)["mix"] == 2  # the class token's and the tokens' inputs differ
    assert_structure_is_measured(ClassAttention(), SHAPE, report)


class TokenInsideHeads(nn.Module):
    """A learned token joined per head along the tokens, a dim between the heads and the head
    channels (B, H, N, d); attention, a projection and a residual; the head on that token alone."""

    def __init__(self):
        super().__init__()
        self.stem, self.qkv = nn.Conv2d(3, C, 2, stride=2), nn.Linear(C, 3 * C)
        self.token = nn.Parameter(torch.randn(1, HEADS, 1, C // HEADS))
        self.proj, self.head = nn.Linear(C // HEADS, C // HEADS), nn.Linear(C // HEADS, 3)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).unflatten(2, (3, HEADS, C // HEADS)).permute(2, 0, 3, 1, 4).unbind(0)
        v = torch.cat([self.token.expand(v.shape[0], -1, -1, -1), v], 2)  # (B, H, 1 + N, d)
        k = torch.cat([self.token.expand(k.shape[0], -1, -1, -1), k], 2)
        y = F.scaled_dot_product_attention(torch.cat([self.token.expand(q.shape[0], -1, -1, -1), q], 2), k, v)
        return self.head((self.proj(y) + v)[:, :, 0].mean(1))  # the joined token's position of every head


def test_a_token_joined_between_channel_dims_is_followed():
    torch.manual_seed(0)
    report = analyze_model(TokenInsideHeads(), SHAPE)
    assert stamps(report, "qkv") == (3,)  # qkv, proj, head: v's residual (2) reaches the other positions only
    assert_structure_is_measured(TokenInsideHeads(), SHAPE, report)


class BatchHalves(nn.Module):
    """Two branches joined along the batch, one conv for both, only the first branch's half read."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, C, 1), nn.Conv2d(3, C, 1)
        self.c, self.head = nn.Conv2d(C, C, 3, padding=1), nn.Linear(C, 3)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], 0))
        return self.head(y[: x.shape[0]].mean((2, 3)))


def test_a_conv_over_parts_joined_along_the_batch_keeps_them_apart():
    torch.manual_seed(0)
    report = analyze_model(BatchHalves(), SHAPE)
    assert stamps(report, "a") == (3,) and stamps(report, "b") == ()
    assert copies(report) == {"a": 1, "b": 1, "c": 2, "head": 1}
    assert_structure_is_measured(BatchHalves(), SHAPE, report)


class SameTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.mix, self.head = nn.Conv2d(3, C, 2, stride=2), nn.Linear(C, C), nn.Linear(C, 3)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.mix(torch.cat([t, t], 1))[:, 0])


def test_parts_that_carry_the_same_channels_make_no_copies():
    report = analyze_model(SameTwice(), SHAPE)
    assert set(copies(report).values()) == {1} and stamps(report, "stem") == (3,)
