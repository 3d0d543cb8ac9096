"""nn.MultiheadAttention in the gradient path analysis: unrolled into its four Linear projections
(`analysis.unroll`), it computes what the module computes, and the structural timestamps of models
built with it (a torchvision-style ViT and torch.nn's Transformer modules among them) equal the
measured spectrum's support."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradpath_lib.analysis import analyze_model
from gradpath_lib.analysis.unroll import UnrolledAttention, unroll_modules
from gradpath_lib.errors import GradpathError

from conftest import assert_structure_is_measured

E, HEADS, L, S, B = 8, 2, 5, 7, 3
SHAPE = (3, 8, 8)

CONFIGS = {
    "self, batch first": dict(batch_first=True),
    "sequence first": dict(),
    "kdim/vdim, no bias": dict(kdim=4, vdim=6, bias=False, batch_first=True),
}


def inputs(config: dict, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    kdim, vdim = config.get("kdim", E), config.get("vdim", E)
    q, k, v = (torch.randn(B, n, d, generator=gen) for n, d in ((L, E), (S, kdim), (S, vdim)))
    return (q, k, v) if config.get("batch_first") else tuple(t.transpose(0, 1) for t in (q, k, v))


MASKS = {
    "none": {},
    "bool attn_mask": {"attn_mask": torch.rand(L, S, generator=torch.Generator().manual_seed(2)) > 0.7},
    "float per-head attn_mask": {"attn_mask": torch.randn(B * HEADS, L, S, generator=torch.Generator().manual_seed(3))},
    "key_padding_mask": {"key_padding_mask": torch.arange(S).expand(B, S) >= torch.tensor([[S], [S - 2], [3]])},
}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("config", CONFIGS)
def test_the_unrolled_module_computes_what_multihead_attention_computes(config, mask):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(E, HEADS, **CONFIGS[config]).eval()
    nn.init.normal_(attention.out_proj.bias) if attention.out_proj.bias is not None else None
    unrolled = UnrolledAttention(attention).eval()
    q, k, v = inputs(CONFIGS[config], torch.Generator().manual_seed(1))
    for average in (True, False):
        want = attention(q, k, v, average_attn_weights=average, **MASKS[mask])
        got = unrolled(q, k, v, average_attn_weights=average, **MASKS[mask])
        for a, b in zip(want, got):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert unrolled(q, k, v, need_weights=False, **MASKS[mask])[1] is None


def test_unrolling_copies_the_model_and_leaves_one_without_attention_alone():
    model = SelfAttention()
    unrolled = unroll_modules(model)
    assert isinstance(model.attention, nn.MultiheadAttention), "the model given is not changed"
    assert isinstance(unrolled.attention, UnrolledAttention)
    plain = nn.Sequential(nn.Conv2d(3, 4, 1))
    assert unroll_modules(plain) is plain


def test_options_it_cannot_unroll_are_named():
    with pytest.raises(GradpathError, match="add_bias_kv or add_zero_attn"):
        analyze_model(SelfAttention(add_bias_kv=True), SHAPE)


class SelfAttention(nn.Module):
    """Tokens (N, L, D) from the image rows, one nn.MultiheadAttention, a linear head."""

    def __init__(self, **options):
        super().__init__()
        self.attention = nn.MultiheadAttention(E, HEADS, batch_first=True, **options)
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        tokens = x.mean(1)
        return self.head(self.attention(tokens, tokens, tokens)[0].mean(1))


class CrossAttention(nn.Module):
    """Sequence-first cross-attention: queries from one conv, keys and values (other widths) from
    a second conv on the first, a causal bool mask; so the key/value path is one layer longer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, E, 1), nn.Conv2d(E, 6, 1)
        self.attention = nn.MultiheadAttention(E, HEADS, kdim=6, vdim=6)
        self.register_buffer("causal", torch.ones(8, 8, dtype=torch.bool).triu(1))
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        a = self.a(x)
        queries = a.mean(3).permute(2, 0, 1)  # (L, N, E): one token per image row
        memory = self.b(a).mean(3).permute(2, 0, 1)
        out, _ = self.attention(queries, memory, memory, attn_mask=self.causal, need_weights=False)
        return self.head(out.mean(0))


