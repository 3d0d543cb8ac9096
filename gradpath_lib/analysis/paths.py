"""Gradient timestamps, sources and path lengths of every weighted layer and channel group.

Definitions (the counting convention of the whole library):

- A *weighted layer* is a convolution, linear layer or embedding (an embedding reads integer
  ids, so its paths end there: nothing upstream of it gets gradient through it); BatchNorm (its
  affine parameters included), activations, pooling, upsampling and dropout are not weighted
  layers. Neither are ops that mix channels without weights (LayerNorm, GroupNorm, softmax over
  the channels, attention's matmuls): they add no timestamp, but each channel they mix reaches the loss
  through the consumers of all the channels it is mixed with.
- A *gradient path* of a layer runs from its output to the loss; its *length* is the number of
  weighted layers on it, the layer itself included. The layer producing the logits has a path
  of length 1: it receives gradient at *timestamp* 1 (the first backward step).
- The *gradient timestamps* of a layer (or of a channel group of its output) are the set of the
  lengths of all its gradient paths; its *shortest* and *longest gradient path* are their min
  and max. Each backward step is one breadth-first level from the loss.
- The *gradient sources* at timestamp t are the downstream weighted-layer positions (or `loss`)
  that consume the group and themselves receive gradient at timestamp t - 1 (the loss at 0).
- The *gradient combination* of a group is the set of its (timestamp, source) pairs; its size
  is the number of pairs. The *number of paths* counts distinct sequences of weighted-layer
  positions from the group to the loss (an exact Python int).
- *Channel groups* of a layer's output are the coarsest partition of its channels in which all
  channels of a group have the same consumers, and feed the same channel groups of each; it is
  induced by the downstream slicing, splits, concatenations and partial adds (PRN's masked and
  unmasked channels are separate groups), and by grouped convolutions whose output groups part.
- A module called at several places is one parameter with several *positions*; each position
  is reported, and `GradientPathReport.parameters` aggregates them (timestamps = union, number
  of paths = the sum over positions of each position's distinct paths, which counts a path once
  even when several channel groups of the position share it). A weight tied between modules
  (a language model's output layer and token embedding) is one parameter too: its modules'
  positions are aggregated under the first module's name.
- Network level: the *longest shortest path* is taken over layers, not groups: a position's
  shortest path is the smallest timestamp of the union of its groups (its best-reached
  channels), and the network's is the largest of these over all positions; the *longest path*
  is the largest timestamp of any group. The *gradient-combination size*, in contrast, is a
  per-group quantity, averaged over the network's filters (output channels). *Aggregated
  features* of a position is the number of distinct producers (weighted layers or the network
  input) whose outputs are concatenated or added into its input, detached ones included.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd
import torch
from torch import nn

from .graph import trace_layers
from .layer_graph import LOSS, Edge, LayerGraph, Position

LOSS_NAME = "loss"


def _bits(mask: int) -> tuple[int, ...]:
    """The set bits of `mask` as sorted ints (timestamp sets are stored as bit masks)."""
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


@dataclass(frozen=True)
class GroupPaths:
    """The gradient paths of channels [start, stop) of one weighted-layer position."""

    position: Position
    start: int
    stop: int
    timestamps: tuple[int, ...]
    sources: dict[int, tuple[str, ...]]  # timestamp -> names of source positions ("loss")
    n_paths: int

    @property
    def shortest(self) -> int | None:
        """Fewest weighted layers between this group and the loss (None if it gets no gradient)."""
        return self.timestamps[0] if self.timestamps else None

    @property
    def longest(self) -> int | None:
        """Most weighted layers between this group and the loss (None if it gets no gradient)."""
        return self.timestamps[-1] if self.timestamps else None

    @property
    def combination(self) -> frozenset[tuple[int, str]]:
        """The gradient combination: every (timestamp, source) pair."""
        return frozenset((t, s) for t, names in self.sources.items() for s in names)


@dataclass
class GradientPathReport:
    """Structural gradient paths of one model: per group rows, per parameter and per network."""

    graph: LayerGraph
    groups: list[GroupPaths]
    position_paths: dict[int, int]  # position id -> distinct paths from its output to the loss

    @cached_property
    def layers(self) -> pd.DataFrame:
        """One row per (position, channel group)."""
        rows = [
            {
                "layer": g.position.name, "module": g.position.module, "position": g.position.call,
                "kind": g.position.kind, "group_start": g.start, "group_stop": g.stop,
                "channels": g.stop - g.start, "timestamps": g.timestamps, "shortest": g.shortest,
                "longest": g.longest, "n_paths": g.n_paths, "combination_size": len(g.combination),
                "sources_at_first": g.sources.get(g.shortest, ()),
                "aggregated_features": self.graph.aggregated[g.position.id],
            }
            for g in self.groups
        ]
        frame = pd.DataFrame(rows)
        frame["n_paths"] = frame["n_paths"].astype(object)  # exact ints, never float
        return frame

    @cached_property
    def parameters(self) -> pd.DataFrame:
        """One row per weight (a weighted module, or modules sharing a tied weight, named by the
        first), its positions aggregated (timestamps = union, n_paths = the sum of each position's
        distinct paths)."""
        rows = []
        for module in dict.fromkeys(p.parameter for p in self.graph.positions):
            groups = [g for g in self.groups if g.position.parameter == module]
            positions = {p.id for p in self.graph.positions if p.parameter == module}
            stamps = sorted(set().union(*(g.timestamps for g in groups)))
            rows.append({
                "module": module, "positions": len(positions), "timestamps": tuple(stamps),
                "shortest": stamps[0] if stamps else None, "longest": stamps[-1] if stamps else None,
                "n_paths": sum(self.position_paths[p] for p in positions),
                "combination_size": len(frozenset().union(*(g.combination for g in groups))),
            })
        return pd.DataFrame(rows)

    @cached_property
    def network(self) -> dict[str, Any]:
        """Network-level metrics (Table 1 and the paper's network-level criterion).

        `longest_shortest_path` is taken over layers (each position's shortest path over the
        union of its groups' timestamps); `combination_size_mean` is per group, averaged over
        filters (every output channel counts once): how many gradients reach a filter.
        `distinct_combinations_mean` is how varied they are: the number of different
        combinations among a position's channel groups, averaged over positions (1 when every
        channel of every layer receives the same ones, as in a ResNet; more where a layer's
        channels are reached by different paths, as PRN's masked shortcut does), and
        `split_combination_layers` counts the positions with more than one."""
        per_position: dict[int, set[int]] = {}
        combinations: dict[int, set[frozenset]] = {}
        for g in self.groups:
            per_position.setdefault(g.position.id, set()).update(g.timestamps)
            combinations.setdefault(g.position.id, set()).add(g.combination)
        reached = [stamps for stamps in per_position.values() if stamps]
        channels = sum(g.stop - g.start for g in self.groups)
        aggregated = list(self.graph.aggregated.values())
        return {
            "n_weighted_layers": len({p.parameter for p in self.graph.positions}),
            "n_positions": len(self.graph.positions),
            "n_groups": len(self.groups),
            "longest_shortest_path": max((min(s) for s in reached), default=None),
            "longest_path": max((max(s) for s in reached), default=None),
            "aggregated_features_mean": sum(aggregated) / len(aggregated),
            "aggregated_features_max": max(aggregated),
            # every output channel (one filter) counts once: the mean over the network's filters
            "combination_size_mean": sum((g.stop - g.start) * len(g.combination) for g in self.groups) / channels,
            "distinct_combinations_mean": sum(map(len, combinations.values())) / len(combinations),
            "split_combination_layers": sum(len(c) > 1 for c in combinations.values()),
        }


Users = tuple[tuple[int, int], ...]  # sorted (consumer id, bit mask of the consumer's groups it feeds)


def _groups_hit(starts: list[int], lo: int, hi: int) -> int:
    """Bit mask of the groups (given by their sorted first channels) that channels [lo, hi) touch."""
    first, last = bisect.bisect_right(starts, lo) - 1, bisect.bisect_left(starts, hi) - 1
    return (1 << (last + 1)) - (1 << first)


def _channel_groups(channels: int, uses: list[tuple[int, int, int, int]]) -> list[tuple[int, int, Users]]:
    """The coarsest split of `channels` into (start, stop, users) with the same users throughout,
    from `uses` (lo, hi, consumer, mask): channels [lo, hi) feed the groups `mask` of `consumer`."""
    cuts = sorted({0, channels} | {c for lo, hi, _, _ in uses for c in (lo, hi)})
    by_start = sorted(uses)
    active: list[tuple[int, int, int, int]] = []
    merged: list[tuple[int, int, Users]] = []
    k = 0
    for a, b in zip(cuts, cuts[1:]):
        while k < len(by_start) and by_start[k][0] <= a:
            active.append(by_start[k])
            k += 1
        active = [u for u in active if u[1] > a]
        masks: dict[int, int] = {}
        for _, _, consumer, mask in active:
            masks[consumer] = masks.get(consumer, 0) | mask
        users = tuple(sorted(masks.items()))
        if merged and merged[-1][2] == users:
            merged[-1] = (merged[-1][0], b, users)
        else:
            merged.append((a, b, users))
    return merged


class _Paths:
    """Channel groups, timestamps and path counts of every position, computed from the loss back
    (consumers always come after their producers in `graph.positions`)."""

    def __init__(self, graph: LayerGraph):
        edges: dict[int, list[Edge]] = {p.id: [] for p in graph.positions}
        for e in graph.edges:
            edges[e.producer].append(e)
        self.groups: dict[int, list[tuple[int, int, Users]]] = {LOSS: [(0, 1, ())]}
        self.group_stamps: dict[int, list[int]] = {LOSS: [1]}  # bit t set <=> gradient arrives at timestamp t
        self.counts: dict[tuple[int, int], int] = {(LOSS, 1): 1}  # (position, group mask) -> distinct paths
        for pos in reversed(graph.positions):
            starts = {e.consumer: [a for a, _, _ in self.groups[e.consumer]] for e in edges[pos.id]}
            uses = [(e.lo, e.hi, e.consumer, _groups_hit(starts[e.consumer], e.out_lo, e.out_hi)) for e in edges[pos.id]]
            self.groups[pos.id] = _channel_groups(pos.out_channels * pos.copies, uses)
            self.group_stamps[pos.id] = [self.reach(users) for _, _, users in self.groups[pos.id]]
            self.n_paths(pos.id, self.all_groups(pos.id))

    def all_groups(self, position: int) -> int:
        return (1 << len(self.groups[position])) - 1

    def stamps(self, position: int, mask: int) -> int:
        """Timestamps (bit mask) of the groups `mask` of `position`."""
        out = 0
        for i, stamp in enumerate(self.group_stamps[position]):
            if mask >> i & 1:
                out |= stamp
        return out

    def reach(self, users: Users) -> int:
        """Timestamps of channels used by `users`: one backward step after each user's."""
        out = 0
        for consumer, mask in users:
            out |= self.stamps(consumer, mask) << 1
        return out

    def _next(self, position: int, mask: int) -> Users:
        """The users of the groups `mask` of `position`, their masks merged per consumer."""
        masks: dict[int, int] = {}
        for i, (_, _, users) in enumerate(self.groups[position]):
            if mask >> i & 1:
                for consumer, m in users:
                    masks[consumer] = masks.get(consumer, 0) | m
        return tuple(masks.items())

    def n_paths(self, position: int, mask: int) -> int:
        """Distinct position sequences from the groups `mask` of `position` to the loss (without
        recursion: a network's paths can be longer than Python's recursion limit)."""
        stack = [(position, mask)]
        while stack:
            key = stack[-1]
            if key in self.counts:
                stack.pop()
                continue
            after = self._next(*key)
            missing = [u for u in after if u not in self.counts]
            if missing:
                stack += missing
                continue
            self.counts[key] = sum(self.counts[u] for u in after)
            stack.pop()
        return self.counts[(position, mask)]


def _folded(groups: list[tuple[int, int, Users]], channels: int, copies: int) -> list[tuple[int, int, int]]:
    """(start, stop, mask) of the output channels of a position whose `copies` copies of its
    `channels` channels are told apart: channel c is in the groups `mask`, those holding any of its
    copies j * channels + c (all of them when there is one copy)."""
    starts = [start for start, _, _ in groups]
    cuts = sorted({0, channels} | {start % channels for start in starts})
    rows: list[tuple[int, int, int]] = []
    for a, b in zip(cuts, cuts[1:]):
        mask = 0
        for j in range(copies):
            mask |= _groups_hit(starts, j * channels + a, j * channels + b)
        if rows and rows[-1][2] == mask:
            rows[-1] = (rows[-1][0], b, mask)
        else:
            rows.append((a, b, mask))
    return rows


def gradient_paths(graph: LayerGraph) -> GradientPathReport:
    """Breadth-first from the loss over the weighted-layer DAG: every group's paths (the groups
    of a position with several copies taken over its real output channels)."""
    paths = _Paths(graph)
    names = {p.id: p.name for p in graph.positions} | {LOSS: LOSS_NAME}
    rows = []
    for pos in graph.positions:
        for start, stop, group_mask in _folded(paths.groups[pos.id], pos.out_channels, pos.copies):
            users = paths._next(pos.id, group_mask)
            timestamps = _bits(paths.reach(users))
            sources = {t: tuple(sorted(names[q] for q, mask in users if paths.stamps(q, mask) >> (t - 1) & 1))
                       for t in timestamps}
            rows.append(GroupPaths(pos, start, stop, timestamps, sources, sum(paths.n_paths(*u) for u in users)))
    return GradientPathReport(graph, rows, {p.id: paths.n_paths(p.id, paths.all_groups(p.id)) for p in graph.positions})


def analyze_model(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32),
                  input_dtype: torch.dtype = torch.float32, *,
                  trust_custom_backward: bool = False) -> GradientPathReport:
    """Structural gradient path analysis of `model` for one input of `input_shape` (no batch);
    an integer `input_dtype` makes the input token ids for the model's `nn.Embedding`. A custom
    autograd Function is refused unless `trust_custom_backward` (`graph.trace_layers`)."""
    return gradient_paths(trace_layers(model, tuple(input_shape), input_dtype,
                                       trust_custom_backward=trust_custom_backward))
