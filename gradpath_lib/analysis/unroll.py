"""Modules that compute with weights no traced graph sees, written out as the Linear layers they
compute with, so that the gradient path analysis can see them.

`nn.MultiheadAttention` keeps its query, key and value projections as bare parameters (one
`in_proj_weight` for all three) and calls one fused function, so neither torch.fx nor a forward
hook sees a weighted layer inside it. An `UnrolledAttention` holds `q_proj`, `k_proj`, `v_proj` and
`out_proj` Linear layers with copies of its weights, and the same heads, scaling, masks and softmax.

`nn.RNN`, `nn.LSTM` and `nn.GRU` (and their cells) run their whole recurrence in one fused kernel.
An `UnrolledRecurrent` runs it step by step: per layer and direction, the input-to-hidden Linear
`ih_l<k>` on the whole sequence at once and the hidden-to-hidden Linear `hh_l<k>` once per time
step (`hh_l0@t` is its call at step t), with the gates of PyTorch's equations (and an LSTM's
projection `hr_l<k>`). The hidden state of step t reaches step t+1 through `hh` (a step) and an
LSTM's cell state through its gates only (no step), so the timestamps of a step's input grow with
its distance from the output read: the analysis sees the gradient path through time.

`unroll_modules(model)` returns a copy of `model` in which every such module is unrolled; the copy
computes what the original does (tests check outputs, attention weights and final states). The
analysis reports the Linear layers as positions named `<module>.q_proj`, `<module>.hh_l0`, ...
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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


@contextlib.contextmanager
def unfused_attention() -> Iterator[None]:
    """Attention computed unfused while open. PyTorch's Transformer layers are kept off their fused
    fast path: in eval mode without gradients, `nn.TransformerEncoderLayer` would read its
    attention's bare `in_proj_weight` and run one fused kernel, past the unrolled projections. And
    `scaled_dot_product_attention` runs its math kernel, whose backward is the exact derivative:
    a fused one leaves rounding noise where the gradient is exactly zero (over a single key, the
    softmax is 1 and passes none), which the measured spectrum would take for a path."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def linear_copy(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding copies of `weight` (out, in) and `bias`."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


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
        self.q_proj, self.k_proj, self.v_proj = (linear_copy(w, b) for w, b in zip(weights, biases))
        self.out_proj = linear_copy(attention.out_proj.weight, attention.out_proj.bias)
        self.embed_dim, self.num_heads, self.head_dim = e, attention.num_heads, attention.head_dim
        self.batch_first, self.dropout = attention.batch_first, attention.dropout
        self.training = attention.training

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


RECURRENT = (nn.RNNBase, nn.RNNCellBase)


def _cell_mode(cell: nn.RNNCellBase) -> str:
    """The `mode` an nn.RNNBase of this cell's kind has: LSTM, GRU, RNN_TANH or RNN_RELU."""
    if isinstance(cell, nn.LSTMCell):
        return "LSTM"
    if isinstance(cell, nn.GRUCell):
        return "GRU"
    return f"RNN_{cell.nonlinearity.upper()}"


