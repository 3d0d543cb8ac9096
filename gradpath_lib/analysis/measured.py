"""Measured gradient spectrum: how much gradient each channel group receives through paths of
each length, on a real batch, exactly (no path sampling).

Method: the batch is replicated T times along the batch axis (T = the model's longest gradient
path), so the forward pass computes T identical copies (the model runs in eval mode: BatchNorm
uses its running statistics and dropout is off, so replicas do not mix). Every weighted layer's
input is wrapped in `_ShiftTimestamp`, the identity in forward that moves the incoming gradient
from replica t to replica t + 1 in backward. dL/dlogits is injected into replica 0 only. Back-
propagation is linear in the incoming gradient once the activations are fixed, so the gradient at
a layer's output in replica t is exactly the sum over its paths with t + 1 weighted layers:
replica t holds timestamp t + 1. Summing the replicas gives the ordinary gradient (of the eval-
mode network). Cost: one forward and one backward pass on a batch T times larger (choose the
batch so that T copies fit in memory); each sample must be processed independently of the others
(true in eval mode for the layers the structural analysis supports).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GradpathError
from .graph import WEIGHTED_MODULES
from .paths import GradientPathReport, analyze_model

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _ShiftTimestamp(torch.autograd.Function):
    """Identity forward; backward moves the gradient of replica t to replica t + 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, replicas: int) -> torch.Tensor:  # type: ignore[override]
        ctx.replicas = replicas
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        per_replica = grad.reshape(ctx.replicas, -1)
        shifted = torch.zeros_like(per_replica)
        shifted[1:] = per_replica[:-1]
        return shifted.reshape(grad.shape), None


def _capture_outputs(model: nn.Module, replicas: int) -> tuple[dict[tuple[str, int], torch.Tensor], list]:
    """Hooks that shift every weighted layer's input and keep each position's output."""
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    calls: Counter[str] = Counter()
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHTED_MODULES):
            continue

        def shift(_module, args, replicas=replicas):
            return (_ShiftTimestamp.apply(args[0], replicas), *args[1:])

        def keep(_module, _args, output, name=name):
            outputs[(name, calls[name])] = output
            calls[name] += 1

        handles += [module.register_forward_pre_hook(shift), module.register_forward_hook(keep)]
    return outputs, handles


def gradients_by_timestamp(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    replicas: int,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[tuple[str, int], torch.Tensor | None]:
    """dL/d(output) of every weighted-layer position, split by timestamp.

    Keys are (module name, call index); values have shape (replicas, batch, ...) where entry t
    is the gradient that arrived through paths of t + 1 weighted layers (None: no gradient).
    The model runs in eval mode and is left in the mode it was in.
    """
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    batch = images.shape[0]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    outputs, handles = _capture_outputs(model, replicas)
    try:
        logits = model(images.repeat(replicas, *([1] * (images.ndim - 1))))
        if not isinstance(logits, torch.Tensor):
            raise GradpathError("the measured spectrum needs a model returning one logits tensor")
        first = logits[:batch].detach().requires_grad_()
        (dlogits,) = torch.autograd.grad(loss_fn(first, labels), first)
        injected = torch.zeros_like(logits)
        injected[:batch] = dlogits
        keys = list(outputs)
        grads = torch.autograd.grad(logits, [outputs[k] for k in keys], injected, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return {k: None if g is None else g.reshape(replicas, batch, *g.shape[1:]) for k, g in zip(keys, grads)}


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
    (grad_norm over the group's summed norms). A group's channels are cut along the dimension
    that holds its position's output channels (the last one for a Linear on a channels-last map).
    `report` (the structural analysis) is computed when not given; the number of replicas is its
    longest path.
    """
    report = report or analyze_model(model, tuple(images.shape[1:]))
    replicas = report.network["longest_path"]
    if replicas is None:
        raise GradpathError(f"no weighted layer of {type(model).__name__} receives gradient from its output")
    grads = gradients_by_timestamp(model, images, labels, replicas, loss_fn)
    rows = []
    for g in report.groups:
        grad = grads.get((g.position.module, g.position.call))
        if grad is None:
            norms = [0.0] * replicas
        else:
            channels = grad.narrow(g.position.axis + 1, g.start, g.stop - g.start)  # +1: the replica axis
            norms = channels.reshape(replicas, -1).norm(dim=1).tolist()
        total = sum(norms)
        for t, norm in enumerate(norms, start=1):
            rows.append({
                "layer": g.position.name, "module": g.position.module, "position": g.position.call,
                "group_start": g.start, "group_stop": g.stop, "timestamp": t, "grad_norm": norm,
                "share": norm / total if total else 0.0,
            })
    return pd.DataFrame(rows)
