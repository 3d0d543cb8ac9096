"""Check a traced layer graph against autograd (`graph.trace_layers` runs it after tracing).

torch.fx records neither autograd's grad mode nor custom backward passes: it traces through
`torch.no_grad()` blocks and into the forward of a custom `torch.autograd.Function`. So the model
runs once more with gradients enabled, its output is compared with the traced graph's, and its
autograd graph is walked from the output: a custom Function in it raises `GradpathError` naming
the Function (unless its backward is trusted to follow its forward), and so does a position that
the traced graph connects to the loss but autograd does not reach.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import BackwardCFunction

from ..errors import GradpathError
from .layer_calls import weighted_calls
from .layer_graph import LOSS, LayerGraph, tensors_in


def _reaching_loss(graph: LayerGraph) -> set[int]:
    """Ids of the positions whose output reaches the loss through live (not detached) edges."""
    consumers: dict[int, set[int]] = {}
    for edge in graph.edges:
        consumers.setdefault(edge.producer, set()).add(edge.consumer)
    reached = {LOSS}
    for pos in reversed(graph.positions):  # consumers always come after their producers
        if consumers.get(pos.id, set()) & reached:
            reached.add(pos.id)
    return reached - {LOSS}


def _autograd_run(model: nn.Module, x: torch.Tensor) -> tuple[dict[tuple[str, int], Any], Any]:
    """One forward of `model` with gradients on: each weighted position's output node, and the output."""
    nodes: dict[tuple[str, int], Any] = {}

    def keep(position: tuple[str, int], output: torch.Tensor) -> None:
        nodes[position] = output.grad_fn  # taken now: a later in-place op replaces it

    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # every weighted output then has an autograd node unless grad mode is off
        p.requires_grad_(True)
    try:
        with torch.enable_grad(), weighted_calls(model, keep):
            return nodes, model(x)
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _reached_nodes(model: nn.Module, output: Any, trust_custom_backward: bool = False) -> set[Any]:
    """The autograd nodes reachable backward from `output`; a custom Function among them is an
    error unless `trust_custom_backward` (its backward is then taken to follow its forward's ops)."""
    stack = [t.grad_fn for t in tensors_in(output)]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if isinstance(node, BackwardCFunction) and not trust_custom_backward:
            name = type(node).__name__.removesuffix("Backward")
            raise GradpathError(
                f"gradient path analysis does not support the custom autograd Function {name!r} in "
                f"{type(model).__name__}: torch.fx traces its forward but cannot see its backward. If its "
                "backward is the derivative of its forward (a memory-saving activation), analyse with "
                "`--trust-custom-backward` (`trust_custom_backward=True`), and `--check` measures whether it is"
            )
        seen.add(node)
        stack += [child for child, _ in node.next_functions]
    return seen


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` equals `b` up to float rounding (1e-4 of b's largest entry), NaNs alike."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b) or not a.dtype.is_floating_point:
        return torch.equal(a, b)
    same_nan = torch.equal(a.isnan(), b.isnan())
    a, b = a.nan_to_num(0.0, 0.0, 0.0), b.nan_to_num(0.0, 0.0, 0.0)
    return same_nan and float((a - b).abs().max()) <= 1e-4 * (1 + float(b.abs().max()))


def _check_same_output(model: nn.Module, traced: Any, output: Any) -> None:
    """Raise unless the traced graph's output (`traced`) is the model's own (`output`), up to float
    rounding: the graph misses what changes a tensor under another name (`z = y; z += 1` is traced
    as `z = y + 1`, so later uses of y do not see it)."""
    pairs = list(zip(tensors_in(traced), tensors_in(output)))
    if len(pairs) != len(tensors_in(output)) or not all(_close(a, b.detach()) for a, b in pairs):
        raise GradpathError(
            f"the graph traced from {type(model).__name__} computes another output than the model itself: "
            "it changes a tensor in place under another name (`z = y; z += 1` is traced as z = y + 1, so "
            "later uses of y miss it; write `z = z + 1`, or y.add_(1) on the tensor itself), or it reads "
            "state that changes from call to call")


def check_autograd(model: nn.Module, graph: LayerGraph, x: torch.Tensor, traced: Any,
                    trust_custom_backward: bool = False) -> None:
    """Raise unless the model computes the traced graph's output `traced` on `x` and autograd
    reaches every position the traced graph connects to the loss (`_reached_nodes`)."""
    nodes, output = _autograd_run(model, x)
    _check_same_output(model, traced, output)
    seen = _reached_nodes(model, output, trust_custom_backward)
    reaching = _reaching_loss(graph)
    cut = [p.name for p in graph.positions if p.id in reaching and nodes.get((p.module, p.call)) not in seen]
    if cut:
        raise GradpathError(
            f"{type(model).__name__}: layer(s) {', '.join(repr(c) for c in cut)} receive gradient in the "
            "traced graph but autograd does not reach them: gradient is cut somewhere the tracer cannot "
            "see, e.g. torch.no_grad() or a custom Function"
        )