def recurrent_step(mode: str, gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor,
                   c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of PyTorch's recurrent equations: (new hidden state, new cell state or None) from
    the input's gate pre-activations `gx`, the hidden state's `gh`, and the states `h`, `c`."""
    if mode == "LSTM":
        i, f, g, o = (gx + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        x_r, x_z, x_n = gx.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h, None
    return (torch.tanh(gx + gh) if mode == "RNN_TANH" else torch.relu(gx + gh)), None


class UnrolledRecurrent(nn.Module):
    """The computation of one `nn.RNN`, `nn.LSTM` or `nn.GRU`, step by step, with its weights as
    Linear layers: `ih_l<k>[_reverse]`, `hh_l<k>[_reverse]` and, for an LSTM with `proj_size`,
    `hr_l<k>[_reverse]`."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.mode, self.num_layers, self.batch_first = rnn.mode, rnn.num_layers, rnn.batch_first
        self.bidirectional, self.suffixes = rnn.bidirectional, ("", "_reverse") if rnn.bidirectional else ("",)
        self.input_size, self.hidden_size, self.proj_size = rnn.input_size, rnn.hidden_size, rnn.proj_size
        self.dropout, self.training = rnn.dropout, rnn.training
        for layer in range(rnn.num_layers):
            for suffix in self.suffixes:
                name = f"l{layer}{suffix}"
                for kind in ("ih", "hh"):
                    bias = getattr(rnn, f"bias_{kind}_{name}") if rnn.bias else None
                    self.add_module(f"{kind}_{name}", linear_copy(getattr(rnn, f"weight_{kind}_{name}"), bias))
                if rnn.proj_size:
                    self.add_module(f"hr_{name}", linear_copy(getattr(rnn, f"weight_hr_{name}"), None))

    def _run(self, name: str, xs: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
             reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One layer in one direction over `xs` (B, L, in): (outputs (B, L, out), last h, last c)."""
        gx = getattr(self, f"ih_{name}")(xs)  # every step's input gates at once
        hh, steps = getattr(self, f"hh_{name}"), range(xs.shape[1])
        outputs: list[torch.Tensor] = [xs] * xs.shape[1]
        for t in reversed(steps) if reverse else steps:
            h, c = recurrent_step(self.mode, gx[:, t], hh(h), h, c)
            if self.proj_size:
                h = getattr(self, f"hr_{name}")(h)
            outputs[t] = h
        return torch.stack(outputs, 1), h, c

    def forward(self, input: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        """As the module's forward: (output, h_n), or (output, (h_n, c_n)) for an LSTM."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise GradpathError("gradient path analysis reads a recurrent module's padded tensor input, not a PackedSequence")
        batched = input.dim() == 3
        xs = input if batched and self.batch_first else input.transpose(0, 1) if batched else input.unsqueeze(0)
        lstm, d, b = self.mode == "LSTM", len(self.suffixes), xs.shape[0]
        out_size = self.proj_size or self.hidden_size
        if hx is None:
            h0 = xs.new_zeros(self.num_layers * d, b, out_size)
            c0 = xs.new_zeros(self.num_layers * d, b, self.hidden_size) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1) if lstm else None
        last_h: list[torch.Tensor] = []
        last_c: list[torch.Tensor] = []
        for layer in range(self.num_layers):
            if layer:
                xs = F.dropout(xs, self.dropout, self.training)
            outputs = []
            for direction, suffix in enumerate(self.suffixes):
                k = layer * d + direction
                out, h, c = self._run(f"l{layer}{suffix}", xs, h0[k], c0[k] if lstm else None, reverse=direction == 1)
                outputs.append(out)
                last_h.append(h)
                if lstm:
                    last_c.append(c)
            xs = torch.cat(outputs, -1) if d == 2 else outputs[0]
        h_n = torch.stack(last_h, 0)
        c_n = torch.stack(last_c, 0) if lstm else None
        if batched:
            output = xs if self.batch_first else xs.transpose(0, 1)
        else:
            output, h_n, c_n = xs.squeeze(0), h_n.squeeze(1), c_n.squeeze(1) if lstm else None
        return output, ((h_n, c_n) if lstm else h_n)


class UnrolledCell(nn.Module):
    """The computation of one `nn.RNNCell`, `nn.LSTMCell` or `nn.GRUCell` (one step), with its
    weights as the Linear layers `ih` and `hh`."""

    def __init__(self, cell: nn.RNNCellBase):
        super().__init__()
        self.mode, self.input_size, self.hidden_size = _cell_mode(cell), cell.input_size, cell.hidden_size
        self.ih = linear_copy(cell.weight_ih, cell.bias_ih if cell.bias else None)
        self.hh = linear_copy(cell.weight_hh, cell.bias_hh if cell.bias else None)

    def forward(self, input: torch.Tensor, hx: Any = None) -> Any:
        """As the cell's forward: h', or (h', c') for an LSTM cell."""
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        lstm = self.mode == "LSTM"
        if hx is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
            c = x.new_zeros(x.shape[0], self.hidden_size) if lstm else None
        else:
            h, c = hx if lstm else (hx, None)
            if not batched:
                h, c = h.unsqueeze(0), c.unsqueeze(0) if lstm else None
        h, c = recurrent_step(self.mode, self.ih(x), self.hh(h), h, c)
        if not batched:
            h, c = h.squeeze(0), c.squeeze(0) if lstm else None
        return (h, c) if lstm else h


def _unrolled(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.MultiheadAttention):
        return UnrolledAttention(module)
    return UnrolledRecurrent(module) if isinstance(module, nn.RNNBase) else UnrolledCell(module)


def unroll_modules(model: nn.Module) -> nn.Module:
    """`model` itself when it holds no `nn.MultiheadAttention` and no recurrent module (`nn.RNN`,
    `nn.LSTM`, `nn.GRU` or a cell); else a copy in which each is unrolled (the model given is not
    changed)."""
    names = [name for name, m in model.named_modules() if isinstance(m, (nn.MultiheadAttention, *RECURRENT))]
    if not names:
        return model
    if "" in names:
        return _unrolled(model)
    unrolled = copy.deepcopy(model)
    for name in names:
        unrolled.set_submodule(name, _unrolled(unrolled.get_submodule(name)))
    return unrolled
