"""Weightless ops that mix channels (LayerNorm, GroupNorm, softmax, channel means, matmul):
they join channels into one gradient group without lengthening any path; ops that reorder
channels (ShuffleNet's channel shuffle, flips, strided slices, pixel shuffles) move each channel's
paths with it. The measured spectrum (an independent, exact computation) agrees with the
structure on models built of them."""

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


def groups(report, layer: str) -> list[tuple[int, int, tuple[int, ...]]]:
    """(start, stop, timestamps) of every channel group of `layer`."""
    return [(g.start, g.stop, g.timestamps) for g in report.groups if g.position.name == layer]


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm for (N, C, H, W), written with means over the channels."""

    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm and MLP, layer scale, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.down(F.gelu(self.up(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 2, stride=2)
        self.stem_norm = ChannelsFirstLayerNorm(C)
        self.blocks = nn.Sequential(ConvNeXtBlock(C), ConvNeXtBlock(C))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        x = self.blocks(self.stem_norm(self.stem(x)))
        return self.head(self.norm(x.mean((2, 3))))


class SplitNormalized(nn.Module):
    """conv `a`, then `norm`, then only the first half of the channels goes on."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.a, self.norm = nn.Conv2d(3, C, 1), norm
        self.head = nn.Linear(C // 2, 3)

    def forward(self, x):
        return self.head(self.norm(self.a(x))[:, : C // 2].mean((2, 3)))


class Softmaxed(nn.Module):
    """SplitNormalized with a softmax along `dim` of the flattened (N, C, H*W) map. The softmax is
    squared before its sum: a softmax summed along its own dim is 1 whatever its input, so its
    gradient would be exactly zero and only rounding noise would be measured."""

    def __init__(self, dim: int):
        super().__init__()
        self.a, self.dim = nn.Conv2d(3, C, 1), dim
        self.head = nn.Linear(C // 2, 3)

    def forward(self, x):
        y = torch.softmax(self.a(x).flatten(2), dim=self.dim)
        return self.head(y[:, : C // 2].pow(2).sum(-1))


class SqueezeExcite(nn.Module):
    """SE gate from a channel mean, indexed back to (N, C, 1, 1) with None."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, C, 3, padding=1)
        self.squeeze, self.excite = nn.Linear(C, 2), nn.Linear(2, C)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        y = self.a(x)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(y.mean((2, 3))))))
        return self.head((y * gate[:, :, None, None]).amax((2, 3)))


class Attention(nn.Module):
    """Single-head self-attention with pre-norm and an MLP, on (N, L, D) tokens."""

    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.scale = d ** -0.5

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        x = x + self.proj(weights @ v)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.blocks = nn.Sequential(Attention(d), Attention(d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.blocks(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


@pytest.mark.parametrize("norm, expected", [
    (nn.GroupNorm(2, C), [(0, 2, (2,)), (2, 4, ())]),  # the kept half is one group: the other gets nothing
    (nn.GroupNorm(1, C), [(0, 4, (2,))]),  # one group mixes every channel into the kept half
    (nn.LayerNorm([C, 8, 8]), [(0, 4, (2,))]),
    (nn.LayerNorm(8), [(0, 2, (2,)), (2, 4, ())]),  # over the width only: channels stay apart
    (nn.InstanceNorm2d(C), [(0, 2, (2,)), (2, 4, ())]),
])
def test_a_norm_mixes_exactly_the_channels_it_normalizes_together_without_a_timestamp(norm, expected):
    assert groups(analyze_model(SplitNormalized(norm), SHAPE), "a") == expected


@pytest.mark.parametrize("dim, expected", [(1, [(0, 4, (2,))]), (-1, [(0, 2, (2,)), (2, 4, ())])])
def test_softmax_mixes_channels_only_along_them(dim, expected):
    assert groups(analyze_model(Softmaxed(dim), SHAPE), "a") == expected


def test_attention_queries_keys_and_values_all_reach_the_loss_through_the_projection():
    report = analyze_model(TinyViT(), SHAPE)
    assert groups(report, "blocks.1.qkv") == [(0, 24, (3, 5))]  # proj -> head, or proj -> block-1 mlp -> head
    assert groups(report, "blocks.1.proj") == [(0, 8, (2, 4))]
    assert report.network["longest_path"] == 10  # patch + 2 x (qkv, proj, mlp.0, mlp.2) + head


def test_layer_norm_over_channels_adds_no_timestamp():
    stem_norm = analyze_model(ConvNeXtLike(), SHAPE)
    assert groups(stem_norm, "stem")[0][2][0] == 2  # stem -> (norms) -> head: two weighted layers


class OuterProduct(nn.Module):
    """y^T y over the tokens keeps the channels along two dims: element (i, j) reads channels i and j."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 4), nn.Linear(1, 3)

    def forward(self, x):
        y = self.a(x.mean(1))  # (N, 8, 4) from (N, 8, 8)
        return self.head((y.transpose(1, 2) @ y)[:, 0, 3:])


class LinearAttention(nn.Module):
    """EfficientViT's ReLU linear attention: the values padded with a constant channel per head,
    k^T v over the tokens, q (k^T v) contracting k's channels (not the innermost dim of k^T v),
    then every channel divided by its head's constant-channel result (a size-1 dim broadcast)."""

    def __init__(self):
        super().__init__()
        self.stem, self.qkv, self.head = nn.Conv2d(3, C, 1), nn.Linear(C, 3 * C), nn.Linear(1, 3)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (N, T, C)
        q, k, v = self.qkv(tokens).unflatten(2, (2, 3 * C // 2)).transpose(1, 2).chunk(3, dim=-1)  # (N, h, T, d)
        v = F.pad(v, (0, 1), value=1.0)
        out = F.relu(q) @ (F.relu(k).transpose(-1, -2) @ v)  # (N, h, T, d + 1), q's channels contracted
        out = out[..., :-1] / (out[..., -1:] + 1e-6)
        return self.head(out[:, 1, :, :1].mean(1))  # the first channel of the second head


class HeadScoresThroughRows(nn.Module):
    """A score per head and token, folded with the rows into one dim and back (as BoTNet's relative
    positions are): the rows hold copies of a head's score, not channels, for the conv after."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2 * C, 1), nn.Conv2d(2, 3, 1)

    def forward(self, x):
        scores = self.a(x).reshape(-1, 2, C, 64).mean(2)  # (N, heads, tokens)
        scores = scores.reshape(-1, 8).reshape(-1, 2, 8, 8)  # (N * heads * rows, cols) and back
        return self.b(scores[:, :1] * torch.ones(1, 2, 1, 1))  # the first head only, read as 2 channels


class CrossCovarianceAttention(nn.Module):
    """XCiT's attention across the channels of each head: q k^T over the tokens is a (channel x
    channel) map per head, softmaxed over the keys' channels, then applied to the values."""

    def __init__(self):
        super().__init__()
        self.stem, self.qkv, self.head = nn.Conv2d(3, C, 1), nn.Linear(C, 3 * C), nn.Linear(1, 3)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (N, T, C)
        q, k, v = self.qkv(tokens).unflatten(2, (3, 2, C // 2)).permute(2, 0, 3, 4, 1).unbind(0)  # (N, h, d, T)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)).softmax(-1)
        return self.head((attn @ v)[:, 0, :1].mean(2))  # the first channel of the first head


class HeadsIntoBatch(nn.Module):
    """Heads folded into the batch dim, (B, H, N, hd) -> (B * H, N, hd), then one Linear for every
    head (a weight shared by the heads' channels, which are not the Linear's features), and only
    the second head's output read back."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 8), nn.Linear(4, 3)

    def forward(self, x):
        y = self.a(x.mean(1)).reshape(-1, 8, 2, 4).transpose(1, 2).reshape(-1, 8, 4)
        return self.head(y.mean(1)).reshape(-1, 2, 3)[:, 1]


def test_one_linear_for_heads_folded_into_the_batch_keeps_the_heads_apart():
    """The shared Linear gets a copy of its outputs per head: only the second head's copy reaches
    the loss, so only the channels of `a` that feed the second head get gradient."""
    torch.manual_seed(0)
    report = analyze_model(HeadsIntoBatch(), SHAPE)
    assert [(g.start, g.stop, g.timestamps) for g in report.groups if g.position.name == "a"] == [
        (0, 4, ()), (4, 8, (2,))]
    assert {p.name: p.copies for p in report.graph.positions} == {"a": 1, "head": 2}
    assert_structure_is_measured(HeadsIntoBatch(), SHAPE, report)


class HeadsIntoBatchAndBack(nn.Module):
    """BoTNet's attention layout: heads folded into the batch, tokens split into rows and back,
    then the heads unfolded from the batch for the next layer."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Conv2d(3, 2 * C, 1), nn.Linear(C, 3)

    def forward(self, x):
        y = self.a(x)  # (B, 2 * C, 8, 8): two heads of C channels
        y = y.reshape(-1, C, 64).transpose(1, 2)  # (B * 2, 64 tokens, C)
        y = (y.reshape(-1, 8, 8, C) * 2).reshape(-1, 64, C)  # tokens as rows and back
        y = y.transpose(1, 2).reshape(-1, 2 * C, 8, 8)
        return self.head(y[:, C:C + C // 2].mean((2, 3)).repeat(1, 2))  # half the second head's channels


class TokenMixingOverHeads(nn.Module):
    """A Linear along the tokens of a tensor whose channels lie along two other dims (heads and
    head channels): neither acts on each channel on its own nor reads its features."""

    def __init__(self):
        super().__init__()
        self.a, self.mix = nn.Conv2d(3, 2 * C, 1), nn.Linear(64, 64)

    def forward(self, x):
        y = self.a(x).reshape(-1, 2, C, 64)  # (B, heads, C, 64 tokens)
        return self.mix(y).mean((1, 2, 3))


class PixelShuffledRows(nn.Module):
    """A pixel shuffle of (N, H, C, W): it would spread the channels over space and channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, C, 1)

    def forward(self, x):
        return F.pixel_shuffle(self.a(x).transpose(1, 2), 2).mean((2, 3))


@pytest.mark.parametrize("model, names", [
    (TokenMixingOverHeads(), "Linear 'mix' reading channels from dims 1 and 2"),
    (PixelShuffledRows(), "a pixel shuffle of channels that do not lie along dim 1"),
])
def test_what_still_cannot_be_followed_is_an_error_naming_it(model, names):
    with pytest.raises(GradpathError, match=names):
        analyze_model(model, SHAPE)


HEADS, HEAD_DIM = 2, 4
D = HEADS * HEAD_DIM


class MultiHead(nn.Module):
    """Multi-head self-attention written four common ways; `only_head` keeps one head's output."""

    def __init__(self, style: str, only_head: int | None = None):
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, stride=4)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(HEAD_DIM if only_head is not None else D, D)
        self.head = nn.Linear(D, 3)
        self.style, self.only_head = style, only_head

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        if self.style == "unbind":
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = qkv[0], qkv[1], qkv[2]
        if self.style == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        elif self.style == "einsum":
            weights = torch.einsum("bhid,bhjd->bhij", q, k).mul(HEAD_DIM ** -0.5).softmax(dim=-1)
            y = torch.einsum("bhij,bhjd->bhid", weights, v)
        else:
            y = (q @ k.transpose(-2, -1) * HEAD_DIM ** -0.5).softmax(dim=-1) @ v
        y = y[:, self.only_head] if self.only_head is not None else y.transpose(1, 2).reshape(b, n, D)
        return self.head((x + self.proj(y)).mean(1))


class AnchorHead(nn.Module):
    """A YOLO-style head: conv channels viewed as (anchors, outputs), only the box outputs used."""

    def __init__(self, anchors: int = 3, outputs: int = 6):
        super().__init__()
        self.a = nn.Conv2d(3, anchors * outputs, 1)
        self.anchors, self.outputs = anchors, outputs

    def forward(self, x):
        b, _, h, w = x.shape
        y = self.a(x).view(b, self.anchors, self.outputs, h, w).permute(0, 1, 3, 4, 2)
        return y[..., :4].sigmoid().mean((1, 2, 3))




def test_each_head_keeps_its_own_queries_keys_and_values():
    report = analyze_model(MultiHead("unbind", only_head=1), SHAPE)
    used = [(start, stop) for start, stop, stamps in groups(report, "qkv") if stamps]
    head = slice(HEAD_DIM, 2 * HEAD_DIM)  # head 1 of each of q, k, v
    assert used == [(part * D + head.start, part * D + head.stop) for part in range(3)]


def test_channels_viewed_as_anchors_by_outputs_keep_their_place():
    report = analyze_model(AnchorHead(), SHAPE)
    assert [(a, b) for a, b, stamps in groups(report, "a") if stamps] == [(0, 4), (6, 10), (12, 16)]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle as torchvision writes it: view, transpose, flatten back."""
    b, c, h, w = x.shape
    return torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous().view(b, -1, h, w)


SHUFFLES = {"view": lambda x: channel_shuffle(x, 2), "module": nn.ChannelShuffle(2),
            "function": lambda x: F.channel_shuffle(x, 2)}


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, half go through 1x1, depthwise 3x3
    and 1x1; the halves are concatenated, then shuffled (as `style` writes it)."""

    def __init__(self, c: int, style: str):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.SiLU(), nn.Conv2d(h, h, 3, padding=1, groups=h),
                                    nn.Conv2d(h, h, 1), nn.SiLU())
        self.shuffle = SHUFFLES[style]

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return self.shuffle(torch.cat((a, self.branch(b)), dim=1))


class ShuffleNetLike(nn.Module):
    def __init__(self, style: str, c: int = 2 * C, units: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.units = nn.Sequential(*[ShuffleUnit(c, style) for _ in range(units)])
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        return self.head(self.units(self.stem(x)).mean((2, 3)))


class Reordered(nn.Module):
    """conv `a` (`width` channels), `reorder`, then only channels [lo, hi) go on to the head."""

    def __init__(self, reorder, width: int, lo: int, hi: int):
        super().__init__()
        self.a, self.reorder, self.lo, self.hi = nn.Conv2d(3, width, 1), reorder, lo, hi
        self.head = nn.Linear(hi - lo, 3)

    def forward(self, x):
        return self.head(self.reorder(self.a(x))[:, self.lo:self.hi].mean((2, 3)))


REORDERS = {  # model, the channel ranges of `a` that reach the loss
    "shuffle": (lambda: Reordered(nn.ChannelShuffle(2), 8, 0, 2), [(0, 1), (4, 5)]),
    "shuffle-rows": (lambda: Reordered(lambda y: F.channel_shuffle(y.transpose(1, 2), 2).transpose(1, 2), 8, 0, 1),
                     [(0, 1)]),  # a shuffle of dim 1 when it holds rows, not channels
    "flip": (lambda: Reordered(lambda y: torch.flip(y, [1]), 4, 0, 1), [(3, 4)]),
    "strided-slice": (lambda: Reordered(lambda y: y[:, 1::3], 8, 1, 2), [(4, 5)]),
    "pixel-shuffle": (lambda: Reordered(nn.PixelShuffle(2), 8, 1, 2), [(4, 8)]),
    "pixel-unshuffle": (lambda: Reordered(nn.PixelUnshuffle(2), 2, 4, 5), [(1, 2)]),
}


@pytest.mark.parametrize("name", REORDERS)
def test_reordered_channels_take_their_gradient_paths_with_them(name):
    model, used = REORDERS[name]
    report = analyze_model(model(), SHAPE)
    assert [(a, b) for a, b, stamps in groups(report, "a") if stamps] == used


def test_shuffled_halves_alternate_between_the_shortcut_and_the_branch():
    """Through a shuffle, half of a unit's branch output skips the next unit's branch: its channel
    groups reach the loss by different path lengths, as CSP's partial channels do."""
    report = analyze_model(ShuffleNetLike("view"), SHAPE)
    assert groups(report, "units.1.branch.3") == [(0, 2, (2,)), (2, 4, (5,))]
    assert groups(report, "units.0.branch.3") == [(0, 1, (2,)), (1, 2, (5,)), (2, 4, (5, 8))]


class StdConv2d(nn.Conv2d):
    """A weight-standardized conv (as timm's): its forward calls F.conv2d on a normalized weight."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class StandardizedNet(nn.Module):
    """StdConv2d layers with a residual: each call of the subclass is one weighted layer."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = StdConv2d(3, C, 3, padding=1), StdConv2d(C, C, 3, padding=1), StdConv2d(C, C, 1)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.b(F.silu(self.a(x)))).mean((2, 3)))


def test_a_subclass_of_a_weighted_module_is_one_weighted_layer():
    report = analyze_model(StandardizedNet(), SHAPE)
    assert [(p.name, p.kind) for p in report.graph.positions] == [
        ("stem", "StdConv2d"), ("a", "StdConv2d"), ("b", "StdConv2d"), ("head", "Linear")]
    assert groups(report, "stem") == [(0, C, (2, 4))]


class TokenMixing(nn.Module):
    """An MLP-Mixer-like block in miniature: a Linear along the tokens (each channel on its own),
    after a LayerNorm over the channels it mixes (`norm`) or not, on the first half of the
    channels only; the other half goes straight to the head."""

    def __init__(self, norm: bool):
        super().__init__()
        self.patch = nn.Conv2d(3, C, 2, stride=2)  # 16 tokens of C channels
        self.norm = nn.LayerNorm(C // 2) if norm else nn.Identity()
        self.tokens = nn.Linear(16, 16)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        y = self.patch(x).flatten(2).transpose(1, 2)  # (N, T, C)
        a, b = y[..., : C // 2], y[..., C // 2:]
        a = a + self.tokens(self.norm(a).transpose(1, 2)).transpose(1, 2)
        return self.head(torch.cat([a, b], -1).mean(1))


class ECAGate(nn.Module):
    """ECA-Net's gate: a Conv1d sliding along the pooled channels (a window of 3), then a sigmoid
    gate; the head reads channel 0 only, which the gate computes from channels 0 and 1."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, C, 1)
        self.gate = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Linear(1, 3)

    def forward(self, x):
        y = self.a(x)
        g = torch.sigmoid(self.gate(y.mean((2, 3)).unsqueeze(1))).transpose(1, 2).unsqueeze(-1)
        return self.head((y * g)[:, :1].mean((2, 3)))


@pytest.mark.parametrize("norm", [False, True])
def test_a_linear_along_the_tokens_keeps_each_channel_on_its_own(norm):
    report = analyze_model(TokenMixing(norm), SHAPE)
    assert groups(report, "tokens") == [(0, C // 2, (2,))]  # its output keeps the channels it mixed
    assert groups(report, "patch") == [(0, C // 2, (2, 3)), (C // 2, C, (2,))]


def test_heads_folded_into_the_batch_keep_their_channels():
    report = analyze_model(HeadsIntoBatchAndBack(), SHAPE)
    assert [(a, b) for a, b, stamps in groups(report, "a") if stamps] == [(C, C + C // 2)]


def test_linear_attention_reads_its_heads_queries_and_keys_and_one_value():
    report = analyze_model(LinearAttention(), SHAPE)
    third = 3 * C // 2  # one head's q, k and v; its output channel 0 reads every q and k, and v's 0
    assert [(a, b) for a, b, stamps in groups(report, "qkv") if stamps] == [(third, 2 * third - 1)]


def test_copies_of_a_channel_along_a_reshaped_dim_are_not_channels():
    report = analyze_model(HeadScoresThroughRows(), SHAPE)
    assert [(a, b) for a, b, stamps in groups(report, "a") if stamps] == [(0, C)]


def test_an_outer_product_of_channels_reads_the_two_it_multiplies():
    report = analyze_model(OuterProduct(), SHAPE)
    assert [(a, b) for a, b, stamps in groups(report, "a") if stamps] == [(0, 1), (3, 4)]


def test_attention_across_channels_reads_one_query_and_every_key_and_value_of_its_head():
    report = analyze_model(CrossCovarianceAttention(), SHAPE)
    half = C // 2
    assert [(a, b) for a, b, stamps in groups(report, "qkv") if stamps] == [(0, 1), (C, C + half),
                                                                             (2 * C, 2 * C + half)]


def test_a_conv_sliding_along_the_channels_reads_its_window():
    report = analyze_model(ECAGate(), SHAPE)
    assert groups(report, "gate") == [(0, 1, (2,)), (1, C, ())]
    assert groups(report, "a") == [(0, 1, (2, 3)), (1, 2, (3,)), (2, C, ())]


MODELS = {
    "token-mixing": lambda: TokenMixing(False),
    "token-mixing-normalized": lambda: TokenMixing(True),
    "eca-gate": ECAGate,
    "outer-product": OuterProduct,
    "linear-attention": LinearAttention,
    "head-scores-through-rows": HeadScoresThroughRows,
    "heads-into-batch-and-back": HeadsIntoBatchAndBack,
    "cross-covariance-attention": CrossCovarianceAttention,
    "convnext": ConvNeXtLike,
    "groupnorm": lambda: SplitNormalized(nn.GroupNorm(2, C)),
    "layernorm-channels-first": lambda: SplitNormalized(ChannelsFirstLayerNorm(C)),
    "softmax-channels": lambda: Softmaxed(1),
    "softmax-space": lambda: Softmaxed(-1),
    "squeeze-excite": SqueezeExcite,
    "attention": TinyViT,
    "multi-head-unbind": lambda: MultiHead("unbind"),
    "multi-head-index": lambda: MultiHead("index"),
    "multi-head-sdpa": lambda: MultiHead("sdpa"),
    "multi-head-einsum": lambda: MultiHead("einsum"),
    "one-head-einsum": lambda: MultiHead("einsum", only_head=0),
    "one-head": lambda: MultiHead("unbind", only_head=1),
    "anchor-head": AnchorHead,
    "weight-standardized": StandardizedNet,
    **{f"shufflenet-{style}": (lambda style=style: ShuffleNetLike(style)) for style in SHUFFLES},
    **{name: model for name, (model, _) in REORDERS.items()},
}


@pytest.mark.parametrize("name", MODELS)
def test_measured_support_equals_structural_timestamps(name):
    torch.manual_seed(0)
    assert_structure_is_measured(MODELS[name](), SHAPE)


class PickedTokens(nn.Module):
    """Tokens through ops that pick or add entries: baddbmm's scores plus a bias (as Hugging Face's
    GPT-2 attention writes them), topk over the tokens and gather by its indices (each channel
    keeps its own), and topk over one projection's channels (which then mix). Half of each goes
    through one more Linear, so a channel's paths show whether it was kept apart. `keywords`: the
    scores as BLOOM writes them, `bias.baddbmm(batch1=q, batch2=k^T, beta=1, alpha=scale)`."""

    def __init__(self, d: int = 8, keywords: bool = False):
        super().__init__()
        self.keywords = keywords
        self.q, self.k, self.v, self.w, self.gate = (nn.Linear(d, d) for _ in range(5))
        self.deep, self.deep_gate = nn.Linear(d // 2, d // 2), nn.Linear(2, 2)
        self.out = nn.Linear(d + 4, 3)

    def forward(self, x):  # (N, D, T): the input's channels are on dim 1
        x = x.transpose(1, 2)
        q, k, v = self.q(x), self.k(x), self.v(x)
        bias = torch.zeros(x.shape[0], x.shape[1], x.shape[1])
        scores = (bias.baddbmm(batch1=q, batch2=k.transpose(1, 2), beta=1.0, alpha=0.5) if self.keywords
                  else torch.baddbmm(bias, q, k.transpose(1, 2)))
        attended = scores.softmax(-1) @ v
        best, index = self.w(x).topk(2, dim=1)  # the two best tokens of each channel
        both = best + torch.gather(attended, 1, index)
        gate = self.gate(x).topk(4, dim=-1).values[:, :2]  # each of the 4 may be any channel
        mixed = torch.cat([self.deep(both[..., :4]), both[..., 4:]], -1)
        gated = torch.cat([self.deep_gate(gate[..., :2]), gate[..., 2:]], -1)
        return self.out(torch.cat([mixed, gated], -1)).mean(1)


@pytest.mark.parametrize("keywords", [False, True])
def test_picked_entries_keep_their_channels_unless_picked_along_them(keywords):
    report = analyze_model(PickedTokens(keywords=keywords), (8, 6))
    kept_apart = [(0, 4, (3,)), (4, 8, (2,))]
    assert groups(report, "w") == kept_apart and groups(report, "v") == kept_apart
    assert groups(report, "q") == groups(report, "k") == groups(report, "gate") == [(0, 8, (2, 3))]
    assert_structure_is_measured(PickedTokens(keywords=keywords), (8, 6), report)


class SpatialTransformer(nn.Module):
    """A spatial transformer: a localization conv predicts a sampling grid, F.grid_sample moves
    each channel of the features by it; half of the sampled channels go through one more conv."""

    def __init__(self):
        super().__init__()
        self.features, self.where = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
        self.deep, self.head = nn.Conv2d(2, 2, 1), nn.Conv2d(C, 3, 1)

    def forward(self, x):
        grid = torch.tanh(self.where(x)).permute(0, 2, 3, 1)  # (N, H, W, 2) in [-1, 1]
        moved = F.grid_sample(self.features(x), grid, align_corners=False)
        return self.head(torch.cat([self.deep(moved[:, :2]), moved[:, 2:]], 1))


def test_grid_sample_keeps_each_channel_and_mixes_the_grid_into_all():
    report = analyze_model(SpatialTransformer(), SHAPE)
    assert groups(report, "features") == [(0, 2, (3,)), (2, 4, (2,))]
    assert groups(report, "where") == [(0, 2, (2, 3))]  # the grid moves every channel
    assert_structure_is_measured(SpatialTransformer(), SHAPE, report)


class BiasedAttention(nn.Module):
    """T5's attention: scaled_dot_product_attention with a float mask, a relative position bias
    read from an Embedding by constant bucket ids (its own path into the logits), or a causal one
    built from constants (no path)."""

    def __init__(self, learned: bool, tokens: int = 6, heads: int = 2):
        super().__init__()
        self.learned, self.tokens, self.heads = learned, tokens, heads
        self.stem, self.qkv, self.head = nn.Linear(3, 2 * C), nn.Linear(2 * C, 6 * C), nn.Linear(2 * C, 3)
        self.bias = nn.Embedding(2 * tokens - 1, heads)
        self.register_buffer("buckets", torch.arange(tokens)[None, :] - torch.arange(tokens)[:, None] + tokens - 1)

    def forward(self, x):
        h = self.stem(x)
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, C)).permute(2, 0, 3, 1, 4)
        if self.learned:
            mask = self.bias(self.buckets).permute(2, 0, 1).unsqueeze(0)
        else:
            mask = torch.full((self.tokens, self.tokens), float("-inf")).triu(1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
        return self.head((h + y).mean(1))


@pytest.mark.parametrize("learned", [True, False])
def test_a_float_attention_mask_from_weights_is_a_path_into_the_logits(learned):
    model = BiasedAttention(learned)
    report = analyze_model(model, (6, 3))
    rows = report.parameters.set_index("module")
    assert ("bias" in rows.index) == learned
    if learned:
        assert rows.loc["bias", "timestamps"] == rows.loc["qkv", "timestamps"] == (2,)  # through the logits, like q, k
    assert_structure_is_measured(model, (6, 3), report=report)


class OneEntrySoftmax(nn.Module):
    """A softmax over a dim of size 1 (MobileViT's attention over the one patch of a 2 x 2 map at
    a small input) is 1 whatever its input: `gate` and attention's `q` and `k` get no gradient. Two
    heads of 8 features: there CPU's fused attention kernel leaves rounding noise in q's and k's
    gradient, which the measured check must not take for a path (it measures with the math kernel)."""

    def __init__(self):
        super().__init__()
        self.a, self.gate, self.head = nn.Conv2d(3, C, 1), nn.Conv2d(3, 1, 1), nn.Linear(C, 3)
        self.q, self.k, self.v, self.out = nn.Linear(C, 16), nn.Linear(C, 16), nn.Linear(C, 16), nn.Linear(16, C)

    def forward(self, x):
        y = self.a(x) * F.softmax(self.gate(x), dim=1)
        tokens = y.flatten(2).transpose(1, 2)  # (N, 64, C)
        pooled = tokens.mean(1, keepdim=True)  # one key

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (2, 8)).transpose(1, 2)

        z = F.scaled_dot_product_attention(heads(self.q(tokens)), heads(self.k(pooled)), heads(self.v(pooled)))
        return self.head((tokens + self.out(z.transpose(1, 2).flatten(2))).mean(1))


def test_a_softmax_over_one_entry_passes_no_gradient():
    model = OneEntrySoftmax()
    report = analyze_model(model, SHAPE)
    rows = report.parameters.set_index("module")
    assert rows.loc["gate", "timestamps"] == rows.loc["q", "timestamps"] == rows.loc["k", "timestamps"] == ()
    assert rows.loc["v", "timestamps"] == (3,) and rows.loc["a", "timestamps"] == (2, 4)
    assert_structure_is_measured(model, SHAPE, report=report)
