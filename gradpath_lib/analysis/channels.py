"""Channel bookkeeping: which producer channels each channel of a traced tensor comes from.

A `ChannelMap` describes the channel axis of one tensor as consecutive `Piece`s. Every
channel of a piece depends on `width` consecutive channels of each of the piece's `Source`s:
channel `c` of the piece [start, stop) comes from channels [o, o + width) of the source's
producer, o = `offset + step * (c - start)` (step 1 maps channel to channel; step 0 is the same
producer channels broadcast over the piece; width > 1 comes from an operation that mixes
channels without weights, such as LayerNorm over the channels: `mix`).
A producer is a weighted-layer position (an int >= 0) or the network input (`INPUT`).
`axis` is the tensor dimension holding the channels (1 until a permute or transpose moves it).
A reshape may spread the channels over several dimensions, as attention splits them into heads:
then `split` lists the (dimension, size) of each, outermost first, and channel
c = sum(index_k * stride_k) in row-major order (`layout` gives this view of any map).
A source marked not `live` is a forward dependency through `.detach()`: it carries no gradient.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple

import numpy as np

from ..errors import GradpathError

INPUT = -1  # producer id of the network's input tensor


class Source(NamedTuple):  # a tuple: made and hashed millions of times in a large model's analysis
    """One producer of a piece: producer channel of the piece's first channel, and its step."""

    producer: int
    offset: int
    step: int = 1
    live: bool = True
    width: int = 1

    def shifted(self, by: int) -> Source:
        """The same source seen from `by` channels further into the piece."""
        producer, offset, step, live, width = self
        if not by or not step:
            return self
        return tuple.__new__(Source, (producer, offset + step * by, step, live, width))  # skips the checks of __new__

    def span(self, channels: int) -> tuple[int, int]:
        """The producer channels [lo, hi) that `channels` consecutive piece channels depend on."""
        last = self.offset + self.step * (channels - 1)
        return min(self.offset, last), max(self.offset, last) + self.width


class Piece(NamedTuple):
    """Channels [start, stop) of a tensor and the producer channels they come from."""

    start: int
    stop: int
    sources: frozenset[Source]


@dataclass(frozen=True)
class ChannelMap:
    """The channel axis of one tensor; `unit` > 1 once it was flattened (features per channel)."""

    channels: int
    pieces: tuple[Piece, ...]
    unit: int = 1
    axis: int = 1
    split: tuple[tuple[int, int], ...] = ()  # (dim, size) outermost first, when over several dims
    loose: bool = False  # its channels are gone (reduced away, or token ids): `axis` is any dim of the tensor

    @property
    def layout(self) -> tuple[tuple[int, int], ...]:
        """(dim, size) of every dimension the channels are spread over, outermost first."""
        return self.split or ((self.axis, self.channels),)

    @cached_property
    def _starts(self) -> list[int]:
        return [p.start for p in self.pieces]

    def piece_at(self, channel: int) -> Piece:
        """The piece holding `channel`."""
        return self.pieces[bisect.bisect_right(self._starts, channel) - 1]

    def sources_from(self, start: int, stop: int) -> frozenset[Source]:
        """The sources of channels [start, stop), which must lie inside one piece."""
        piece = self.piece_at(start)
        if stop > piece.stop:
            raise AssertionError(f"channels [{start}, {stop}) cross a piece boundary")
        if start == piece.start:
            return piece.sources
        return frozenset(s.shifted(start - piece.start) for s in piece.sources)

    def boundaries(self) -> set[int]:
        """Every channel index where a piece starts or ends."""
        return {p.start for p in self.pieces} | {self.channels}


def fresh(producer: int, channels: int, axis: int = 1) -> ChannelMap:
    """The output of a producer: channel c is the producer's channel c."""
    return ChannelMap(channels, (Piece(0, channels, frozenset({Source(producer, 0)})),), axis=axis)


def sourceless(channels: int, axis: int = 1) -> ChannelMap:
    """Channels that depend on nothing traced: a constant concatenated with traced tensors."""
    return ChannelMap(channels, (Piece(0, channels, frozenset()),), axis=axis)


