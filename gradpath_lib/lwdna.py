"""LW-DNA (the Heterogeneity Hypothesis, Li et al., CVPR 2021): find a layer-wise differentiated
architecture by shrinking a widened network in one shot, at a FLOPs target.

The procedure (the `lwdna` task in `gradpath_lib.train.lwdna` runs it inside the baseline's
epoch budget): widen every layer of a baseline by `widen`; train it briefly; score every channel
once; drop the globally lowest-scored channels (one global threshold, found by binary search) until
the FLOPs of the shrunk network reach the target, never below `floor` x the widened width of a
layer, with one mask for all channels tied by residual adds (`channel_graph`); slice the kept
weights into a dense narrower network; train it for the remaining epochs.

Score: first-order Taylor saliency |sum over batch and positions of a * dL/da| of each channel's
BatchNorm output a, the signed sums of residual-tied positions added before the absolute value,
averaged over a few batches. It is the loss change, to first order, of zeroing that channel
everywhere it appears. It is also exactly the gradient of a per-channel multiplier fixed at 1 after
each BN, which is what the official code scores (|dL/dz| of per-channel latent vectors, there
produced by a hypernetwork we do not need), so it keeps the paper's criterion without the
hypernetwork. Scores are raw (not normalized per layer), as a global threshold in the paper is.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GradpathError
from .models.channel_graph import ChannelGraph
from .models.registry import get_entry, model_kwargs

LAYER_FLOOR = 0.4  # keep at least this fraction of every layer's widened width (as the paper)
DEFAULT_WIDEN = 2.0  # the paper's width multiplier before shrinking
# The search stops at the first channel whose removal brings FLOPs <= target, so the error is
# below one channel's cost; the task fails (`check_flops`) when it exceeds this relative tolerance.
FLOPS_TOLERANCE = 0.02
WIDTH_KEYS = ("widths", "stem_width")  # the factory arguments that set a network's channel widths


@dataclass(frozen=True)
class Shrink:
    """The channels kept in each group, their counts and FLOPs, and the global threshold."""

    keep: list[torch.Tensor]  # boolean mask per channel group
    counts: list[int]
    flops: int
    target_flops: int
    threshold: float  # channels scored below this were dropped (unless a layer floor kept them)

    @property
    def flops_error(self) -> float:
        """(FLOPs - target) / target: how far the shrunk network is from the target."""
        return (self.flops - self.target_flops) / self.target_flops


def taylor_scores(model: nn.Module, graph: ChannelGraph,
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Mean over batches of |sum a * dL/da| per channel (module docstring); eval mode, weights unchanged."""
    norm_layers = [name for name, layer in graph.layers.items() if layer.output is None and not layer.depthwise]
    covered = {g for name in norm_layers for g in graph.layers[name].inputs}
    points = {name: graph.layers[name].inputs for name in norm_layers}
    points.update({name: [layer.output] for name, layer in graph.layers.items()
                   if layer.output is not None and layer.output not in covered})
    totals = [torch.zeros(size) for size in graph.sizes]
    signed: list[torch.Tensor] = []

    def hook_for(segments: list[int]):
        def forward_hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            def grad_hook(grad: torch.Tensor) -> None:
                dims = [d for d in range(output.dim()) if d != 1]
                per_channel = (output.detach() * grad).sum(dims).float().cpu()
                for g, part in zip(segments, per_channel.split([graph.sizes[g] for g in segments])):
                    signed[g] += part
            output.register_hook(grad_hook)
        return forward_hook

    handles = [model.get_submodule(name).register_forward_hook(hook_for(segs)) for name, segs in points.items()]
    was_training, n_batches = model.training, 0
    model.eval()
    try:
        for x, y in batches:
            signed[:] = [torch.zeros(size) for size in graph.sizes]
            F.cross_entropy(model(x), y).backward()
            for total, s in zip(totals, signed):
                total += s.abs()
            n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if n_batches == 0:
        raise GradpathError("channel scoring got no batch; give it at least one")
    return [t / n_batches for t in totals]


