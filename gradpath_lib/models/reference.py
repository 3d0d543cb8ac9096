"""Well-known designs outside the papers, for gradient path analysis only (never trained here):
ShuffleNetV2 1.0x, MobileNetV2 1.0x, ConvNeXt-T and ViT-Ti/16 on ImageNet, and the language model
GPT-2 small, written from their papers with the layer structure of torchvision's (timm's for
ViT-Ti, Hugging Face's for GPT-2) so that the parameter counts match theirs exactly
(`ReferenceNet.params`, checked by the tests). `gradpath analyze NAME` accepts their names;
`reference_net(name)` builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check_choice

IMAGENET_INPUT = (3, 224, 224)
IMAGENET_CLASSES = 1000


def conv_bn_act(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias), BatchNorm and an optional activation: the unit of both mobile nets."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([act()] if act else []))


# --- ShuffleNetV2 (Ma et al., 2018) ------------------------------------------------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, as torchvision writes it: view, transpose, flatten back."""
    b, c, h, w = x.shape
    return torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """Stride 1: half the channels pass, half go through 1x1, depthwise 3x3, 1x1. Stride 2: both
    halves are branches of the whole input. Then concat and shuffle."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        half = c_out // 2
        self.stride = stride
        self.branch1 = nn.Sequential(
            conv_bn_act(c_in, c_in, 3, stride, groups=c_in, act=None), conv_bn_act(c_in, half),
        ) if stride > 1 else nn.Sequential()
        self.branch2 = nn.Sequential(
            conv_bn_act(c_in if stride > 1 else half, half),
            conv_bn_act(half, half, 3, stride, groups=half, act=None), conv_bn_act(half, half),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            passed, branched = x.chunk(2, dim=1)
            out = torch.cat((passed, self.branch2(branched)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 1.0x: stem, three stages of shuffle units, a 1x1 conv, pooling, classifier."""

    def __init__(self, repeats: tuple[int, ...] = (4, 8, 4), widths: tuple[int, ...] = (24, 116, 232, 464, 1024)):
        super().__init__()
        self.conv1 = conv_bn_act(3, widths[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, c_in = [], widths[0]
        for repeat, c_out in zip(repeats, widths[1:-1]):
            stages.append(nn.Sequential(ShuffleUnit(c_in, c_out, 2), *[ShuffleUnit(c_out, c_out, 1)
                                                                       for _ in range(repeat - 1)]))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.conv5 = conv_bn_act(c_in, widths[-1])
        self.fc = nn.Linear(widths[-1], IMAGENET_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv5(self.stages(self.maxpool(self.conv1(x)))).mean((2, 3)))


# --- MobileNetV2 (Sandler et al., 2018) ---------------------------------------------------------
class InvertedResidual(nn.Module):
    """1x1 expansion (unless t = 1), depthwise 3x3, linear 1x1 projection; identity when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn_act(c_in, hidden, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   conv_bn_act(hidden, c_out, act=None)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))  # (expansion t, channels c, repeats n, stride s)


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0x: stem, 17 inverted residual blocks, a 1x1 conv to 1280, classifier."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 32, 3, 2, act=nn.ReLU6)]
        c_in = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(conv_bn_act(c_in, 1280, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, IMAGENET_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# --- ConvNeXt (Liu et al., 2022) ----------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, LayerNorm, 4x Linear MLP with GELU, layer scale, residual."""

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.pwconv2(F.gelu(self.pwconv1(y))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


class ConvNeXt(nn.Module):
    """ConvNeXt-T: 4x4 patch stem, stages of (3, 3, 9, 3) blocks joined by 2x2 downsampling."""

    def __init__(self, depths: tuple[int, ...] = (3, 3, 9, 3), dims: tuple[int, ...] = (96, 192, 384, 768)):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i:
                layers.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, stride=2)))
            layers.append(nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)]))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], IMAGENET_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x).mean((2, 3))))


# --- ViT (Dosovitskiy et al., 2021) -------------------------------------------------------------
class EncoderBlock(nn.Module):
    """Pre-norm multi-head self-attention and MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """ViT-Ti/16: 16x16 patches, a class token, learned position embeddings, 12 encoder blocks.
    The head reads the mean of the patch tokens (`pool="avg"`, timm's global_pool="avg"; the ViT
    paper's appendix finds it as good as the class token) or the class token (`pool="token"`). The
    class token joined to the patch tokens makes the analysis tell the two kinds of token apart, so
    it is exact for both: read through the class token alone, the patch embedding has no residual
    path to the head."""

    def __init__(self, dim: int = 192, depth: int = 12, heads: int = 3, mlp: int = 768, patch: int = 16,
                 image: int = 224, pool: str = "avg"):
        super().__init__()
        check_choice("ViT pooling", pool, ("avg", "token"))
        self.pool = pool
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.encoder = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, IMAGENET_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.encoder(x))
        return self.head(x[:, 1:].mean(1) if self.pool == "avg" else x[:, 0])


# --- GPT-2 (Radford et al., 2019) ---------------------------------------------------------------
class GPT2Block(nn.Module):
    """Pre-norm causal self-attention and a 4x MLP (tanh-approximated GELU), each with a residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.attn_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.c_fc, self.mlp_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(dim, dim=2)
        q, k, v = (z.view(b, t, self.heads, dim // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, dim)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """GPT-2 small: token and learned position embeddings, 12 blocks, a final LayerNorm and an
    output layer whose weight is the token embedding's (tied). Input: token ids (N, T), T <= 1024;
    output: next-token logits (N, T, vocab) at every position, all of which the loss reads."""

    def __init__(self, vocab: int = 50257, context: int = 1024, dim: int = 768, depth: int = 12, heads: int = 12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.h = nn.Sequential(*[GPT2Block(dim, heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.lm_head(self.ln_f(self.h(self.wte(idx) + self.wpe(positions))))


@dataclass(frozen=True)
class ReferenceNet:
    """A reference design: its builder, the parameter count of the public implementation it
    follows, where that count comes from, and the input it is analysed and costed on (without
    batch; an integer dtype: token ids)."""

    build: Callable[[], nn.Module]
    params: int
    source: str
    input_shape: tuple[int, ...] = IMAGENET_INPUT
    input_dtype: torch.dtype = torch.float32

    @property
    def input_label(self) -> str:
        """'3x224x224', or '1024 tokens' for token ids."""
        if self.input_dtype.is_floating_point:
            return "x".join(map(str, self.input_shape))
        return "x".join(map(str, self.input_shape)) + " tokens"


REFERENCE_NETS = {
    "shufflenet-v2": ReferenceNet(ShuffleNetV2, 2_278_604, "torchvision shufflenet_v2_x1_0"),
    "mobilenet-v2": ReferenceNet(MobileNetV2, 3_504_872, "torchvision mobilenet_v2"),
    "convnext-tiny": ReferenceNet(ConvNeXt, 28_589_128, "torchvision convnext_tiny"),
    "vit-tiny": ReferenceNet(VisionTransformer, 5_717_416, "timm vit_tiny_patch16_224"),
    "gpt2": ReferenceNet(GPT2, 124_439_808, "Hugging Face transformers gpt2 (GPT2LMHeadModel)", (1024,), torch.long),
}


def reference_net(name: str) -> nn.Module:
    """A freshly initialized reference design, or an error listing the names."""
    check_choice("reference design", name, REFERENCE_NETS)
    return REFERENCE_NETS[name].build()