def _from_boundaries(
    channels: int, cuts: set[int], sources_of: Callable[[int, int], frozenset[Source]], like: ChannelMap
) -> ChannelMap:
    """A map of `channels` cut at `cuts`, each piece's sources from `sources_of(start, stop)`."""
    points = sorted(c for c in cuts | {0, channels} if 0 <= c <= channels)
    pieces = tuple(Piece(a, b, sources_of(a, b)) for a, b in zip(points, points[1:]) if b > a)
    return ChannelMap(channels, pieces, like.unit, like.axis, like.split if channels == like.channels else ())


def _check_unflattened(m: ChannelMap, what: str) -> None:
    if m.unit != 1:
        raise GradpathError(f"{what} of a flattened tensor is not supported by gradient path analysis")


def slice_channels(m: ChannelMap, start: int, stop: int) -> ChannelMap:
    """Channels [start, stop) of `m`, renumbered from 0."""
    _check_unflattened(m, "channel slicing")
    stop = max(start, stop)
    cuts = {b - start for b in m.boundaries() if start < b < stop}
    return replace(_from_boundaries(stop - start, cuts, lambda a, b: m.sources_from(a + start, b + start), m),
                   split=())


def concat(maps: list[ChannelMap]) -> ChannelMap:
    """Concatenation along the channel axis (the result lies along the first map's `axis`)."""
    pieces: list[Piece] = []
    base = 0
    for m in maps:
        _check_unflattened(m, "channel concatenation")
        pieces += [Piece(p.start + base, p.stop + base, p.sources) for p in m.pieces]
        base += m.channels
    return ChannelMap(base, tuple(pieces), axis=maps[0].axis)


def joined(maps: list[ChannelMap], sub: int) -> ChannelMap:
    """Concatenation along sub-axis `sub` of the maps' layouts, which agree on every other sub-axis
    (patch tokens and a class token joined along the tokens, each token with its own channels)."""
    layout = tuple((d, sum(m.layout[sub][1] for m in maps) if k == sub else size)
                   for k, (d, size) in enumerate(maps[0].layout))
    if sub == 0:
        return laid_out(concat(maps), layout)
    index, base = [], 0
    for m in maps:
        index.append(np.arange(m.channels).reshape([size for _, size in m.layout]) + base)
        base += m.channels
    return laid_out(reordered(concat(maps), np.concatenate(index, axis=sub).reshape(-1).tolist()), layout)


def reordered(m: ChannelMap, order: Sequence[int]) -> ChannelMap:
    """Channel j of the result is channel `order[j]` of `m` (a channel shuffle, a flip, a strided
    slice). Channels that stay consecutive stay one piece; the layout is kept when the count is."""
    _check_unflattened(m, "reordering channels")
    runs: list[list] = []  # [start, stop, sources] of each piece of the result
    previous, previous_stop = -2, -1  # the last channel taken, and the end of its piece
    previous_piece, constant = None, False  # the last channel's piece, and whether all its channels are alike
    for j, old in enumerate(order):
        if old == previous + 1 and old < previous_stop:  # the next channel of the same piece: same run
            runs[-1][1] = j + 1
            previous = old
            continue
        piece = m.piece_at(old)
        if piece is previous_piece and constant:  # any channel of a piece whose channels are all alike
            runs[-1][1] = j + 1
            previous = old
            continue
        shift = old - piece.start
        sources = frozenset(s.shifted(shift) for s in piece.sources) if shift else piece.sources
        if runs and len(sources) == len(runs[-1][2]) and sources == frozenset(
                s.shifted(runs[-1][1] - runs[-1][0]) for s in runs[-1][2]):
            runs[-1][1] = j + 1
        else:
            runs.append([j, j + 1, sources])
        previous, previous_stop = old, piece.stop
        previous_piece, constant = piece, all(s.step == 0 for s in piece.sources)
    pieces = [Piece(start, stop, sources) for start, stop, sources in runs]
    return replace(m, channels=len(order), pieces=tuple(pieces), split=m.split if len(order) == m.channels else ())