def random_scores(graph: ChannelGraph, generator: torch.Generator) -> list[torch.Tensor]:
    """Uniform random channel scores: the control that asks whether the score matters at all."""
    return [torch.rand(size, generator=generator) for size in graph.sizes]


def layer_floors(graph: ChannelGraph, floor: float) -> list[int]:
    """The fewest channels each group may keep: ceil(floor x width), all of a fixed group."""
    return [size if fixed else max(1, math.ceil(floor * size)) for size, fixed in zip(graph.sizes, graph.fixed)]


def find_architecture(graph: ChannelGraph, scores: list[torch.Tensor], target_flops: int,
                      floor: float = LAYER_FLOOR) -> Shrink:
    """Binary-search the global threshold: drop the fewest lowest-scored channels that reach `target_flops`."""
    if not 0.0 < floor <= 1.0:
        raise GradpathError(f"layer floor must be in (0, 1], got {floor}")
    prunable = graph.prunable()
    floors = layer_floors(graph, floor)
    flat_scores = torch.cat([scores[g].float() for g in prunable])
    flat_groups = torch.cat([torch.full((graph.sizes[g],), g) for g in prunable])
    order = torch.sort(flat_scores, stable=True).indices  # ascending; ties in channel order
    n_groups = len(graph.sizes)

    def counts_after(n_dropped: int) -> list[int]:
        dropped = torch.bincount(flat_groups[order[:n_dropped]], minlength=n_groups).tolist()
        return [max(f, size - d) for f, size, d in zip(floors, graph.sizes, dropped)]

    lowest = graph.flops(counts_after(len(order)))
    if lowest > target_flops:
        raise GradpathError(f"FLOPs target {target_flops} is unreachable: the layer floor ({floor} of each "
                            f"widened layer) alone needs {lowest}; lower the floor or raise the target")
    lo, hi = 0, len(order)  # invariant: counts_after(hi) meets the target
    while lo < hi:
        mid = (lo + hi) // 2
        if graph.flops(counts_after(mid)) <= target_flops:
            hi = mid
        else:
            lo = mid + 1
    counts = counts_after(hi)
    keep = []
    for g, size in enumerate(graph.sizes):
        mask = torch.zeros(size, dtype=torch.bool)
        ascending = torch.sort(scores[g].float(), stable=True).indices  # the global order, within g
        mask[ascending[size - counts[g]:]] = True
        keep.append(mask)
    threshold = float(flat_scores[order[hi - 1]]) if hi > 0 else float("-inf")
    return Shrink(keep, counts, graph.flops(counts), int(target_flops), threshold)


def check_flops(shrink: Shrink, model: str, tolerance: float = FLOPS_TOLERANCE) -> None:
    """Raise GradpathError if the architecture found for `model` misses its FLOPs target by more than `tolerance`."""
    if abs(shrink.flops_error) > tolerance:
        raise GradpathError(
            f"LW-DNA on {model!r}: the found architecture has {shrink.flops} FLOPs, {shrink.flops_error:+.1%} from "
            f"the target {shrink.target_flops} (tolerance {tolerance:.0%}): at these widths one channel costs more "
            "than the tolerance; widen the network, change the target or raise the tolerance")


def widened_kwargs(name: str, scale: str, factor: float, **overrides: Any) -> dict[str, Any]:
    """The factory arguments of registry model `name` at `scale` with every width times `factor`."""
    kwargs = model_kwargs(name, scale, **overrides)
    params = inspect.signature(get_entry(name).factory).parameters
    missing = [key for key in WIDTH_KEYS if key not in params]
    if missing:
        raise GradpathError(f"model {name!r} cannot be widened: its factory lacks {missing}; LW-DNA needs "
                            f"the width arguments {list(WIDTH_KEYS)}")
    widths = kwargs.get("widths", params["widths"].default)
    stem_width = kwargs.get("stem_width", params["stem_width"].default)
    return {**kwargs, "widths": tuple(round(w * factor) for w in widths), "stem_width": round(stem_width * factor)}
