"""Channel maps through tensor ops that move, copy, pad or accumulate channels without weights.

Each function takes the `ChannelMap` of an op's input (and the shapes it needs) and returns the
map of its output, or raises `NotFollowed` saying what it cannot follow; the tracer
(`graph._ChannelTracer`) turns that into a `GradpathError` naming the graph node. Ops along dims
that do not hold channels pass the channels through (their dims renumbered when dims are added).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .channels import (
    ChannelMap,
    channel_order,
    concat,
    is_uniform,
    laid_out,
    merge,
    mix,
    reordered,
    slice_channels,
    sourceless,
)


class NotFollowed(Exception):
    """An op's effect on the channels that the analysis cannot follow exactly (the message says which)."""


def _channel_dims(m: ChannelMap) -> list[int]:
    return [d for d, _ in m.layout]


def _single_dim(m: ChannelMap, what: str) -> int:
    """The one dim holding `m`'s channels; NotFollowed when they are spread over several."""
    if len(m.layout) != 1:
        raise NotFollowed(f"{what} along one of several dims that hold the channels")
    return m.layout[0][0]


def shifted_dims(m: ChannelMap, offset: int) -> ChannelMap:
    """`m` with `offset` dims added in front (broadcasting to a higher rank)."""
    return m if offset == 0 or is_uniform(m) else laid_out(m, tuple((d + offset, s) for d, s in m.layout))


def padded(m: ChannelMap, ndim: int, pad: Sequence[int]) -> ChannelMap:
    """F.pad(x, pad) of an `ndim`-dim tensor: `pad` = (before, after) pairs from the last dim backward.
    Padding channels adds channels without a source (within each head, when the padded dim is one
    of several holding them, as EfficientViT's constant row of its values); negative padding crops."""
    pairs = {ndim - 1 - k: (pad[2 * k], pad[2 * k + 1]) for k in range(len(pad) // 2)}
    if not [d for d in _channel_dims(m) if pairs.get(d, (0, 0)) != (0, 0)]:
        return m
    if is_uniform(m):
        return mix(m, m.channels + sum(pairs[m.axis]), m.axis)
    sizes = [size for _, size in m.layout]
    index = np.arange(m.channels).reshape(sizes)
    for k, (d, _) in enumerate(m.layout):
        before, after = pairs.get(d, (0, 0))
        index = np.take(index, range(max(0, -before), index.shape[k] - max(0, -after)), axis=k)
        widths = [(0, 0)] * len(sizes)
        widths[k] = (max(0, before), max(0, after))
        index = np.pad(index, widths, constant_values=m.channels)  # the added channel without a source
    with_blank = laid_out(concat([m, laid_out(sourceless(1, m.axis), ((m.axis, 1),))]), ((m.axis, m.channels + 1),))
    layout = tuple((d, n) for (d, _), n in zip(m.layout, index.shape))
    return laid_out(reordered(with_blank, index.reshape(-1).tolist()), layout)


def rolled(m: ChannelMap, ndim: int, shifts: int | Sequence[int], dims: int | Sequence[int]) -> ChannelMap:
    """torch.roll(x, shifts, dims): channels rotate along every rolled dim that holds them."""
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    by_dim = {d % ndim: s for d, s in zip(dims, shifts)}
    subs = _channel_dims(m)
    axes = [k for k, d in enumerate(subs) if d in by_dim]
    if not axes or is_uniform(m):
        return m
    steps = [by_dim[subs[k]] for k in axes]
    return reordered(m, channel_order([s for _, s in m.layout], lambda index: np.roll(index, steps, axes)))


def expanded(m: ChannelMap, before: Sequence[int], after: Sequence[int]) -> ChannelMap:
    """x.expand(*after) of a tensor of shape `before`: size-1 dims broadcast, leading dims added."""
    offset = len(after) - len(before)
    if is_uniform(m):
        return mix(m, after[m.axis + offset], m.axis + offset)
    if any(before[d] != after[d + offset] for d in _channel_dims(m)):
        raise NotFollowed("expanding a dim that holds distinct channels")
    return shifted_dims(m, offset)


def repeated(m: ChannelMap, ndim: int, repeats: Sequence[int]) -> ChannelMap:
    """x.repeat(*repeats) of an `ndim`-dim tensor: copies of the channels along a channel dim."""
    offset = len(repeats) - ndim
    if is_uniform(m):
        return mix(m, m.channels * repeats[m.axis + offset], m.axis + offset)
    m = shifted_dims(m, offset)
    copies = {d: repeats[d] for d in _channel_dims(m) if repeats[d] != 1}
    if not copies:
        return m
    dim = _single_dim(m, "repeating")
    return laid_out(concat([m] * copies[dim]), ((dim, m.channels * copies[dim]),))


def stacked(maps: Sequence[ChannelMap], dim: int) -> ChannelMap:
    """torch.stack(tensors, dim): the new dim becomes the outermost channel sub-axis (channel k * C
    + c is channel c of tensor k), exactly; tensors whose channels do not line up (a broadcast
    one, a flattened one) are merged instead: each channel depends on that channel of every tensor."""
    shifted = [laid_out(m, tuple((d + (d >= dim), s) for d, s in m.layout)) for m in maps]
    if len({(m.layout, m.unit) for m in shifted}) == 1 and shifted[0].unit == 1 and not any(map(is_uniform, shifted)):
        return laid_out(concat(shifted), ((dim, len(shifted)), *shifted[0].layout))
    return merge(shifted)


def cumulative(m: ChannelMap, dim: int) -> ChannelMap:
    """cumsum / cumprod / cummax along `dim`: along the channels, channel c depends on channels 0..c."""
    if dim not in _channel_dims(m) or is_uniform(m):
        return m
    axis = _single_dim(m, "a cumulative op")
    prefixes = [mix(slice_channels(m, 0, c + 1), 1, axis) for c in range(m.channels)]
    return laid_out(concat(prefixes), m.layout)


def windowed(m: ChannelMap, before: int, after: int) -> ChannelMap:
    """Each channel c mixed with channels [c - before, c + after] (LocalResponseNorm's window)."""
    if is_uniform(m):
        return m
    axis = _single_dim(m, "a channel window")
    return laid_out(concat([mix(slice_channels(m, max(0, c - before), min(m.channels, c + after + 1)), 1, axis)
                            for c in range(m.channels)]), m.layout)


def gated(m: ChannelMap, dim: int) -> ChannelMap:
    """GLU along `dim`: the first half times the sigmoid of the second, so channel c of the result
    depends on channels c and c + C / 2 when `dim` holds the channels."""
    if dim not in _channel_dims(m):
        return m
    if is_uniform(m):
        return mix(m, m.channels // 2, m.axis)
    axis = _single_dim(m, "GLU")
    half = m.channels // 2
    return laid_out(merge([slice_channels(m, 0, half), slice_channels(m, half, m.channels)]), ((axis, half),))