def channel_order(sizes: Sequence[int], transform: Callable[[np.ndarray], np.ndarray]) -> list[int]:
    """The `order` of `reordered` for channels indexed row-major over `sizes`, rearranged by
    `transform` (an array op such as a transpose or a flip of the index array)."""
    return transform(np.arange(math.prod(sizes)).reshape(tuple(sizes))).reshape(-1).tolist()


def in_dim_order(m: ChannelMap) -> ChannelMap:
    """`m` with the dims of its layout in increasing order, its channels renumbered row-major over
    them: how a reshape reads channels that a transpose of two channel dims moved (a channel shuffle)."""
    dims = [d for d, _ in m.layout]
    if dims == sorted(dims) or is_uniform(m):
        return m
    by_dim = sorted(range(len(dims)), key=dims.__getitem__)
    order = channel_order([size for _, size in m.layout], lambda index: index.transpose(by_dim))
    return laid_out(reordered(m, order), tuple(m.layout[k] for k in by_dim))


def broadcast(m: ChannelMap, channels: int) -> ChannelMap:
    """A one-channel (or uniform) map broadcast to `channels` channels (as elementwise ops do)."""
    if m.channels == channels:
        return m
    if m.channels != 1 and not is_uniform(m):
        raise GradpathError(f"cannot broadcast {m.channels} channels to {channels}")
    sources = frozenset(s._replace(step=0) for s in m.pieces[0].sources)
    return ChannelMap(channels, (Piece(0, channels, sources),), m.unit, m.axis)


def laid_out(m: ChannelMap, layout: tuple[tuple[int, int], ...]) -> ChannelMap:
    """`m` with its channels spread over `layout` ((dim, size) outermost first)."""
    return replace(m, axis=layout[0][0], split=tuple(layout) if len(layout) > 1 else ())


def select(m: ChannelMap, sub: int, start: int, stop: int) -> ChannelMap:
    """Indices [start, stop) of sub-axis `sub` of `m`'s layout (the others whole), in the same layout."""
    sizes = [size for _, size in m.layout]
    outer, inner = math.prod(sizes[:sub]), math.prod(sizes[sub + 1:])
    block = sizes[sub] * inner
    parts = [slice_channels(m, o * block + start * inner, o * block + stop * inner) for o in range(outer)]
    layout = tuple((d, stop - start if k == sub else size) for k, (d, size) in enumerate(m.layout))
    return laid_out(concat(parts), layout)


def take(m: ChannelMap, sub: int, indices: Sequence[int]) -> ChannelMap:
    """Indices `indices` (in that order) of sub-axis `sub` of `m`'s layout, the others whole."""
    order = channel_order([size for _, size in m.layout], lambda index: np.take(index, list(indices), axis=sub))
    layout = tuple((d, len(indices) if k == sub else size) for k, (d, size) in enumerate(m.layout))
    return laid_out(reordered(m, order), layout)


def expand(m: ChannelMap, layout: tuple[tuple[int, int], ...]) -> ChannelMap:
    """`m`, whose layout is the outer part of `layout`, broadcast over the rest of `layout`."""
    inner = math.prod(size for _, size in layout[len(m.layout):])
    parts = [broadcast(slice_channels(m, c, c + 1), inner) for c in range(m.channels)]
    return laid_out(concat(parts), layout)


def spread(m: ChannelMap, layout: tuple[tuple[int, int], ...]) -> ChannelMap:
    """`m`, whose layout holds some of the dims of `layout` in the same order (each with the same
    size, or size 1: broadcast), broadcast over the other dims of `layout`: channel (i, j) of an
    outer product reads channel i of one operand."""
    dims = [d for d, _ in layout]
    grid = np.indices([size for _, size in layout])
    own = [grid[dims.index(d)] if size > 1 else np.zeros_like(grid[0]) for d, size in m.layout]
    order = np.ravel_multi_index(tuple(own), [size for _, size in m.layout]).reshape(-1)
    return laid_out(reordered(m, order.tolist()), layout)


