"""Trace a model into the DAG of its weighted layers at channel granularity.

`tracing.symbolic_trace` gives the model's graph (torch.fx's, or one recorded while the model
runs, for control flow on shapes); running it once on a small input (in eval mode, without
gradients) gives every tensor's shape, and a `ChannelMap` per tensor records
which producer channels it carries. Weighted layers are the modules in `WEIGHTED_MODULES`
(convolutions, linear layers and embeddings, their subclasses included: fx keeps them whole);
each call of one is a *position* (a module called at two places shares its weights but has two
positions; so do modules whose weight is one tied Parameter), and so is each product `x @ W`
(also `torch.addmm(bias, x, W)` and an einsum that is x @ W) by a bare 2-d Parameter W and each
`F.linear` / `F.conv*d` / `F.embedding` on a Parameter (`layer_calls.weight_owners` names them); a parameter used as a
tensor elsewhere (LayerScale, a position table) is a constant, not a position. An integer input is token ids: it
carries no gradient, and an `nn.Embedding` reading it (or position ids computed from constants)
is a weighted layer with nothing upstream; indexing a plain parameter with it is refused. So is any
weighted layer reading constants alone (a Fourier position encoding projected by a conv). A Linear
whose features lie along a dim that holds no channels (an MLP-Mixer's token-mixing Linear) acts
on each channel on its own; a Conv1d sliding along the channels (ECA's gate) reads a window of them.
BatchNorm (also `F.batch_norm`, which timm's norm layers call), activations, pooling, upsampling, dropout,
identity and flattening pass channels through. Channel slices, `torch.cat`, `split`/`chunk`
along the channel axis, elementwise `+ - * /` (including partial adds built from slices and a
cat) and multiplication by a constant channel mask (a buffer or parameter) are tracked;
operations that mix channels without weights (LayerNorm, RMSNorm or softmax over the channels, GroupNorm
within its groups, means and variances over the channels, `@` / matmul and
scaled_dot_product_attention) make every channel they mix depend on all of them, without adding
a weighted layer to any path. A reshape may spread the channels over several dims (attention
heads, a YOLO head's anchors x outputs, heads folded into the batch; `torch.stack` adds its new dim
to them), or fold them with other dims (space-to-depth, MobileViT's patches): it is followed
element by element (`_reshaped`). Slices, `unbind`, reductions, softmaxes and matmuls then act on
each of those dims exactly (a matmul mixes the channels of its contracted dim within the others,
and keeps both operands' other channel dims: XCiT's q k^T is an outer product of channels; a
softmax over the radix of split attention mixes only along it). Ops that reorder channels
carry each channel's sources with it: a transpose of two channel dims read back by a reshape (a
channel shuffle, also `nn.ChannelShuffle` / `F.channel_shuffle`), `torch.flip`, strided slices;
PixelShuffle makes each output channel depend on its r^2 input channels, PixelUnshuffle the reverse,
F.fold each channel on its window's channels;
pads, rolls, copies (expand, repeat, stack) and cumulative sums follow `layout_ops`; comparisons,
rounding and integer casts depend on their input without a gradient (a detached map);
`op_tables` lists every op followed, by kind;
each `nn.MultiheadAttention` is first unrolled into its Linear projections, and each `nn.RNN`,
`nn.LSTM`, `nn.GRU` (or cell) into its input and hidden Linear layers step by step (`unroll`);
`.detach()` and `torch.detach(x)` cut the gradient edge; `permute`/`transpose` move the channel
axis (as a detection head does before its output; each position records the axis of its output
channels). Tensors computed from constants alone carry no gradient path; a constant
concatenated to traced tensors (a class token) adds channels without one. Channels are followed,
and positions along the other dims only where they differ: a cat along such a dim of parts that
carry the same channels gives them to every position, while parts that differ (a learned class
token joined to the patch tokens) make the positions along it channel slots of their own, so a
model that reads some positions alone (the class token) is followed exactly. A weighted layer
reading such slots (or heads folded into the batch) gets a copy of its output channels for each
distinct input along them (`Position.copies`; a convolution's window merges the spatial ones),
and `paths` reports each channel with the union of its copies. Attention's masks are not read:
every query mixes every key.
A grouped convolution (`groups` > 1, depthwise included) is followed group by group: the input
channels of its group g feed only the output channels of group g (each `Edge` records the output
channels its input channels reach), so an input channel gets the timestamps of the output channels
it feeds, not of all of them.
An item assignment into a traced tensor (`x[:, :, 1:] = v`, slices and ints: MViTv2's relative
position term) gives x, from then on, v's channels in the region written and its own elsewhere,
joined dim by dim as a cat is. An in-place method (`x.add_(y)`, `x.mul_(mask)`, `x.copy_(y)`,
`x.zero_()`) gives x the map of its out-of-place form. Either change reaches every later use of
that tensor, under any node that holds it (an nn.Identity's output); a change of a tensor that
another one still to be used views (which changes too), or of the model's parameter or buffer by
a traced value, is refused. fx records `z += w` as `z = z + w`, so a tensor changed that way under
another name would be missed: the traced graph's output is checked against the model's own, and
a difference is refused (both runs draw the same random numbers: a VAE's `randn_like` noise, like
`zeros_like` and `new_zeros`, is a constant). Anything else that may move gradient between channels raises
`GradpathError` naming it.

fx records neither autograd's grad mode nor custom backward passes, so after tracing the model
runs once more with gradients enabled and its autograd graph is checked against the traced one
(`autograd_check`). The graph built is a `layer_graph.LayerGraph`.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import GradpathError
from .channels import (
    INPUT,
    ChannelMap,
    Piece,
    Source,
    broadcast,
    channel_order,
    concat,
    consumed_ranges,
    summed_over,
    detach,
    fresh,
    in_dim_order,
    joined,
    merge,
    is_uniform,
    first_alike,
    laid_out,
    line_up,
    mix,
    mix_groups,
    mix_sub_axes,
    reordered,
    select,
    slice_channels,
    sourceless,
    take,
    producers,
    union_layout,
    with_unit,
    zero_channels,
)
from .layout_ops import NotFollowed, cumulative, expanded, gated, padded, repeated, rolled, stacked, windowed
from .op_tables import (
    ALONG_DIM,
    ADDED_PRODUCTS,
    ARG_REDUCTIONS,
    CAST_LIKE,
    CHANNELWISE_FUNCTIONS,
    CHANNELWISE_METHODS,
    CHANNELWISE_MODULES,
    CHANNEL_SHUFFLES,
    CONCATS,
    CUMULATIVES,
    DETACHES,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    EMBEDDINGS,
    EXPANDS,
    FACTORIES,
    FLIPS,
    FIXED_FILTERS,
    FUNCTIONAL_LAYERS,
    FUNCTIONAL_WEIGHTED,
    INDEXING,
    IN_PLACE_METHODS,
    MATMULS,
    MAX_MIN,
    MULTIPLY,
    NO_GRADIENT_FUNCTIONS,
    NO_GRADIENT_METHODS,
    OVERWRITES,
    PERMUTES,
    PIXEL_SHUFFLES,
    REDUCTIONS,
    REDUCTION_DIM,
    REPEATS,
    RESHAPES,
    ROLLS,
    SOFTMAX_MODULES,
    SORTS,
    SPLITS,
    TAKEN_ALONG,
    TOP_K,
    TRANSPOSES,
    UNBINDS,
    WEIGHTED_MODULES,
)
from .autograd_check import check_autograd
from .layer_calls import einsum_form, einsum_subscripts, functional_weight, weight_owners
from .layer_graph import LOSS, Edge, LayerGraph, Position, tensors_in
from .tracing import symbolic_trace
from .unroll import unfused_attention, unroll_modules

TRACE_BATCH = 1  # batch size of the shape-propagation run (in eval mode, so BatchNorm accepts 1)

class _Constant:
    """A tensor that does not depend on the input (a buffer, a parameter used as a tensor);
    `trained` when it is or is computed from a Parameter that takes gradient."""

    def __init__(self, value: torch.Tensor, trained: bool = False):
        self.value, self.trained = value, trained


def _trained(value: Any) -> bool:
    """Whether `value` (a traced value, or a tuple, list or dict of them) holds a trained constant."""
    if isinstance(value, _Constant):
        return value.trained
    if isinstance(value, (tuple, list)):
        return any(_trained(v) for v in value)
    if isinstance(value, dict):
        return any(_trained(v) for v in value.values())
    return False


SUPPORTED_AT = ("the ops it follows are listed in gradpath_lib/analysis/op_tables.py (SUPPORTED) and the book "
                "chapter book/gradient_paths.md, \"Your own model\"")


def _unsupported(node: fx.Node, what: str) -> GradpathError:
    """The error for an op the analysis cannot follow, pointing to the list of those it can."""
    return GradpathError(f"gradient path analysis does not support {what} (graph node {node.name!r}); {SUPPORTED_AT}")


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether tensors `a` and `b` share an element of memory (views of one storage may not)."""
    if a.device != b.device or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    if a.element_size() != b.element_size():
        return True  # views as another dtype: taken to overlap
    used = torch.zeros(a.untyped_storage().nbytes() // a.element_size(), dtype=torch.bool, device=a.device)
    used.as_strided(a.shape, a.stride(), a.storage_offset()).fill_(True)
    return bool(used.as_strided(b.shape, b.stride(), b.storage_offset()).any())


def _dim_arg(node: fx.Node, index: int, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get("dim", default)


def _normalize_dims(dims: Any, ndim: int) -> set[int] | None:
    if dims is None:
        return None
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return {d % ndim for d in dims}


class _ChannelTracer(fx.Interpreter):
    """Runs the traced graph and builds a `LayerGraph` from the channel maps of its tensors."""

    def __init__(self, gm: fx.GraphModule, owners: dict[int, str]):
        super().__init__(gm)
        self.owners = owners  # `layer_calls.weight_owners` of the model traced
        self.extra_traceback = False  # our errors are complete; fx's extra context is slow to build
        self.values: dict[fx.Node, Any] = {}
        self.layer_graph = LayerGraph()
        self.calls: Counter[str] = Counter()
        self.shapes: dict[fx.Node, torch.Size] = {}
        self.weight_owners: dict[int, str] = {}  # id of a weight Parameter -> first module using it

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and n.target is operator.setitem:
            return self._assign(n)
        if n.op == "call_method" and (n.target in IN_PLACE_METHODS or n.target in OVERWRITES):
            return self._in_place(n)
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n] = result.shape
        if n.op == "output":
            self._consume(LOSS, n.args[0], n)
        elif not tensors_in(result):
            self.values[n] = None
        else:
            try:
                self.values[n] = self._channels(n, result)
            except NotFollowed as err:
                raise _unsupported(n, str(err)) from None
        return result

    # --- helpers ---------------------------------------------------------------------------
    def _value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values[arg]
        if isinstance(arg, (tuple, list)):
            return type(arg)(self._value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._value(v) for k, v in arg.items()}
        return arg

    def _input_map(self, n: fx.Node) -> ChannelMap:
        value = self._value(n.args[0])
        if not isinstance(value, ChannelMap):
            raise _unsupported(n, f"{n.target} applied to something other than a traced tensor")
        return value

    def _consume(self, consumer: int, arg: Any, n: fx.Node, out_channels: int = 1,
                 blocks: list[tuple[int, int, int, int]] | None = None) -> None:
        """Record the edges from everything `arg` carries into `consumer` (the loss, or a position
        with `out_channels` outputs). `blocks` lists (lo, hi, out_lo, out_hi): input channels
        [lo, hi) feed output channels [out_lo, out_hi) (a grouped conv's groups); default: all feed all."""
        value = self._value(arg)
        maps = _flatten_maps(value)
        for m in maps:
            if blocks is None or is_uniform(m):  # a uniform map feeds every block the same channels
                parts = [(m, 0, out_channels)]
            else:
                parts = [(slice_channels(m, lo, hi), out_lo, out_hi) for lo, hi, out_lo, out_hi in blocks]
            self.layer_graph.edges += [Edge(consumer, *r, lo, hi) for part, lo, hi in parts
                                       for r in consumed_ranges(part)]
        if consumer != LOSS:
            self.layer_graph.aggregated[consumer] = len(set().union(*(producers(m) for m in maps)))

    # --- dispatch --------------------------------------------------------------------------
    def _channels(self, n: fx.Node, result: Any) -> Any:
        if n.op == "placeholder":
            if not isinstance(result, torch.Tensor) or result.ndim < 2:
                raise _unsupported(n, "an input that is not one (N, C, ...) tensor")
            if not result.dtype.is_floating_point:  # token ids: alike along dim 1, without gradient
                return replace(detach(broadcast(fresh(INPUT, 1), result.shape[1])), loose=True)
            return fresh(INPUT, result.shape[1])
        if n.op == "get_attr":
            return _Constant(result, isinstance(result, nn.Parameter) and result.requires_grad)
        if n.op == "call_module":
            return self._module(n, self.module.get_submodule(n.target), result)
        target = n.target if n.op == "call_function" else str(n.target)
        if (not _flatten_maps(self._operands(n)) or target in FACTORIES
                or target in CAST_LIKE and isinstance(self._value(n.args[0]), _Constant)):
            # from constants (buffers, parameters) alone, shaped or cast like a traced tensor
            return _Constant(result, _trained(self._operands(n)))
        if target == operator.getitem:
            return self._getitem(n, result)
        if target is getattr and isinstance(self._value(n.args[0]), tuple):
            return self._field(n, result)
        if target in ELEMENTWISE_FUNCTIONS or target in ELEMENTWISE_METHODS:
            return self._elementwise(n, target, result)
        if target in CONCATS:
            return self._concat(n, result)
        if target in SPLITS:
            return self._split(n, result)
        if target in UNBINDS:
            return self._unbind(n, result)
        if target is F.scaled_dot_product_attention:
            return self._attention(n, result)
        if target in RESHAPES:
            return self._reshape(n, result)
        if target in REDUCTIONS:
            return self._reduce(n, result)
        if target in PERMUTES or target in TRANSPOSES:
            return self._permute(n, result)
        if target in MATMULS:
            if (layer := self._parameter_product(n, n.args[0], n.args[1])) is not None:
                return self._weighted(n, layer, result, self.owners[id(layer.weight)])
            return self._matmul(n, result)
        if target in ADDED_PRODUCTS:
            return self._added_product(n, result)
        if target is torch.einsum:
            return self._einsum(n, result)
        if target in ALONG_DIM:
            index, default = ALONG_DIM[target]
            return self._normalized_along(n, _dim_arg(n, index, default), result)
        if target is F.layer_norm or target is F.rms_norm:
            return self._layer_norm(n, n.args[1] if len(n.args) > 1 else n.kwargs["normalized_shape"], result)
        if target is F.group_norm:
            return self._group_norm(n, n.args[1] if len(n.args) > 1 else n.kwargs["num_groups"], result)
        if target in DETACHES:
            return detach(self._input_map(n))
        if target in NO_GRADIENT_FUNCTIONS or target in NO_GRADIENT_METHODS:
            return detach(self._elementwise(n, target, result))
        if target in MAX_MIN:
            return self._max_min(n, target, result)
        if target in ARG_REDUCTIONS:
            return detach(self._reduce(n, result))
        if target in TOP_K:
            values = self._taken_along(n, _dim_arg(n, 2, -1), result[0])
            return values, detach(values)
        if target in TAKEN_ALONG:
            return self._taken_along(n, _dim_arg(n, TAKEN_ALONG[target], None), result)
        if target in SORTS:
            values = self._mixed_along(n, _dim_arg(n, 1, -1), result[0])
            return values, detach(values)
        if target in INDEXING:
            return self._indexing(n, INDEXING[target], result)
        if target in EXPANDS:
            return expanded(self._input_map(n), self.shapes[n.args[0]], result.shape)
        if target in REPEATS:
            before = self.shapes[n.args[0]]
            padded_before = (1,) * (result.ndim - len(before)) + tuple(before)
            return repeated(self._input_map(n), len(before), [a // b for a, b in zip(result.shape, padded_before)])
        if target in CUMULATIVES:
            return cumulative(self._input_map(n), _dim_arg(n, 1, None) % result.ndim)
        if target is torch.stack:
            parts = self._value(n.args[0])
            if not all(isinstance(p, ChannelMap) for p in parts):
                raise _unsupported(n, "stacking a constant with traced tensors")
            return stacked(parts, _dim_arg(n, 1, 0) % result.ndim)
        if target is F.local_response_norm:
            return self._local_response_norm(n, n.args[1] if len(n.args) > 1 else n.kwargs["size"])
        if target is F.grid_sample:
            return self._grid_sample(n, result)
        if target is F.glu:
            return gated(self._input_map(n), _dim_arg(n, 1, -1) % result.ndim)
        if target is F.pad:
            return padded(self._input_map(n), result.ndim, self._concrete_arg(n, 1, "pad"))
        if target in ROLLS:
            shifts = self._concrete_arg(n, 1, "shifts")
            dims = n.args[2] if len(n.args) > 2 else n.kwargs.get("dims")
            if dims is None:
                raise _unsupported(n, "torch.roll without dims (it rolls the flattened tensor)")
            return rolled(self._input_map(n), result.ndim, shifts, dims)
        if target in FLIPS:
            return self._flip(n)
        if target == "unfold":  # Tensor.unfold: sliding windows along one dim, in a new last dim
            if self._concrete_arg(n, 1, "dimension") % result.ndim in {d for d, _ in self._input_map(n).layout}:
                raise _unsupported(n, "Tensor.unfold along the channels")
            return self._input_map(n)
        if target is F.unfold:
            return self._im2col(n, result)
        if target is F.fold:
            return self._col2im(n, result)
        if target in CHANNEL_SHUFFLES:
            return self._channel_shuffle(n, n.args[1] if len(n.args) > 1 else n.kwargs["groups"])
        if target in PIXEL_SHUFFLES:
            factor = n.args[1] if len(n.args) > 1 else next(iter(n.kwargs.values()))
            return self._pixel_shuffle(n, factor, PIXEL_SHUFFLES[target])
        if target in CHANNELWISE_FUNCTIONS or target in CHANNELWISE_METHODS:
            return self._channelwise(n, result)
        name = getattr(target, "__name__", str(target))
        if target in FIXED_FILTERS and self._fixed_weight(n) is not None:
            return self._fixed_filter(n, result)
        if target in FUNCTIONAL_LAYERS and (layer := self._functional_layer(n, target)) is not None:
            return self._weighted(n, layer, result, self.owners[id(layer.weight)])
        if target in FUNCTIONAL_WEIGHTED:
            raise _unsupported(n, f"F.{name} on a weight tensor that is no Parameter of the model (one computed in "
                                  "forward): the analysis names a weighted layer by the Parameter it multiplies by")
        raise _unsupported(n, f"the {n.op.replace('_', ' ')} {name!r}")

    def _im2col(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        """F.unfold / nn.Unfold: channel c * K + k of the result is channel c at window offset k."""
        m = self._input_map(n)
        if m.layout != ((1, m.channels),) or m.unit != 1:
            raise _unsupported(n, "F.unfold of channels that are not along dim 1")
        window = result.shape[1] // m.channels
        return laid_out(reordered(m, [j // window for j in range(result.shape[1])]), ((1, result.shape[1]),))

    def _col2im(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        """F.fold / nn.Fold: channel c of the result sums channels c * K ... c * K + K - 1 (its K
        window offsets) over the positions they overlap (VOLO's outlook attention)."""
        m = self._input_map(n)
        if m.layout != ((1, m.channels),) or m.unit != 1:
            raise _unsupported(n, "F.fold of channels that are not along dim 1")
        return mix_groups(m, m.channels // result.shape[1], 1)

    def _fixed_weight(self, n: fx.Node) -> torch.Tensor | None:
        """The weight of a functional conv when it is a constant that takes no gradient (a buffer),
        and is not computed from a Parameter that does."""
        weight = self._value(n.args[1] if len(n.args) > 1 else n.kwargs.get("weight"))
        if isinstance(weight, _Constant) and not weight.trained and not weight.value.requires_grad:
            return weight.value
        return None

    def _fixed_filter(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        """F.conv* with a fixed filter (an anti-aliasing blur held in a buffer): it mixes the channels
        of each of its groups without a weight to train, so it adds no timestamp."""
        m = self._input_map(n)
        if m.layout != ((1, m.channels),) and not is_uniform(m):
            raise _unsupported(n, f"F.{n.target.__name__} with a fixed filter reading channels off dim 1")
        groups = n.args[6] if len(n.args) > 6 else n.kwargs.get("groups", 1)
        if groups == m.channels == result.shape[1]:
            return m
        return mix_groups(m, m.channels // groups, result.shape[1] // groups)

    def _module(self, n: fx.Node, module: nn.Module, result: Any) -> Any:
        if isinstance(module, WEIGHTED_MODULES):
            return self._weighted(n, module, result)
        if isinstance(module, CHANNELWISE_MODULES):
            return self._channelwise(n, result)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            return self._layer_norm(n, module.normalized_shape, result)
        if isinstance(module, nn.GroupNorm):
            return self._group_norm(n, module.num_groups, result)
        if isinstance(module, SOFTMAX_MODULES):
            return self._normalized_along(n, module.dim, result)
        if isinstance(module, (nn.Flatten, nn.Unflatten)):
            return self._reshape(n, result)
        if isinstance(module, (nn.LocalResponseNorm, nn.CrossMapLRN2d)):
            return self._local_response_norm(n, module.size)
        if isinstance(module, nn.GLU):
            return gated(self._input_map(n), module.dim % result.ndim)
        if isinstance(module, nn.Unfold):
            return self._im2col(n, result)
        if isinstance(module, nn.Fold):
            return self._col2im(n, result)
        if isinstance(module, nn.ChannelShuffle):
            return self._channel_shuffle(n, module.groups)
        if isinstance(module, (nn.PixelShuffle, nn.PixelUnshuffle)):
            shuffle = isinstance(module, nn.PixelShuffle)
            return self._pixel_shuffle(n, module.upscale_factor if shuffle else module.downscale_factor, shuffle)
        raise _unsupported(n, f"the module {n.target!r} of type {type(module).__name__}")

    def _functional_layer(self, n: fx.Node, target: Any) -> nn.Module | None:
        """For `F.linear` / `F.conv*d` / `F.embedding` on a Parameter of the model (`layer_calls`):
        a module of the function's kind, on the meta device, holding that weight, so that the call
        is a position of the weight's layer. None for a weight computed from the model's."""
        weight = self._value(functional_weight(n.args, n.kwargs))
        if not (isinstance(weight, _Constant) and id(weight.value) in self.owners):
            return None
        w = weight.value
        if target is F.embedding:
            view: nn.Module = nn.Embedding(*w.shape, device="meta")
        elif isinstance(self._value(n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")), ChannelMap):
            raise _unsupported(n, f"F.{target.__name__} with a bias computed from the input")
        elif target is F.linear:
            view = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        else:
            hyper = {k: self._value(n.args[3 + i] if len(n.args) > 3 + i else n.kwargs.get(k, default))
                     for i, (k, default) in enumerate({"stride": 1, "padding": 0, "dilation": 1, "groups": 1}.items())}
            conv = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}[target]
            view = conv(w.shape[1] * hyper["groups"], w.shape[0], tuple(w.shape[2:]), **hyper, bias=False, device="meta")
        view.weight = w
        return view

    def _parameter_product(self, n: fx.Node, a: Any, b: Any) -> nn.Module | None:
        """For a @ W with W a 2-D Parameter of the model (`layer_calls.weight_argument`): an
        nn.Linear on the meta device holding W, so that the product is a position of W's layer.
        None when neither operand is a Parameter; refused with the Parameter on the left."""
        left, right = self._value(a), self._value(b)
        if isinstance(left, _Constant) and id(left.value) in self.owners and isinstance(right, ChannelMap):
            raise _unsupported(n, f"a product with the Parameter {self.owners[id(left.value)]!r} on the left "
                                  "(the analysis reads W as a Linear in x @ W: write x @ W, or use nn.Linear)")
        if not (isinstance(right, _Constant) and id(right.value) in self.owners and isinstance(left, ChannelMap)):
            return None
        w = right.value
        if w.ndim != 2:
            raise _unsupported(n, f"a product with the {w.ndim}-d Parameter {self.owners[id(w)]!r} (a 2-d one is a Linear)")
        view = nn.Linear(w.shape[0], w.shape[1], bias=False, device="meta")
        view.weight = w  # (in, out), not a Linear's (out, in): it only names the layer
        return view

    def _weighted(self, n: fx.Node, module: nn.Module, result: torch.Tensor, name: str | None = None,
                  inp: Any = None) -> ChannelMap:
        """A call of the weighted layer `module` (named `name`, by default the node's target) on the
        node's argument `inp` (by default its first)."""
        name = name or n.target
        inp = n.args[0] if inp is None else inp
        value = self._value(inp)
        if isinstance(module, EMBEDDINGS):  # reads integer ids: a forward dependency without gradient
            if isinstance(value, ChannelMap) and consumed_ranges(value):
                raise _unsupported(n, f"Embedding {name!r} reading a tensor that carries gradient")
            axis = result.ndim - 1
        elif isinstance(value, _Constant):  # a layer reading constants (a position encoding): nothing upstream
            axis = result.ndim - 1 if isinstance(module, nn.Linear) else 1
        else:
            if not isinstance(value, ChannelMap):
                raise _unsupported(n, f"{n.target} applied to something other than a traced tensor")
            m = value
            axis = result.ndim - 1 if isinstance(module, nn.Linear) else 1
            # a uniform map (after a LayerNorm) may lie along any dim: it keeps its own if the layer's features do not
            along = (not m.loose and m.channels > 1 and len(m.layout) == 1 and m.axis != axis
                     and m.axis < result.ndim and result.shape[m.axis] == m.channels)
            if len(m.layout) > 1 and not is_uniform(m) and axis in {d for d, _ in m.layout}:
                return self._weighted_copies(n, name, module, m, result, axis)
            if m.layout != ((axis, m.channels),) and (not is_uniform(m) or along):
                return self._weighted_along(n, name, module, m, result, inp)
        pos = self._position(name, module, result, axis)
        groups, blocks = getattr(module, "groups", 1), None
        if groups > 1 and isinstance(value, ChannelMap):  # group g of the input feeds group g of the output
            size, out = value.channels // groups, pos.out_channels // groups
            blocks = [(g * size, (g + 1) * size, g * out, (g + 1) * out) for g in range(groups)]
        self._consume(pos.id, inp, n, pos.out_channels, blocks)
        return fresh(pos.id, pos.out_channels, axis)

    def _position(self, name: str, module: nn.Module, result: torch.Tensor, axis: int, copies: int = 1) -> Position:
        """A new position of `module` (named `name`), whose output channels lie along `axis` of `result`."""
        weight = getattr(module, "weight", None)  # a tensor rebuilt at each access (a parametrization) is not tied
        owner = self.weight_owners.setdefault(id(weight) if isinstance(weight, nn.Parameter) else id(module), name)
        pos = Position(len(self.layer_graph.positions), name, self.calls[name], result.shape[axis],
                       type(module).__name__, axis, owner, result.ndim, copies)
        self.calls[name] += 1
        self.layer_graph.positions.append(pos)
        return pos

    def _weighted_copies(self, n: fx.Node, name: str, module: nn.Module, m: ChannelMap, result: torch.Tensor,
                         axis: int) -> ChannelMap:
        """A weighted layer whose input channels lie along its feature dim and other dims (token
        positions told apart by a class token, heads folded into the batch). A Linear acts on each
        index of the other dims on its own, a convolution on each index of the batch dim (its window
        mixes the spatial ones): each distinct input along them reaches a copy of the layer's output
        channels of its own (`Position.copies`), and the output keeps those dims."""
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            raise _unsupported(n, f"{type(module).__name__} {name!r} reading channels from several dims")
        m = in_dim_order(m)
        for k in reversed(range(len(m.layout))):  # a convolution's window mixes the positions along space
            d, size = m.layout[k]
            if d not in (0, axis) and not isinstance(module, nn.Linear):
                rest = m.layout[:k] + m.layout[k + 1:]
                m = merge([laid_out(select(m, k, i, i + 1), rest) for i in range(size)])
        c_in, c_out = m.layout[-1][1], result.shape[axis]
        runs = [slice_channels(m, r * c_in, (r + 1) * c_in) for r in range(m.channels // c_in)]
        copy_of: dict[tuple, int] = {}
        copies = [copy_of.setdefault(run.pieces, len(copy_of)) for run in runs]
        pos = self._position(name, module, result, axis, len(copy_of))
        groups = getattr(module, "groups", 1)
        size, out = c_in // groups, c_out // groups
        for pieces, j in copy_of.items():
            run = runs[copies.index(j)]
            for g in range(groups):  # group g of the input feeds group g of the output
                part = slice_channels(run, g * size, (g + 1) * size) if groups > 1 else run
                self.layer_graph.edges += [Edge(pos.id, *r, j * c_out + g * out, j * c_out + (g + 1) * out)
                                           for r in consumed_ranges(part)]
        self.layer_graph.aggregated[pos.id] = len(producers(m))
        if len(copy_of) == 1:  # the same input everywhere: so is the output
            return fresh(pos.id, c_out, axis)
        output = ChannelMap(len(runs) * c_out, tuple(
            Piece(r * c_out, (r + 1) * c_out, frozenset({Source(pos.id, j * c_out)})) for r, j in enumerate(copies)))
        return laid_out(output, m.layout[:-1] + ((axis, c_out),))

    def _weighted_along(self, n: fx.Node, layer: str, module: nn.Module, m: ChannelMap,
                        result: torch.Tensor, inp: Any) -> ChannelMap:
        """A weighted layer whose features lie along a dim that holds no channels (an MLP-Mixer's
        token-mixing Linear; ECA's Conv1d sliding along the channels): it acts on each channel on
        its own (the Linear) or on a window of neighbouring ones (the Conv1d), and its output
        keeps the channels on their dim."""
        name = type(module).__name__
        if len(m.layout) != 1:
            where = " and ".join(str(d) for d, _ in m.layout)
            raise _unsupported(n, f"{name} {layer!r} reading channels from dims {where}")
        ((dim, channels),) = m.layout
        if isinstance(module, nn.Linear):
            blocks = [(c, c + 1, c, c + 1) for c in range(channels)]
        elif isinstance(module, nn.Conv1d) and dim == 2 and isinstance(module.padding, tuple):
            (k,), (stride,), (pad,), (dilation,) = module.kernel_size, module.stride, module.padding, module.dilation
            if dilation != 1:
                raise _unsupported(n, f"dilated {name} {layer!r} sliding along the channels")
            blocks = [(max(0, o * stride - pad), min(channels, o * stride - pad + k), o, o + 1)
                      for o in range(result.shape[2])]
        else:
            raise _unsupported(n, f"{name} {layer!r} reading channels from dim {dim}")
        pos = self._position(layer, module, result, dim)
        self._consume(pos.id, inp, n, pos.out_channels, blocks)
        return fresh(pos.id, pos.out_channels, dim)

    def _channelwise(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        m = self._input_map(n)
        if result.ndim != len(self.shapes[n.args[0]]) or any(result.shape[d] != size for d, size in m.layout):
            if is_uniform(m):  # every channel alike: the result is too, along any dim (a pool of a mixed map)
                return _uniform_like(m, result)
            raise _unsupported(n, f"{n.target} changing the channel count")
        return m

    def _index(self, n: fx.Node, index: tuple, ndim: int) -> tuple:
        """`index` with its Ellipsis expanded and trailing full slices added (None adds a dim); an
        index list or constant 1-d integer tensor (one at most, beside slices and None) as a list."""
        used = sum(i is not None and i is not Ellipsis for i in index)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (ndim - used) + index[at + 1:]
        index = index + (slice(None),) * (ndim - sum(i is not None for i in index))
        index = tuple(i.tolist() if isinstance(i, torch.Tensor) and i.ndim == 1 and not i.is_floating_point()
                      and i.dtype != torch.bool else i for i in index)
        lists = [i for i in index if isinstance(i, (list, tuple))]
        if not all(i is None or isinstance(i, (slice, int)) or isinstance(i, (list, tuple))
                   and all(isinstance(j, int) for j in i) for i in index) or len(lists) > 1 \
                or lists and any(isinstance(i, int) for i in index):
            raise _unsupported(n, f"indexing with {index!r} (only slices, ints, None, or one list of ints "
                                  "beside slices)")
        return index

    def _getitem(self, n: fx.Node, result: Any) -> Any:
        container = self._value(n.args[0])
        if isinstance(container, _Constant):
            raise _unsupported(n, "indexing a parameter or buffer with a tensor computed from the input (a "
                                  "table lookup): hold the table in an nn.Embedding, a weighted layer")
        if not isinstance(container, ChannelMap):
            return container[n.args[1]]
        index = self._concrete_arg(n, 1)
        return self._indexed(n, container, index if isinstance(index, tuple) else (index,), result)

    def _concrete_arg(self, n: fx.Node, k: int, name: str = "") -> Any:
        """Argument `k` (or keyword `name`) of `n` as it ran (slice bounds computed from shapes are
        ints); an index tensor that depends on the input is refused (its gradient path would depend
        on the data)."""
        for node in n.all_input_nodes:
            if node is not n.args[0] and isinstance(self.values.get(node), ChannelMap):
                raise _unsupported(n, "indexing with a tensor computed from the input")
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        return args[k] if k < len(args) else kwargs[name]

    def _indexed(self, n: fx.Node, container: ChannelMap, index: tuple, result: Any) -> ChannelMap:
        if is_uniform(container):  # every channel alike: the result is too, along any dim
            return _uniform_like(container, result)
        ndim = len(self.shapes[n.args[0]])
        index = self._index(n, index, ndim)
        subs = {d: k for k, (d, _) in enumerate(container.layout)}
        m, out_of, dim, out = container, {}, 0, 0  # out_of: output dim of each channel dim kept
        for entry in index:
            if entry is None:
                out += 1
                continue
            if dim in subs:
                size = container.layout[subs[dim]][1]
                if isinstance(entry, int):
                    m = select(m, subs[dim], entry % size, entry % size + 1)
                elif isinstance(entry, (list, tuple)):
                    m, out_of[dim] = take(m, subs[dim], [i % size for i in entry]), out
                else:
                    lo, hi, step = entry.indices(size)
                    if step == 1:
                        m = select(m, subs[dim], lo, max(lo, hi))
                    else:
                        m = take(m, subs[dim], range(lo, hi, step))
                    out_of[dim] = out
            dim, out = dim + 1, out + (not isinstance(entry, int))
        layout = tuple((out_of[d], size) for (d, _), (_, size) in zip(container.layout, m.layout) if d in out_of)
        return laid_out(m, layout) if layout else _uniform_like(m, result)

    def _indexing(self, n: fx.Node, op: str, result: torch.Tensor) -> ChannelMap:
        """narrow(x, dim, start, length), select(x, dim, i), index_select(x, dim, index) as indexing."""
        dim = self._concrete_arg(n, 1) % len(self.shapes[n.args[0]])
        if op == "narrow":
            start, length = self._concrete_arg(n, 2), self._concrete_arg(n, 3)
            entry: Any = slice(start, start + length)
        elif op == "select":
            entry = self._concrete_arg(n, 2)
        else:
            entry = self._concrete_arg(n, 2).tolist()
        return self._indexed(n, self._input_map(n), (slice(None),) * dim + (entry,), result)

    def _operands(self, n: fx.Node) -> list[Any]:
        return [self._value(a) for a in n.args] + [self._value(v) for v in n.kwargs.values()]

    def _elementwise(self, n: fx.Node, target: Any, result: torch.Tensor,
                     operands: list[tuple[Any, tuple[int, ...]]] | None = None) -> Any:
        """The map of an elementwise op on `operands` ((map or constant, shape) each; default: n's
        arguments), broadcast to `result`; a constant factor with zeros (a mask) zeroes channels."""
        if operands is None:
            operands = [(self._value(a), self.shapes.get(a)) for a in list(n.args) + list(n.kwargs.values())]
        maps = []
        for v, shape in operands:
            if isinstance(v, ChannelMap):  # a lower-rank operand broadcasts from the right: shift its dims
                lead = result.ndim - len(shape)
                maps.append(in_dim_order(laid_out(v, tuple((d + lead, size) for d, size in v.layout))))
        plain = [m for m in maps if not is_uniform(m) and m.channels > 1]
        layout = union_layout([m.layout for m in plain]) if plain else ((maps[0].axis, result.shape[maps[0].axis]),)
        if layout is None:
            raise _unsupported(n, "an elementwise op on tensors whose channel dims differ in size")
        channels = math.prod(size for _, size in layout)
        lined = [line_up(m, layout) for m in maps]
        if None in lined:
            raise _unsupported(n, "an elementwise op on tensors whose channels lie along different dims")
        merged = merge(lined)
        if target in MULTIPLY:
            for v, _ in operands:
                if isinstance(v, _Constant) and v.value.ndim == result.ndim:
                    dims = [d for d, _ in layout]
                    mask = v.value.expand_as(result).permute(*dims, *(d for d in range(result.ndim) if d not in dims))
                    merged = zero_channels(merged, (mask.reshape(channels, -1) == 0).all(dim=1).tolist())
        return merged

    def _concat(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        """torch.cat along the channels, or along another dim (see `_joined`)."""
        dim = _dim_arg(n, 1, 0) % result.ndim
        parts = [(v, self.shapes[t]) for v, t in zip(self._value(n.args[0]), n.args[0])
                 if self.shapes[t] != (0,) or result.ndim == 1]  # torch.cat skips a 1-d empty tensor (an empty cache)
        return self._joined(n, [v for v, _ in parts], [shape for _, shape in parts], dim)

    def _joined(self, n: fx.Node, values: list[Any], shapes: list[tuple[int, ...]], dim: int) -> ChannelMap:
        """The map of `values` (maps, or constants: None or _Constant) of `shapes` joined along `dim`.
        Parts that carry the same channels give them to every position along that dim; parts that
        differ (a class token joining the patch tokens) make the positions along it channel slots
        of their own, so that a model reading some positions alone (the class token) is followed
        exactly. A constant part (a buffer, a learned token) carries no path."""
        maps = [v for v in values if isinstance(v, ChannelMap)]
        plain = [m for m in maps if not is_uniform(m) and m.channels > 1]
        if all(d != dim for m in plain for d, _ in m.layout) and len(maps) == len(values) and len(set(maps)) == 1:
            return maps[0]
        others = union_layout([tuple((d, size) for d, size in m.layout if d != dim) for m in plain])
        if others is None:
            raise _unsupported(n, "concatenating tensors whose channel dims differ in size")
        lined = []
        for v, shape in zip(values, shapes):
            layout = tuple(sorted(others + ((dim, shape[dim]),)))
            if not isinstance(v, ChannelMap):
                v = sourceless(math.prod(size for _, size in layout))
            elif v.unit != 1:
                raise _unsupported(n, "concatenating flattened tensors")
            lined.append(line_up(in_dim_order(v), layout))
        if None in lined:
            raise _unsupported(n, "concatenating tensors whose channels lie along different dims")
        return joined(lined, [d for d, _ in lined[0].layout].index(dim))

    def _assign(self, n: fx.Node) -> None:
        """x[index] = v (slices and ints): x's map from then on has v's map in the region written
        and its own elsewhere, joined dim by dim (`_written`); the uses of x after it read that."""
        target, _, value = n.args
        old, new = self._value(target), self._value(value)
        x = self.env[target]
        if isinstance(old, ChannelMap) or isinstance(new, ChannelMap):
            if not isinstance(x, torch.Tensor):
                raise _unsupported(n, f"item assignment into a {type(x).__name__}")
            index_nodes: list[fx.Node] = []
            fx.node.map_arg(n.args[1], index_nodes.append)
            if any(isinstance(self.values.get(a), ChannelMap) for a in index_nodes):
                raise _unsupported(n, "item assignment at an index computed from the input")
            raw = self.fetch_args_kwargs_from_env(n)[0][1]
            index = self._index(n, raw if isinstance(raw, tuple) else (raw,), x.ndim)
            if any(i is None or isinstance(i, (list, tuple)) for i in index):
                raise _unsupported(n, f"item assignment at {raw!r} (only slices and ints)")
            kept = [d for d, i in enumerate(index) if not isinstance(i, int)]
            if isinstance(new, ChannelMap):  # broadcast from the right over the region, then on x's dims
                lead = len(kept) - len(self.shapes[value])
                new = laid_out(new, tuple((kept[d + lead], size) for d, size in new.layout))
            full = tuple(slice(i, i + 1) if isinstance(i, int) else i for i in index)
            written = self._written(n, old if isinstance(old, ChannelMap) else None, tuple(x.shape), full, new, 0)
        super().run_node(n)
        if isinstance(old, ChannelMap) or isinstance(new, ChannelMap):
            self._changed(n, target, written if isinstance(written, ChannelMap) else _Constant(x), "item assignment")
        self.values[n] = None

    def _in_place(self, n: fx.Node) -> torch.Tensor:
        """x.add_(y), x.copy_(y), x.zero_() and the like: x = x.add(y) (y broadcast, or a constant)
        for every later use of x (`_changed`); a channel-wise one (x.relu_()) keeps x's map."""
        target, op = n.args[0], n.target.removesuffix("_")
        result = super().run_node(n)
        self.shapes[n] = result.shape
        old = self._value(target)
        if op in CHANNELWISE_METHODS:
            new = self._channelwise(n, result) if isinstance(old, ChannelMap) else old
        elif n.target in OVERWRITES:
            source = self._value(n.args[1]) if n.target == "copy_" else None
            new = (expanded(source, self.shapes[n.args[1]], result.shape) if isinstance(source, ChannelMap)
                   else _Constant(result))
        elif not _flatten_maps(self._operands(n)):
            new = _Constant(result)
        else:
            new = self._elementwise(n, op, result)
            new = detach(new) if op in NO_GRADIENT_METHODS else new
        if new is not old:
            self._changed(n, target, new, f"the in-place {n.target}")
        self.values[n] = new
        return result

    def _changed(self, n: fx.Node, target: fx.Node, new: Any, what: str) -> None:
        """`target`'s tensor was changed in place by `n` (`what`): from now on it has the map `new`,
        under its own node and under every other node still to be used that holds the same tensor
        (an nn.Identity's output). Refused if another tensor still to be used views part of it (that
        changes too, along other dims), or if it is the model's parameter or buffer given a traced
        value (that outlives the call). The measured check then keeps copies (`LayerGraph.assigns`)."""
        x = self.env[target]
        traced = isinstance(new, ChannelMap) or isinstance(self.values[target], ChannelMap)  # else: views stay constants
        if isinstance(new, ChannelMap):
            for name, p in [*self.module.named_parameters(), *self.module.named_buffers()]:
                if _overlaps(p, x):
                    raise _unsupported(n, f"{what} of the model's tensor {name!r} with a value computed from the input")
        for node, value in self.env.items():
            if value is x:
                self.values[node] = new
            elif traced and any(_overlaps(t, x) for t in tensors_in(value)):
                raise _unsupported(n, f"{what} into a tensor that {node.name!r}, still to be used, views "
                                      "(that tensor changes too)")
        self.layer_graph.assigns |= traced

    def _written(self, n: fx.Node, m: ChannelMap | None, shape: tuple[int, ...], index: tuple[slice, ...],
                 new: Any, first: int) -> Any:
        """The map of a block of `shape` (map `m`; None: constant) after `new` is written into its
        `index` (one slice per dim; dims before `first` already lie inside it)."""
        for d in range(first, len(shape)):
            lo, hi, step = index[d].indices(shape[d])
            if (lo, hi, step) != (0, shape[d], 1):
                break
        else:  # the whole block is written
            if not isinstance(new, ChannelMap) or is_uniform(new):
                return new if isinstance(new, ChannelMap) else None
            lined = line_up(in_dim_order(new), tuple((d, shape[d]) for d, _ in in_dim_order(new).layout))
            if lined is None:
                raise _unsupported(n, "item assignment of a value whose channels do not fit the region")
            return lined
        if step != 1:
            raise _unsupported(n, "item assignment at a strided slice")
        parts, shapes = [], []
        for a, b, inside in ((0, lo, False), (lo, hi, True), (hi, shape[d], False)):
            if b > a:
                sub_shape = shape[:d] + (b - a,) + shape[d + 1:]
                sub = None if m is None else self._indexed(
                    n, m, (slice(None),) * d + (slice(a, b),), torch.empty(sub_shape, device="meta"))
                parts.append(self._written(n, sub, sub_shape, index, new, d + 1) if inside else sub)
                shapes.append(sub_shape)
        if not any(isinstance(p, ChannelMap) for p in parts):
            return None
        return self._joined(n, parts, shapes, d)

    def _split(self, n: fx.Node, result: tuple) -> tuple:
        m = self._input_map(n)
        dim = _dim_arg(n, 2, 0) % result[0].ndim
        subs = [d for d, _ in m.layout]
        if dim not in subs:
            return tuple(m for _ in result)
        starts = [0]
        for part in result:
            starts.append(starts[-1] + part.shape[dim])
        return tuple(select(m, subs.index(dim), a, b) for a, b in zip(starts, starts[1:]))

    def _unbind(self, n: fx.Node, result: tuple) -> tuple:
        m = self._input_map(n)
        dim = _dim_arg(n, 1, 0) % (result[0].ndim + 1)
        subs = [d for d, _ in m.layout]
        shifted = tuple((d - (d > dim), size) for d, size in m.layout)
        if dim not in subs or is_uniform(m):
            return tuple(laid_out(m, shifted) for _ in result)
        k = subs.index(dim)
        if len(subs) == 1:
            raise _unsupported(n, "unbind along the only dim that holds the channels")
        return tuple(laid_out(select(m, k, i, i + 1), shifted[:k] + shifted[k + 1:]) for i in range(len(result)))

    def _permute(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        m = self._input_map(n)
        ndim = result.ndim
        if n.target in TRANSPOSES:
            d0, d1 = (d % ndim for d in n.args[1:3])
            order = list(range(ndim))
            order[d0], order[d1] = d1, d0
        else:
            dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else n.args[1:]
            order = [d % ndim for d in dims or n.kwargs["dims"]]
        return laid_out(m, tuple((order.index(d), size) for d, size in m.layout))

    def _reshape(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        """Channel c keeps its row-major place. Channels that fill whole consecutive dims keep their
        order over the new dims; channels along dim 1 flattened with the dims after it become
        features of `unit` elements each (for a Linear); any other reshape is followed element by
        element (`_reshaped`)."""
        m = in_dim_order(self._input_map(n))
        before, after = tuple(self.shapes[n.args[0]]), tuple(result.shape)
        if is_uniform(m):
            return _uniform_like(m, result)
        dims = [d for d, _ in m.layout]
        alike = first_alike(m) if m.unit == 1 else []
        if alike != list(range(len(alike))):  # copies of channels along some dims: those dims hold none
            return _reshaped(m, before, after, alike)
        # the channel dims consecutive, apart from dims of size 1 between them
        if all(d in dims or before[d] == 1 for d in range(dims[0], dims[-1] + 1)) and m.unit == 1:
            outer = math.prod(before[: dims[0]])
            sizes = [math.prod(after[:i]) for i in range(len(after) + 1)]  # elements before each dim
            if outer in sizes and outer * m.channels in sizes:
                first, last = sizes.index(outer), sizes.index(outer * m.channels)
                layout = tuple((d, after[d]) for d in range(first, last) if after[d] != 1)
                return laid_out(m, layout or ((first, 1),))
        if m.layout == ((1, m.channels),) and len(after) == 2 and after == (before[0], math.prod(before[1:])):
            return with_unit(m, math.prod(before[2:]))
        if m.unit == 1:  # any other reshape whose every element still holds one channel
            return _reshaped(m, before, after, alike)
        raise _unsupported(n, f"a reshape from {before} to {after} that moves channels")

    def _max_min(self, n: fx.Node, target: Any, result: Any) -> Any:
        """max/min over a dim: (values, indices: no gradient); of two tensors: elementwise; else all."""
        if isinstance(result, tuple):
            values = self._reduce(n, result[0])
            return values, detach(values)
        if len(n.args) > 1 and isinstance(n.args[1], fx.Node) or "other" in n.kwargs:
            return self._elementwise(n, target, result)
        return self._reduce(n, result)

    def _grid_sample(self, n: fx.Node, result: torch.Tensor) -> Any:
        """F.grid_sample(input, grid): each output channel samples its own input channel, at places
        that every channel of the grid decides (a spatial transformer's, deformable attention's)."""
        image, grid = (self._value(a) for a in n.args[:2])
        if isinstance(image, ChannelMap) and any(d != 1 for d, _ in image.layout):
            raise _unsupported(n, "F.grid_sample of channels that do not lie along dim 1 alone")
        operands = [(image, tuple(result.shape))]
        if isinstance(grid, ChannelMap):
            operands.append((_uniform_like(grid, result), tuple(result.shape)))
        return self._elementwise(n, F.grid_sample, result, operands)

    def _field(self, n: fx.Node, result: Any) -> Any:
        """A named field of an op's tuple of results (`x.topk(k).values`, `x.max(1).indices`)."""
        parts = self.env[n.args[0]]
        index = next((i for i, part in enumerate(parts) if part is result), None)
        if index is None:
            raise _unsupported(n, f"the attribute {n.args[1]!r} of a tuple of results")
        return self._value(n.args[0])[index]

    def _taken_along(self, n: fx.Node, dim: Any, result: torch.Tensor) -> ChannelMap:
        """topk's values, gather, take_along_dim: entries picked along `dim` (by an index without a
        gradient): picked along a dim holding the channels, each depends on all of them; along
        another dim, they keep their channels."""
        m = self._input_map(n)
        if not isinstance(dim, int):
            raise _unsupported(n, f"{n.target} without an explicit integer dim")
        dim %= result.ndim
        if any(result.shape[d] != size for d, size in m.layout if d != dim):
            raise _unsupported(n, f"{n.target} changing the channel count")
        subs = {d for d, _ in m.layout}
        if dim not in subs:
            return m
        if is_uniform(m) or subs == {dim}:
            return _uniform_like(m, result)
        raise _unsupported(n, f"{n.target} along one of several dims that hold channels")

    def _flip(self, n: fx.Node) -> ChannelMap:
        """torch.flip: channels in reverse order along every flipped dim that holds them."""
        m = self._input_map(n)
        ndim = len(self.shapes[n.args[0]])
        dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else n.args[1:]
        flipped = {d % ndim for d in (dims or n.kwargs["dims"])}
        axes = tuple(k for k, (d, _) in enumerate(m.layout) if d in flipped)
        if not axes or is_uniform(m):
            return m
        return reordered(m, channel_order([size for _, size in m.layout], lambda index: np.flip(index, axes)))

    def _channel_map_on_dim1(self, n: fx.Node, what: str) -> ChannelMap:
        m = self._input_map(n)
        if is_uniform(m):
            return laid_out(m, ((1, m.channels),))
        if m.layout != ((1, m.channels),):
            raise _unsupported(n, f"{what} of channels that do not lie along dim 1 alone")
        return m

    def _local_response_norm(self, n: fx.Node, size: int) -> ChannelMap:
        """LocalResponseNorm(size): channel c is normalized by channels [c - size // 2, c + (size - 1) // 2]."""
        return windowed(self._channel_map_on_dim1(n, "LocalResponseNorm"), size // 2, (size - 1) // 2)

    def _channel_shuffle(self, n: fx.Node, groups: int) -> ChannelMap:
        """ShuffleNet's shuffle: (N, g * c, ...) viewed as (N, g, c, ...), transposed, flattened back.
        It moves dim 1 only: channels along other dims stay where they are."""
        if 1 not in {d for d, _ in self._input_map(n).layout}:
            return self._input_map(n)
        m = self._channel_map_on_dim1(n, "a channel shuffle")
        return reordered(m, channel_order((groups, m.channels // groups), np.transpose))

    def _pixel_shuffle(self, n: fx.Node, factor: int, shuffle: bool) -> ChannelMap:
        """PixelShuffle(r): output channel c is input channels [c r^2, (c + 1) r^2) spread over space, so it
        depends on exactly those; PixelUnshuffle(r): output channels [c r^2, (c + 1) r^2) are input channel c."""
        m = self._channel_map_on_dim1(n, "a pixel shuffle")
        block = factor * factor
        if shuffle:
            return mix_groups(m, block, 1)
        return concat([broadcast(slice_channels(m, c, c + 1), block) for c in range(m.channels)])

    def _reduce(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        m = self._input_map(n)
        ndim = len(self.shapes[n.args[0]])
        target = n.target if n.op == "call_function" else str(n.target)
        dims = _normalize_dims(_dim_arg(n, REDUCTION_DIM.get(target, 1), None), ndim)
        dims = set(range(ndim)) if dims is None else dims
        keep = result.ndim == ndim
        subs = {d for d, _ in m.layout}
        if not subs & dims:
            return laid_out(m, tuple((d if keep else d - sum(r < d for r in dims), size) for d, size in m.layout))
        if is_uniform(m) or subs <= dims:  # the channels are gone (mixed): any dim holds them
            return _uniform_like(m, result)
        for k in reversed(range(len(m.layout))):  # sum over a sub-axis: its indices merge
            d, size = m.layout[k]
            if d in dims:
                rest = m.layout[:k] + m.layout[k + 1:]
                m = merge([laid_out(select(m, k, i, i + 1), rest) for i in range(size)])
        return laid_out(m, tuple((d if keep else d - sum(r < d for r in dims), size) for d, size in m.layout))

    def _mixed_dims(self, n: fx.Node, dims: set[int]) -> ChannelMap:
        """The input through an op that mixes each sample along `dims` (softmax, normalizations)."""
        return _mixed(self._input_map(n), dims)

    def _normalized_along(self, n: fx.Node, dim: Any, result: torch.Tensor) -> ChannelMap:
        """The input through softmax / log_softmax / normalize along `dim`: mixed along it, or, along a
        dim of size 1, a constant (a softmax over one entry is 1), which passes no gradient."""
        if isinstance(dim, int) and result.shape[dim] == 1:
            return detach(self._input_map(n))
        return self._mixed_along(n, dim, result)

    def _mixed_along(self, n: fx.Node, dim: Any, result: torch.Tensor) -> ChannelMap:
        """The input through an op that mixes it along `dim` (softmax, normalize)."""
        if not isinstance(dim, int):
            raise _unsupported(n, f"{n.target} without an explicit integer dim")
        return self._mixed_dims(n, {dim % result.ndim})

    def _layer_norm(self, n: fx.Node, normalized_shape: Any, result: torch.Tensor) -> ChannelMap:
        """LayerNorm over the trailing `normalized_shape` dims."""
        trailing = len(normalized_shape) if isinstance(normalized_shape, (tuple, list, torch.Size)) else 1
        return self._mixed_dims(n, set(range(result.ndim - trailing, result.ndim)))

    def _group_norm(self, n: fx.Node, groups: int, result: torch.Tensor) -> ChannelMap:
        """GroupNorm: each of its `groups` groups of dim 1 mixes within itself (and over the dims after)."""
        m = self._input_map(n)
        if m.layout != ((1, m.channels),):
            return self._mixed_dims(n, set(range(1, result.ndim)))
        return mix_groups(m, m.channels // groups)

    def _matmul(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        a, b = n.args[:2]
        return self._product(n, (self._value(a), self.shapes.get(a)), (self._value(b), self.shapes.get(b)),
                             tuple(result.shape))

    def _attention(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        """scaled_dot_product_attention(q, k, v, attn_mask) = softmax(q @ k^T + attn_mask) @ v (the
        softmax mixes the keys); a float mask computed from the model's weights (T5's relative
        position bias) is a path of its own into the logits, a constant one (causal) none."""
        (q, k, v), shapes = (self._value(a) for a in n.args[:3]), [self.shapes.get(a) for a in n.args[:3]]
        if isinstance(k, ChannelMap):
            ndim = len(shapes[1])
            swap = {ndim - 1: ndim - 2, ndim - 2: ndim - 1}
            k = laid_out(k, tuple((swap.get(d, d), size) for d, size in k.layout))
        k_t = shapes[1][:-2] + (shapes[1][-1], shapes[1][-2])
        weights_shape = tuple(shapes[0][:-1]) + (shapes[1][-2],)
        logits = self._product(n, (q, shapes[0]), (k, k_t), weights_shape)
        mask_arg = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        if isinstance(mask := self._value(mask_arg), ChannelMap):
            logits = self._elementwise(n, torch.add, torch.empty(weights_shape, device="meta"),
                                       [(logits, weights_shape), (mask, tuple(self.shapes[mask_arg]))])
        # the softmax over the keys; over one key it is 1 whatever the logits: no gradient reaches q and k
        weights = _mixed(logits, {len(weights_shape) - 1}) if weights_shape[-1] > 1 else detach(logits)
        return self._product(n, (weights, weights_shape), (v, shapes[2]), tuple(result.shape))

    def _added_product(self, n: fx.Node, result: torch.Tensor) -> Any:
        """baddbmm / addmm(input, a, b) = input + a @ b (times factors), input broadcast; the
        tensors by position or by keyword (BLOOM's `alibi.baddbmm(batch1=q, batch2=k)`)."""
        names = ("input", *(("batch1", "batch2") if n.target in (torch.baddbmm, "baddbmm") else ("mat1", "mat2")))
        tensors = [*n.args[:3], *(n.kwargs.get(name) for name in names[len(n.args[:3]):])]
        if any(t is None for t in tensors):
            raise _unsupported(n, f"{n.target} without its three tensors ({', '.join(names)})")
        added, a, b = tensors
        if (layer := self._parameter_product(n, a, b)) is not None:  # Hugging Face's Conv1D: addmm(bias, x, W)
            product = self._weighted(n, layer, result, self.owners[id(layer.weight)], inp=a)
        else:
            product = self._product(n, (self._value(a), self.shapes.get(a)), (self._value(b), self.shapes.get(b)),
                                    tuple(result.shape))
        return self._elementwise(n, torch.add, result, [(self._value(added), self.shapes.get(added)),
                                                        (product, tuple(result.shape))])

    def _product(self, n: fx.Node, a: tuple[Any, Any], b: tuple[Any, Any], out: tuple[int, ...]) -> ChannelMap:
        """The map of a @ b from the (map or constant, shape) of each: channels on the contracted dim
        mix (within the other channel dims: per head); channels on a kept dim (rows of a, columns of
        b, a batch dim) stay channels of the output, both operands' together (an outer product of
        channels, as XCiT's q k^T over the tokens, is each output channel pair reading its two)."""
        parts = []
        for (m, shape), contracted, kept in ((a, -1, -2), (b, -2, -1)):
            if not isinstance(m, ChannelMap):
                continue
            ndim = len(shape)
            if ndim < 2:
                raise _unsupported(n, "a matmul with a one-dimensional operand")
            layout = () if is_uniform(m) else m.layout
            subs = [k for k, (d, _) in enumerate(layout) if d == ndim + contracted]
            if subs:
                m = summed_over(m, subs[0])
                layout = layout[:subs[0]] + layout[subs[0] + 1:]
            offset = len(out) - ndim  # batch dims line up from the right
            parts.append((m, tuple((len(out) + kept if d == ndim + kept else d + offset, size) for d, size in layout)))
        return self._combined(n, parts, out)

    def _einsum(self, n: fx.Node, result: torch.Tensor) -> ChannelMap:
        """torch.einsum: channels on a summed-out letter mix (within the other channel dims);
        channels on a kept letter move to that letter's output dim. A 2-d Parameter of the model
        times one traced operand is a Linear (`_einsum_layer`)."""
        equation, *operands = n.args
        if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
            operands = list(operands[0])
        ndims = [len(self.shapes[a]) if a in self.shapes else self._value(a).ndim for a in operands]
        inputs, output = einsum_subscripts(equation, ndims)
        if (found := self._einsum_layer(n, inputs, output, operands)) is not None:
            layer, x = found
            return self._weighted(n, layer, result, self.owners[id(layer.weight)], inp=x)
        parts = []
        for sub, arg in zip(inputs, operands):
            m = self._value(arg)
            if not isinstance(m, ChannelMap):
                continue
            layout = () if is_uniform(m) else m.layout
            for k in reversed([k for k, (d, _) in enumerate(layout) if sub[d] not in output]):
                m, layout = summed_over(m, k), layout[:k] + layout[k + 1:]
            parts.append((m, tuple((output.index(sub[d]), size) for d, size in layout)))
        return self._combined(n, parts, tuple(result.shape))

    def _einsum_layer(self, n: fx.Node, inputs: list[str], output: str,
                      operands: list[Any]) -> tuple[nn.Module, Any] | None:
        """For einsum(x, W) read as x @ W (`layer_calls.einsum_form`) with W a Parameter of the
        model: an nn.Linear on the meta device holding W, and x. None without a Parameter times a
        traced operand, or for x @ W.T (no step, as in a product); refused for any other form."""
        values = [self._value(a) for a in operands]
        owned = [k for k, v in enumerate(values) if isinstance(v, _Constant) and id(v.value) in self.owners]
        if not owned or not any(isinstance(v, ChannelMap) for v in values):
            return None
        x, w = (1 - owned[0], owned[0]) if len(operands) == 2 else (None, owned[0])
        form = einsum_form(inputs[x], inputs[w]) if x is not None and isinstance(values[x], ChannelMap) else None
        if form is None or output != form:
            raise _unsupported(n, f"an einsum with the Parameter {self.owners[id(values[w].value)]!r} that is no "
                                  "Linear (the analysis reads einsum(x, W) with a 2-d W as x @ W: '...d,de->...e', "
                                  "'bnd,de->bne'; or use nn.Linear)")
        if inputs[w][0] != inputs[x][-1]:
            return None
        weight = values[w].value
        view = nn.Linear(*weight.shape, bias=False, device="meta")
        view.weight = weight  # (in, out), not a Linear's (out, in): it only names the layer
        return view, operands[x]

    def _combined(self, n: fx.Node, parts: list[tuple[ChannelMap, tuple]], out: tuple[int, ...]) -> ChannelMap:
        """The elementwise merge of product operands (map, layout in the output) after contraction."""
        # every operand mixed (no channel dim left): the output is uniform, along its last dim
        parts = [(in_dim_order(laid_out(m, layout)) if layout else m, layout) for m, layout in parts]
        layouts = [m.layout for m, layout in parts if layout]
        target = union_layout(layouts) if layouts else ((len(out) - 1, out[-1]),)
        lined = [line_up(m, target) for m, _ in parts] if target else [None]
        if None in lined:
            name = getattr(n.target, "__name__", n.target)
            raise _unsupported(n, f"a {name} whose operands keep their channels along different dims")
        return merge(lined)


def _mixed(m: ChannelMap, dims: set[int]) -> ChannelMap:
    """`m` through an op that mixes each sample along `dims` (softmax, normalizations)."""
    subs = [d for d, _ in m.layout]
    inner = [d in dims for d in subs]
    if not any(inner):
        return m
    if all(inner):
        return mix(m, m.channels)
    if inner == sorted(inner):  # only innermost sub-axes: each group of them mixes within itself
        return mix_groups(m, math.prod(size for (d, size) in m.layout if d in dims))
    return mix_sub_axes(m, [k for k, mixed in enumerate(inner) if mixed])


def _reshaped(m: ChannelMap, before: tuple[int, ...], after: tuple[int, ...], alike: list[int]) -> ChannelMap:
    """`m` (in dim order) after reshaping `before` to `after`, element by element: each element's
    channel index (`alike`: copies of a channel count as that channel) is reshaped with it, and the
    channels lie along the dims of `after` along which that index varies (a slot per index there,
    a channel repeated where it spans several). Exact for any reshape: space-to-depth (Swin's patch
    merging), heads folded into a batch of one and back, tokens split into rows and merged with
    the heads (BoTNet's relative positions), MobileViT's patches unfolded into the batch."""
    index = np.zeros((1,) * len(before), dtype=np.int64)
    for d, size in m.layout:
        index = index * size + np.arange(size).reshape([-1 if k == d else 1 for k in range(len(before))])
    index = np.asarray(alike)[np.broadcast_to(index, before)].reshape(after)
    varying = [j for j in range(len(after)) if (index != index.take([0], axis=j)).any()]
    order = index[tuple(slice(None) if j in varying else 0 for j in range(len(after)))].reshape(-1)
    layout = tuple((j, after[j]) for j in varying) or ((min(m.axis, len(after) - 1), 1),)
    return laid_out(reordered(m, order.tolist()), layout)


def _uniform_like(m: ChannelMap, result: Any) -> ChannelMap:
    """A map whose channels all depend on every channel of `m`, laid along a dim of `result`."""
    ndim = result.ndim if isinstance(result, torch.Tensor) else 0
    axis = min(m.axis, ndim - 1) if ndim else 0
    return replace(mix(m, result.shape[axis] if ndim else 1, axis), loose=True)


def _flatten_maps(value: Any) -> list[ChannelMap]:
    if isinstance(value, ChannelMap):
        return [value]
    if isinstance(value, (tuple, list)):
        return [m for v in value for m in _flatten_maps(v)]
    if isinstance(value, dict):
        return [m for v in value.values() for m in _flatten_maps(v)]
    return []


def example_input(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                  batch: int = TRACE_BATCH, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random input of `batch` x `input_shape` on the model's device: normal floats, or for an
    integer `dtype` token ids valid for every `nn.Embedding` of the model (below the smallest
    `num_embeddings`)."""
    if not input_shape or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise GradpathError(f"input shape {input_shape!r} must be positive ints such as (3, 32, 32)")
    device = next(model.parameters(), torch.empty(0)).device
    if dtype.is_floating_point:
        return torch.randn(batch, *input_shape, generator=generator).to(device=device, dtype=dtype)
    if dtype.is_complex or dtype == torch.bool:
        raise GradpathError(f"input dtype {dtype} is neither a float nor an integer (token id) type")
    vocab = [m.num_embeddings for m in model.modules() if isinstance(m, EMBEDDINGS)]
    if not vocab:
        raise GradpathError(f"{type(model).__name__} has no nn.Embedding to read an integer (token id) input")
    return torch.randint(0, min(vocab), (batch, *input_shape), generator=generator, dtype=dtype).to(device)


@contextlib.contextmanager
def _same_random_draws(x: torch.Tensor) -> Iterator[None]:
    """Torch's random numbers from seed 0 while open, and as they were after: the traced graph and
    the model draw the same noise (a VAE's randn_like) when their outputs are compared."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(0)
        yield


def trace_layers(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32),
                 input_dtype: torch.dtype = torch.float32, *, trust_custom_backward: bool = False) -> LayerGraph:
    """The weighted-layer DAG of `model` for one input of shape `input_shape` (without batch) and
    `input_dtype` (an integer type: token ids for the model's `nn.Embedding`). A custom autograd
    Function is refused unless `trust_custom_backward`: its backward is then taken to follow the
    ops of its forward, which is what torch.fx traces."""
    model = unroll_modules(model)
    x = example_input(model, input_shape, input_dtype)
    modes = {m: m.training for m in model.modules()}
    for m in modes:
        m.training = False
    try:
        with unfused_attention():
            tracer = _ChannelTracer(symbolic_trace(model, x.clone()), weight_owners(model))
            with torch.no_grad(), _same_random_draws(x):  # each run on a copy of x: a model may change it in place
                traced = tracer.run(x.clone())
            if tracer.layer_graph.positions:
                with _same_random_draws(x):
                    check_autograd(model, tracer.layer_graph, x.clone(), traced, trust_custom_backward)
    except GradpathError:
        raise
    except Exception as err:  # the model itself rejects the input
        hint = ""
        if input_dtype.is_floating_point and any(isinstance(m, EMBEDDINGS) for m in model.modules()):
            hint = " (it has an nn.Embedding: if it reads token ids, give an integer input dtype, `--tokens`)"
        raise GradpathError(f"{type(model).__name__} cannot run on a {input_dtype} input of shape {input_shape}: "
                            f"{err}{hint}") from err
    finally:
        for m, training in modes.items():
            m.training = training
    if not tracer.layer_graph.positions:
        raise GradpathError(f"{type(model).__name__} has no weighted layer (a conv, Linear or Embedding, or x @ W "
                            f"with W a 2-d Parameter); {SUPPORTED_AT}")
    return tracer.layer_graph
