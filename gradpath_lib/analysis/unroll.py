"""`nn.MultiheadAttention` written out as the Linear layers and matmuls it computes, so that the
gradient path analysis can see them.

`nn.MultiheadAttention` keeps its query, key and value projections as bare parameters (one
`in_proj_weight` for all three) and calls one fused function, so neither torch.fx nor a forward
hook sees a weighted layer inside it. `unroll_attention(model)` returns a copy of `model` in which
every such module is an `UnrolledAttention`: `q_proj`, `k_proj`, `v_proj` and `out_proj` Linear
layers holding copies of its weights, and the same heads, scaling, masks and softmax, so the copy
computes what the original does (a test checks outputs and attention weights). The analysis then
reports the four projections as positions named `<module>.q_proj`, ..., `<module>.out_proj`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GradpathError


def additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                  shape: tuple[int, int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """The additive mask, broadcastable to (B, H, L, S) = `shape`, of nn.MultiheadAttention's
    `attn_mask` ((L, S) or (B * H, L, S)) and `key_padding_mask` ((B, S)); in a bool mask True means
    "not attended". One call in the traced graph (`torch.fx.wrap`): the masks are constants there."""
    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    b, h, l, s = shape
    total = torch.zeros((), dtype=dtype)
    if attn_mask is not None:
        total = additive(attn_mask).reshape(-1, h, l, s) if attn_mask.dim() == 3 else additive(attn_mask)
    if key_padding_mask is not None:
        total = total + additive(key_padding_mask).reshape(b, 1, 1, s)
    return total


torch.fx.wrap("additive_mask")


class UnrolledAttention(nn.Module):
    """The computation of one `nn.MultiheadAttention`, with its projections as Linear layers."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if attention.bias_k is not None or attention.add_zero_attn:
            raise GradpathError(
                "gradient path analysis does not support nn.MultiheadAttention with add_bias_kv or add_zero_attn"
            )
        e, bias = attention.embed_dim, attention.in_proj_bias
        weights = (attention.in_proj_weight.chunk(3) if attention._qkv_same_embed_dim
                   else (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight))
        biases = bias.chunk(3) if bias is not None else (None,) * 3
        self.q_proj, self.k_proj, self.v_proj = (self._linear(w, b) for w, b in zip(weights, biases))
        self.out_proj = self._linear(attention.out_proj.weight, attention.out_proj.bias)
        self.embed_dim, self.num_heads, self.head_dim = e, attention.num_heads, attention.head_dim
        self.batch_first, self.dropout = attention.batch_first, attention.dropout
        self.training = attention.training

    @staticmethod
    def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return linear

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `nn.MultiheadAttention.forward`, for batched inputs ((N, L, E) if batch_first, else (L, N, E))."""
        if is_causal and attn_mask is None:
            raise GradpathError("nn.MultiheadAttention's is_causal is a hint: it needs the causal attn_mask too")
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, l, s = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(b, l, h, d).transpose(1, 2)  # (B, H, L, d)
        k = self.k_proj(key).reshape(b, s, h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(b, s, h, d).transpose(1, 2)
        scores = (q * d ** -0.5) @ k.transpose(-2, -1)  # (B, H, L, S)
        if attn_mask is not None or key_padding_mask is not None:
            scores = scores + additive_mask(attn_mask, key_padding_mask, (b, h, l, s), scores.dtype)
        weights = scores.softmax(dim=-1)
        out = F.dropout(weights, self.dropout, self.training) @ v  # (B, H, L, d)
        out = self.out_proj(out.transpose(1, 2).reshape(b, l, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def unroll_attention(model: nn.Module) -> nn.Module:
    """`model` itself when it holds no `nn.MultiheadAttention`; else a copy in which each is an
    `UnrolledAttention` (the model given is not changed)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not names:
        return model
    if "" in names:
        return UnrolledAttention(model)
    unrolled = copy.deepcopy(model)
    for name in names:
        unrolled.set_submodule(name, UnrolledAttention(unrolled.get_submodule(name)))
    return unrolled