def first_alike(m: ChannelMap) -> list[int]:
    """For each channel of `m`, the first channel that depends on exactly the same producer
    channels (itself, unless `m` holds copies: a head index repeated along the tokens)."""
    ids = np.empty(m.channels, dtype=np.int64)
    tables: dict[tuple, np.ndarray] = {}  # (producer, live, width) -> first channel of each producer channel
    for piece in m.pieces:
        for s in piece.sources:
            hi = s.span(piece.stop - piece.start)[1]
            table = tables.get((s.producer, s.live, s.width), np.empty(0, dtype=np.int64))
            if len(table) < hi:
                tables[(s.producer, s.live, s.width)] = np.concatenate([table, np.full(hi - len(table), -1)])
    first: dict[frozenset, int] = {}  # channels depending on several producers: by all of them
    seen: dict[tuple[frozenset, int], int] = {}  # (sources, length) of a piece -> the first such piece's start
    for piece in m.pieces:
        n = piece.stop - piece.start
        earlier = seen.setdefault((piece.sources, n), piece.start)
        if earlier != piece.start:  # the same sources as an earlier piece: channel k is alike its channel k
            ids[piece.start:piece.stop] = ids[earlier:earlier + n]
        elif len(piece.sources) == 1:
            (s,) = piece.sources
            table = tables[(s.producer, s.live, s.width)]
            at = s.offset + s.step * np.arange(n) if s.step else np.array([s.offset])
            new = table[at] < 0
            table[at[new]] = piece.start + np.flatnonzero(new)
            ids[piece.start:piece.stop] = table[at]
        elif all(s.step == 0 for s in piece.sources):  # every channel of the piece alike
            key = frozenset((s.producer, s.offset, s.live, s.width) for s in piece.sources)
            ids[piece.start:piece.stop] = first.setdefault(key, piece.start)
        else:
            for k in range(n):
                key = frozenset((s.producer, s.offset + s.step * k, s.live, s.width) for s in piece.sources)
                ids[piece.start + k] = first.setdefault(key, piece.start + k)
    return ids.tolist()


def union_layout(layouts: Sequence[tuple[tuple[int, int], ...]]) -> tuple[tuple[int, int], ...] | None:
    """Every channel dim of `layouts`, in dim order, with its size (a size 1 broadcasts): the
    channel dims of a product or an elementwise op of their maps. None when two sizes clash."""
    sizes: dict[int, int] = {}
    for layout in layouts:
        for d, size in layout:
            known = sizes.setdefault(d, size)
            if size != known and 1 not in (size, known):
                return None
            sizes[d] = max(size, known)
    return tuple(sorted(sizes.items()))


def line_up(m: ChannelMap, layout: tuple[tuple[int, int], ...]) -> ChannelMap | None:
    """`m` spread over `layout` for an elementwise combination: broadcast when all its channels are
    alike, expanded when its layout is the outer part of `layout`, spread when its dims are some of
    those of `layout`; None when it does not fit."""
    if is_uniform(m) or m.channels == 1:
        return laid_out(broadcast(m, math.prod(size for _, size in layout)), layout)
    if m.layout == layout:
        return m
    if m.layout == layout[:len(m.layout)]:
        return expand(m, layout)
    sizes, dims = dict(layout), [d for d, _ in m.layout]
    fits = dims == sorted(dims) and all(d in sizes and size in (sizes[d], 1) for d, size in m.layout)
    return spread(m, layout) if fits else None