class EncoderBlock(nn.Module):
    """torchvision's ViT encoder block: pre-norm attention and MLP, each with a residual."""

    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.self_attention = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(E, 2 * E), nn.GELU(), nn.Linear(2 * E, E))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """torchvision's ViT in miniature: conv patches, a learned class token concatenated to the
    patch tokens, a learned position embedding, encoder blocks, the head on the class token (or,
    with `pool`, on the mean of all tokens)."""

    def __init__(self, patch: int = 4, blocks: int = 2, pool: bool = False):
        super().__init__()
        self.pool = pool
        self.conv_proj = nn.Conv2d(3, E, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, E))
        self.pos_embedding = nn.Parameter(torch.randn(1, (SHAPE[1] // patch) ** 2 + 1, E))
        self.encoder = nn.Sequential(*[EncoderBlock() for _ in range(blocks)])
        self.ln = nn.LayerNorm(E)
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.encoder(x))
        return self.head(x.mean(1) if self.pool else x[:, 0])


def timestamps(report, layer: str) -> tuple[int, ...]:
    (stamps,) = {g.timestamps for g in report.groups if g.position.name == layer}
    return stamps


def test_the_projections_are_positions_of_their_own():
    report = analyze_model(CrossAttention(), SHAPE)
    assert timestamps(report, "attention.out_proj") == (2,)
    assert [timestamps(report, f"attention.{p}_proj") for p in "qkv"] == [(3,), (3,), (3,)]
    assert timestamps(report, "b") == (4,) and timestamps(report, "a") == (4, 5)
    vit = analyze_model(VisionTransformer(pool=True), SHAPE)
    assert "encoder.0.self_attention.q_proj" in set(vit.layers.layer)


MODELS = {"self-attention": SelfAttention, "cross-attention": CrossAttention,
          "vit-pooled": lambda: VisionTransformer(pool=True)}


@pytest.mark.parametrize("name", MODELS)
def test_measured_support_equals_structural_timestamps(name):
    torch.manual_seed(0)
    assert_structure_is_measured(MODELS[name](), SHAPE)


def test_reading_the_class_token_alone_is_followed_position_by_position():
    """The patch tokens' residual stream reaches the class token only through attention: the
    class token joined to them makes the token positions channel slots of their own, so the patch
    embedding is not given the residual path (timestamp 2) that only the patch tokens have, and
    every layer's timestamps are the measured ones. Pooling over the tokens restores that path."""
    torch.manual_seed(0)
    model = VisionTransformer()
    report = analyze_model(model, SHAPE)
    assert timestamps(report, "conv_proj")[0] == 4  # patch embedding, v, attention output, head
    assert_structure_is_measured(model, SHAPE, report)
    assert max(p.copies for p in report.graph.positions) == 2  # the class token and the patch tokens
    assert timestamps(analyze_model(VisionTransformer(pool=True), SHAPE), "conv_proj")[0] == 2

class TorchEncoder(nn.Module):
    """torch.nn's TransformerEncoder (post-norm, batch first, an even number of heads: in eval mode
    without gradients it would run its fused fast path) classifying from the first token."""

    def __init__(self, **layer_options):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, **layer_options)
        self.embed, self.head = nn.Linear(E, 16), nn.Linear(16, 3)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x))[:, 0])


class TorchTransformer(nn.Module):
    """torch.nn's encoder-decoder Transformer with a causal target mask, both sides reading x."""

    def __init__(self):
        super().__init__()
        self.transformer = nn.Transformer(16, 2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=32,
                                          dropout=0.0, batch_first=True)
        self.src, self.tgt, self.head = nn.Linear(E, 16), nn.Linear(E, 16), nn.Linear(16, 3)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        return self.head(self.transformer(self.src(x), self.tgt(x), tgt_mask=mask, tgt_is_causal=True))


@pytest.mark.parametrize("model, some_positions", [
    (TorchEncoder, {"encoder.layers.0.self_attn.q_proj", "encoder.layers.1.linear2"}),
    (lambda: TorchEncoder(norm_first=True, activation="gelu"), {"encoder.layers.1.self_attn.out_proj"}),
    (TorchTransformer, {"transformer.decoder.layers.1.multihead_attn.k_proj", "transformer.encoder.layers.0.linear1"}),
], ids=["encoder", "pre-norm gelu encoder", "encoder-decoder"])
def test_torch_transformer_modules_are_traced_through_their_unrolled_attention(model, some_positions):
    """The Transformer modules are traced into (fx keeps torch.nn's modules whole) and kept off
    their fused path, which reads the attention's bare parameters; the switch is put back after."""
    model = model()
    report = analyze_model(model, (L, E))
    assert some_positions <= {g.position.name for g in report.groups}
    assert torch.backends.mha.get_fastpath_enabled()
    assert_structure_is_measured(model, (L, E), report=report)
