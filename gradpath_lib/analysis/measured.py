"""Measured gradient spectrum: how much gradient each channel group receives through paths of
each length, on a real batch, exactly (no path sampling).

Method: one forward pass in eval mode (BatchNorm uses its running statistics, dropout is off)
with the graph cut at every weighted layer's input: the layer reads a detached copy of its input,
so every route from the loss to a layer's output crosses no other weighted layer. Back-
propagation is linear in the incoming gradient once the activations are fixed, so the paths can
be counted one weighted layer at a time: step 1 back-propagates dL/dlogits to every weighted
layer's output (the gradient through paths of that one layer, timestamp 1) and to every cut copy
(the gradient that has crossed one layer); step t + 1 carries the gradient at the cut copies of
step t across the cuts, into the graph above them, and so on. Step t's gradient at a layer's
output is exactly the sum over its paths of t weighted layers, and summing the steps gives the
ordinary gradient (of the eval-mode network). Cost: one forward pass and one backward pass per
timestamp (as many as the longest path); memory holds one forward pass of the batch, whatever the
path lengths (twice the weighted layers' inputs and outputs for a model that changes tensors in
place, `timestamp_steps`). The gradient stays per sample (the batch is never replicated or reshaped), so models
that fold patches into the batch or repeat an encoding over it are measured as they are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GradpathError
from .graph import example_input
from .layer_graph import tensors_in
from .layer_calls import Position, weighted_calls
from .paths import GradientPathReport, analyze_model
from .unroll import unfused_attention, unroll_modules

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CHECK_SAMPLES = 2  # random inputs of `structure_check`
RESCALE_LIMIT = 1000  # most powers of two one rescaling step shifts by (2.0 ** 1024 overflows)


@contextlib.contextmanager
def _cut_at_weighted_inputs(model: nn.Module, copies: bool = False) -> Iterator[tuple[dict[Position, torch.Tensor], list]]:
    """While open, every weighted layer reads a detached copy of its input and keeps its output:
    yields (outputs by position, [(input, copy)] for each input that carries gradient). With
    `copies`, for a model that changes tensors in place, the tensors kept are copies that the
    model never sees (a kept output changed later would take the gradient of what replaced it)."""
    outputs: dict[Position, torch.Tensor] = {}
    cuts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def cut(x: object) -> object:
        if not (isinstance(x, torch.Tensor) and x.requires_grad):
            return x
        copy = (x.detach().clone() if copies else x.detach()).requires_grad_()
        cuts.append((x.clone() if copies else x, copy))
        return copy

    def keep(position: Position, output: torch.Tensor) -> torch.Tensor | None:
        outputs[position] = output
        return output.clone() if copies else None

    with weighted_calls(model, keep, cut):
        yield outputs, cuts


class Step(NamedTuple):
    """The gradient that arrived at every weighted-layer position through paths of one length
    (None: none did), times 2 ** -exponent (exponent 0 unless the steps are rescaled)."""

    grads: dict[Position, torch.Tensor | None]
    exponent: int


def _on(labels: Any, device: torch.device) -> Any:
    """`labels` (a tensor, or a list of them) on `device`."""
    return [_on(x, device) for x in labels] if isinstance(labels, (list, tuple)) else labels.to(device)


def timestamp_steps(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn = F.cross_entropy,
    steps: int | None = None, rescale: bool = False, copies: bool = False,
) -> Iterator[Step]:
    """dL/d(output) of every weighted-layer position, one timestamp at a time: the t-th `Step`
    yielded holds the gradient that arrived through paths of t weighted layers. Stops after
    `steps` timestamps or when no gradient is left to carry. With `rescale`, the gradient carried
    to the next step is multiplied by a power of two that brings its largest entry near 1 (exact
    in floating point), and each step says by how much: a path through dozens of layers scaled by
    1e-5 (CaiT's LayerScale) then keeps a gradient that its dtype could not hold. The model runs in
    eval mode and is left in the mode it was in. `copies` is for a model that changes tensors
    in place (`LayerGraph.assigns`): the forward then keeps copies of each weighted layer's input
    and output, about twice the memory."""
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with _cut_at_weighted_inputs(model, copies) as (outputs, cuts):
            returned = model(images.to(device))
        floats = [t for t in tensors_in(returned) if t.is_floating_point()]
        firsts = [t.detach().to(torch.promote_types(t.dtype, torch.float32)).requires_grad_() for t in floats]
        # one output: the loss of it; several (a tuple, a dict, a model output): the loss of their list
        loss = loss_fn(firsts[0] if isinstance(returned, torch.Tensor) else firsts, _on(labels, device))
        carried = [(t, g.to(t.dtype)) for t, g in zip(floats, torch.autograd.grad(loss, firsts)) if t.requires_grad]
        if not carried:
            raise GradpathError("the measured spectrum needs a model returning a tensor that carries gradient")
        heads, incoming = [t for t, _ in carried], [g for _, g in carried]
        keys = list(outputs)
        targets = [outputs[k] for k in keys] + [copy for _, copy in cuts]
        step, exponent = 0, 0
        while heads and (steps is None or step < steps):
            grads = torch.autograd.grad(heads, targets, incoming, retain_graph=True, allow_unused=True)
            yield Step(dict(zip(keys, grads[:len(keys)])), exponent)
            crossed = [(x, g) for (x, _), g in zip(cuts, grads[len(keys):]) if g is not None]
            heads, incoming = [x for x, _ in crossed], [g for _, g in crossed]
            largest = max((float(g.abs().max()) for g in incoming), default=0.0)
            if rescale and largest > 0:
                shift = max(-RESCALE_LIMIT, min(RESCALE_LIMIT, -math.frexp(largest)[1]))
                incoming = [g * 2.0 ** shift for g in incoming]
                exponent -= shift
            step += 1
    finally:
        for m, training in modes.items():
            m.training = training


def gradients_by_timestamp(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, longest_path: int,
    loss_fn: LossFn = F.cross_entropy, copies: bool = False,
) -> dict[Position, torch.Tensor | None]:
    """dL/d(output) of every weighted-layer position, split by timestamp: values have shape
    (longest_path, *output shape), entry t the gradient through paths of t + 1 weighted layers
    (None: no gradient at any timestamp). See `timestamp_steps`; pass `copies=report.graph.assigns`
    for a model that changes tensors in place."""
    split: dict[Position, list[torch.Tensor | None]] = {}
    for t, step in enumerate(timestamp_steps(model, images, labels, loss_fn, longest_path, copies=copies)):
        for key, grad in step.grads.items():
            split.setdefault(key, [None] * longest_path)[t] = grad
    stacked: dict[Position, torch.Tensor | None] = {}
    for key, per_step in split.items():
        known = next((g for g in per_step if g is not None), None)
        stacked[key] = None if known is None else torch.stack(
            [torch.zeros_like(known) if g is None else g for g in per_step])
    return stacked


def _log2_norm(grad: torch.Tensor) -> float:
    """log2 of the L2 norm (-inf for a zero gradient), in float64, scaled by the largest entry first
    so that the squares of a long path's tiny gradient (below 1e-154) do not underflow to zero."""
    grad = grad.double()
    largest = grad.abs().max()
    if not largest > 0:
        return -math.inf
    return math.log2(float(largest)) + math.log2(float((grad / largest).pow(2).sum().sqrt()))


def measured_gradient_spectrum(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    report: GradientPathReport | None = None,
) -> pd.DataFrame:
    """Gradient norm per (layer position, channel group, timestamp) on one batch.

    Columns: layer, module, position, group_start, group_stop, timestamp, grad_norm, share
    (grad_norm over the group's summed norms), log2_grad_norm (finite wherever gradient arrives,
    also when grad_norm is below what float64 holds: the steps are rescaled, `timestamp_steps`).
    A group's channels are cut along the dimension
    that holds its position's output channels (the last one for a Linear on a channels-last map).
    `report` (the structural analysis) is computed when not given; the timestamps run up to its
    longest path.
    """
    model = unroll_modules(model)  # the positions of `report` name its projections
    report = report or analyze_model(model, tuple(images.shape[1:]), images.dtype)
    longest = report.network["longest_path"]
    if longest is None:
        raise GradpathError(f"no weighted layer of {type(model).__name__} receives gradient from its output")
    logs = [[-math.inf] * longest for _ in report.groups]  # log2 norm per group and timestamp
    with unfused_attention():
        for t, step in enumerate(timestamp_steps(model, images, labels, loss_fn, longest, rescale=True,
                                                 copies=report.graph.assigns)):
            for i, g in enumerate(report.groups):
                grad = step.grads.get((g.position.module, g.position.call))
                if grad is not None:
                    # the channel dim counted from the end: an output computed from constants has no batch dim
                    dim = grad.ndim - g.position.ndim + g.position.axis
                    logs[i][t] = step.exponent + _log2_norm(grad.narrow(dim, g.start, g.stop - g.start))
    rows = []
    for g, group_logs in zip(report.groups, logs):
        norms = [2.0 ** min(log, 1023.0) if log > -1075 else 0.0 for log in group_logs]  # below float64's least: 0
        total = sum(norms)
        for t, (norm, log) in enumerate(zip(norms, group_logs), start=1):
            rows.append({
                "layer": g.position.name, "module": g.position.module, "position": g.position.call,
                "group_start": g.start, "group_stop": g.stop, "timestamp": t, "grad_norm": norm,
                "share": norm / total if total else 0.0, "log2_grad_norm": log,
            })
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Put back every parameter's and buffer's values and dtype, and the training modes, on exit."""
    params = {name: p.data.clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.data = params[name]
        for name, b in model.named_buffers():
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = buffers[name]
        for m, training in modes.items():
            m.training = training


def structure_check(model: nn.Module, input_shape: tuple[int, ...], input_dtype: torch.dtype = torch.float32, *,
                    report: GradientPathReport | None = None, samples: int = CHECK_SAMPLES,
                    seed: int = 0) -> pd.DataFrame:
    """Every channel group's structural timestamps beside the timestamps at which gradient is
    measured to arrive; columns layer, group_start, group_stop, structural, measured, agrees.

    The spectrum is measured on `model` turned to float64 (float32 if the model casts its tensors
    to float32 itself), its steps rescaled so that no long path's gradient underflows, on `samples` random
    inputs (`graph.example_input`), with a random linear function of every output element as the
    loss (so that every output element receives gradient). Every parameter that is identically
    zero is redrawn for it: no gradient crosses a zero-initialised layer or norm scale (as in
    timm's residual branches), which would hide its paths. The model's values, dtypes and modes
    are put back afterwards.
    """
    report = report or analyze_model(model, tuple(input_shape), input_dtype)
    with _restored(model):  # changed in place (a deep copy fails on models that cache tensors), then put back
        for dtype in (torch.float64, torch.float32):
            model.to(dtype)
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for param in model.parameters():
                    if not param.count_nonzero():
                        param.copy_(0.1 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
            inputs = example_input(model, tuple(input_shape), input_dtype, samples, gen)
            inputs = inputs.to(dtype) if inputs.is_floating_point() else inputs
            try:
                with torch.no_grad():
                    outputs = model.eval()(inputs)
                break
            except RuntimeError:  # a model that casts its own tensors to float32 runs in float32
                if dtype == torch.float32:
                    raise
        returned = [t for t in tensors_in(outputs) if t.is_floating_point()]
        if not returned:
            raise GradpathError(f"the measured check needs a model returning a float tensor, not {type(outputs).__name__}")
        weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in returned]

        def loss_fn(out: Any, w: list[torch.Tensor]) -> torch.Tensor:  # a random linear function of every output
            return sum((t.double() * wt).sum() for t, wt in zip(out if isinstance(out, list) else [out], w))

        spectrum = measured_gradient_spectrum(model, inputs, weights, report=report, loss_fn=loss_fn)
    arrived = spectrum.log2_grad_norm > -math.inf
    measured = spectrum[arrived].groupby(["layer", "group_start"]).timestamp.apply(tuple).to_dict()
    rows = []
    for g in report.groups:
        found = measured.get((g.position.name, g.start), ())
        rows.append({"layer": g.position.name, "group_start": g.start, "group_stop": g.stop,
                     "structural": g.timestamps, "measured": found, "agrees": found == g.timestamps})
    return pd.DataFrame(rows)