def mix_groups(m: ChannelMap, size: int, out_size: int | None = None) -> ChannelMap:
    """Every `size` consecutive channels mixed together into `out_size` (default `size`) channels."""
    _check_unflattened(m, "mixing channel groups")
    out_size = size if out_size is None else out_size
    mixed: list[set[Source]] = [set() for _ in range(m.channels // size)]
    for p in m.pieces:
        for g in range(p.start // size, (p.stop - 1) // size + 1):
            a, b = max(p.start, g * size), min(p.stop, (g + 1) * size)
            for s in p.sources:
                lo, hi = s.shifted(a - p.start).span(b - a)
                mixed[g].add(Source(s.producer, lo, 0, s.live, hi - lo))
    pieces: list[Piece] = []
    for g, sources in enumerate(mixed):
        frozen = frozenset(sources)
        if pieces and pieces[-1].sources == frozen:  # the same sources as the group before: one piece
            pieces[-1] = pieces[-1]._replace(stop=(g + 1) * out_size)
        else:
            pieces.append(Piece(g * out_size, (g + 1) * out_size, frozen))
    return ChannelMap(len(mixed) * out_size, tuple(pieces), axis=m.axis, split=m.split if out_size == size else ())


def mix_sub_axes(m: ChannelMap, subs: Sequence[int]) -> ChannelMap:
    """Every channel mixed with the channels that differ from it only along the sub-axes `subs`
    of `m`'s layout (a softmax over the outer dim of channels split as (radix, C), as split
    attention does)."""
    for k in subs:
        size = m.layout[k][1]
        m = take(merge([select(m, k, r, r + 1) for r in range(size)]), k, [0] * size)
    return m


def summed_over(m: ChannelMap, sub: int) -> ChannelMap:
    """`m` summed over sub-axis `sub` of its layout (the contracted dim of a matmul): each channel
    left depends on every channel that differs from it only along `sub`; that sub-axis is gone."""
    layout = m.layout[:sub] + m.layout[sub + 1:]
    if sub == len(m.layout) - 1:
        m = mix_groups(m, m.layout[sub][1], 1)
    else:
        m = select(mix_sub_axes(m, [sub]), sub, 0, 1)
    return laid_out(m, layout) if layout else m


def mix(m: ChannelMap, channels: int, axis: int | None = None) -> ChannelMap:
    """`channels` channels (along `axis`, default `m`'s layout) each depending on every channel of
    `m`: what a weightless op that mixes channels gives (LayerNorm or softmax over the channels, a
    mean over them, the contracted side of a matmul)."""
    sources = frozenset(Source(s.producer, lo, 0, s.live, hi - lo) for p in m.pieces for s in p.sources
                        for lo, hi in [s.span(p.stop - p.start)])
    same = axis is None and channels == m.channels
    return ChannelMap(channels, (Piece(0, channels, sources),), axis=m.axis if axis is None else axis,
                      split=m.split if same else ())


def is_uniform(m: ChannelMap) -> bool:
    """True when every channel of `m` has the same sources (a broadcast or mixed map): its channel
    axis can then be taken to be any dimension."""
    return len(m.pieces) == 1 and all(s.step == 0 for s in m.pieces[0].sources)


def merge(maps: list[ChannelMap]) -> ChannelMap:
    """Elementwise combination (add, mul, ...): every channel depends on that channel of each map."""
    channels = maps[0].channels
    if len({(m.unit, m.layout) for m in maps}) != 1:
        raise GradpathError("elementwise op on tensors whose channels do not line up")
    cuts = set().union(*(m.boundaries() for m in maps))
    return _from_boundaries(
        channels, cuts, lambda a, b: frozenset().union(*(m.sources_from(a, b) for m in maps)), maps[0]
    )


def detach(m: ChannelMap) -> ChannelMap:
    """`.detach()`: the forward dependencies stay, the gradient edges are cut."""
    pieces = tuple(
        Piece(p.start, p.stop, frozenset(s._replace(live=False) for s in p.sources)) for p in m.pieces
    )
    return replace(m, pieces=pieces)


def zero_channels(m: ChannelMap, zero: list[bool]) -> ChannelMap:
    """Multiplication by a constant that is zero on the channels where `zero` is True."""
    cuts = {c for c in range(1, m.channels) if zero[c] != zero[c - 1]}
    return _from_boundaries(
        m.channels, cuts | m.boundaries(),
        lambda a, b: frozenset() if zero[a] else m.sources_from(a, b), m,
    )


def with_unit(m: ChannelMap, unit: int) -> ChannelMap:
    """The same channels after flattening `unit` features per channel."""
    return replace(m, unit=m.unit * unit)


def consumed_ranges(m: ChannelMap) -> list[tuple[int, int, int]]:
    """(producer, lo, hi) producer channel ranges whose gradient flows back through `m`."""
    ranges = []
    for p in m.pieces:
        for s in p.sources:
            if s.live and s.producer != INPUT:
                ranges.append((s.producer, *s.span(p.stop - p.start)))
    return ranges


def producers(m: ChannelMap) -> set[int]:
    """Every producer `m` depends on in the forward pass (detached ones and the input included)."""
    return {s.producer for p in m.pieces for s in p.sources}
