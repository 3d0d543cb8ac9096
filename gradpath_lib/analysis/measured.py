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
mode network). Cost: one forward and one backward pass on a batch T times larger; the spectrum
takes the batch `SPECTRUM_CHUNK` samples at a time (after one plain pass for dL/dlogits of the
whole batch, since the loss may couple samples), so memory holds T copies of one chunk, not of the
batch. Each sample must be processed independently of the others (true in eval mode for the
layers the structural analysis supports).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GradpathError
from .op_tables import WEIGHTED_MODULES
from .graph import example_input
from .paths import GradientPathReport, analyze_model
from .unroll import unroll_attention

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Samples per replicated pass of the spectrum: a deep VoVNet has T = 80 replicas of about 13 MB of
# saved activations per sample, so a chunk of 8 holds about 8 GB where a whole batch of 64 held 65.
SPECTRUM_CHUNK = 8
CHECK_SAMPLES = 2  # random inputs of `structure_check`


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


def _batched(output: torch.Tensor, batch: int) -> torch.Tensor:
    """An output computed from constants (no batch dim, or batch 1) expanded to `batch` samples;
    one the model computed for every sample already (EdgeNeXt's position encoding) as it is."""
    if output.ndim >= 2 and output.shape[0] == batch:
        return output
    if output.ndim >= 2 and output.shape[0] == 1:
        return output.expand(batch, *output.shape[1:])
    return output.expand(batch, *output.shape)


def _capture_outputs(model: nn.Module, replicas: int, unbatched: frozenset[tuple[str, int]] = frozenset(),
                     batch: int = 0) -> tuple[dict[tuple[str, int], torch.Tensor], list]:
    """Hooks that shift every weighted layer's input and keep each position's output; the outputs
    of the `unbatched` positions are first expanded to `batch` samples."""
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    calls: Counter[str] = Counter()
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHTED_MODULES):
            continue

        def shift(_module, args, replicas=replicas):
            return (_ShiftTimestamp.apply(args[0], replicas), *args[1:])

        def keep(_module, _args, output, name=name):
            key = (name, calls[name])
            calls[name] += 1
            if key in unbatched:
                output = _batched(output, batch)
            outputs[key] = output
            return output

        handles += [module.register_forward_pre_hook(shift), module.register_forward_hook(keep)]
    return outputs, handles


def logit_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """dL/dlogits of the whole batch in eval mode (the model is left in the mode it was in)."""
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images.to(device))
    finally:
        for m, training in modes.items():
            m.training = training
    if not isinstance(logits, torch.Tensor):
        raise GradpathError("the measured spectrum needs a model returning one logits tensor")
    first = logits.float().requires_grad_()
    (dlogits,) = torch.autograd.grad(loss_fn(first, labels.to(device)), first)
    return dlogits


def gradients_by_timestamp(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    replicas: int,
    loss_fn: LossFn = F.cross_entropy,
    *,
    dlogits: torch.Tensor | None = None,
    unbatched: frozenset[tuple[str, int]] = frozenset(),
) -> dict[tuple[str, int], torch.Tensor | None]:
    """dL/d(output) of every weighted-layer position, split by timestamp.

    Keys are (module name, call index); values have shape (replicas, batch, ...) (batch x P for a
    model that folds P into the batch) where entry t is the gradient that arrived through paths of
    t + 1 weighted layers (None: no gradient).
    `dlogits` (this batch's part of `logit_gradients` of a larger batch) replaces `labels` and
    `loss_fn` when given. `unbatched` names the positions whose input is computed from constants
    (an embedding of position ids): their output has no batch dim (or batch 1), so it is
    expanded over the replicated batch for its gradient to split by replica (the model must
    broadcast it, as adding it to the token embeddings does). The model runs in eval mode and is
    left in the mode it was in.
    """
    device = next(model.parameters()).device
    images = images.to(device)
    batch = images.shape[0]
    if dlogits is None:
        if labels is None:
            raise GradpathError("gradients_by_timestamp needs labels or dlogits")
        dlogits = logit_gradients(model, images, labels, loss_fn)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    outputs, handles = _capture_outputs(model, replicas, unbatched, replicas * batch)
    try:
        try:
            logits = model(images.repeat(replicas, *([1] * (images.ndim - 1))))
        except RuntimeError as err:
            if not unbatched:
                raise
            names = ", ".join(repr(name) for name, _ in sorted(unbatched))
            raise GradpathError(
                f"the measured spectrum expands the output of {names} (computed from constants) over the "
                f"replicated batch, and {type(model).__name__} then fails ({err}): it must broadcast that "
                "output over the batch (as adding it does), not repeat or reshape it by the batch size"
            ) from err
        if not isinstance(logits, torch.Tensor):
            raise GradpathError("the measured spectrum needs a model returning one logits tensor")
        injected = torch.zeros_like(logits)
        injected[:batch] = dlogits.to(device=device, dtype=logits.dtype)
        keys = list(outputs)
        grads = torch.autograd.grad(logits, [outputs[k] for k in keys], injected, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    # replica outermost in the batch dim, also where the model folds more into it (MobileViT's patches)
    return {k: None if g is None else g.reshape(replicas, -1, *g.shape[1:]) for k, g in zip(keys, grads)}


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
    model = unroll_attention(model)  # the positions of `report` name its projections
    report = report or analyze_model(model, tuple(images.shape[1:]), images.dtype)
    replicas = report.network["longest_path"]
    if replicas is None:
        raise GradpathError(f"no weighted layer of {type(model).__name__} receives gradient from its output")
    dlogits = logit_gradients(model, images, labels, loss_fn)
    unbatched = frozenset((p.module, p.call) for p in report.graph.positions if not report.graph.aggregated[p.id])
    squares: list[torch.Tensor | None] = [None] * len(report.groups)  # per group: summed squares per timestamp
    for start in range(0, images.shape[0], SPECTRUM_CHUNK):
        part = slice(start, start + SPECTRUM_CHUNK)
        grads = gradients_by_timestamp(model, images[part], None, replicas, dlogits=dlogits[part],
                                       unbatched=unbatched)
        for i, g in enumerate(report.groups):
            grad = grads.get((g.position.module, g.position.call))
            if grad is not None:
                # the channel dim counted from the end: an unbatched output gained its batch dim in front
                dim = grad.ndim - g.position.ndim + g.position.axis
                channels = grad.narrow(dim, g.start, g.stop - g.start)
                square = channels.reshape(replicas, -1).double().pow(2).sum(1).cpu()
                squares[i] = square if squares[i] is None else squares[i] + square
        del grads
    rows = []
    for g, square in zip(report.groups, squares):
        norms = [0.0] * replicas if square is None else square.sqrt().tolist()
        total = sum(norms)
        for t, norm in enumerate(norms, start=1):
            rows.append({
                "layer": g.position.name, "module": g.position.module, "position": g.position.call,
                "group_start": g.start, "group_stop": g.stop, "timestamp": t, "grad_norm": norm,
                "share": norm / total if total else 0.0,
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

    The spectrum is measured on `model` turned to float64 (so that no long path's gradient
    underflows; float32 if the model casts its tensors to float32 itself), on `samples` random
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
        if not isinstance(outputs, torch.Tensor):
            raise GradpathError(f"the measured check needs a model returning one tensor, not {type(outputs).__name__}")
        weights = torch.randn(outputs.shape, generator=gen, dtype=torch.float64)
        spectrum = measured_gradient_spectrum(model, inputs, weights, report=report,
                                              loss_fn=lambda out, w: (out.double() * w).sum())
    measured = spectrum[spectrum.grad_norm > 0].groupby(["layer", "group_start"]).timestamp.apply(tuple).to_dict()
    rows = []
    for g in report.groups:
        found = measured.get((g.position.name, g.start), ())
        rows.append({"layer": g.position.name, "group_start": g.start, "group_stop": g.stop,
                     "structural": g.timestamps, "measured": found, "agrees": found == g.timestamps})
    return pd.DataFrame(rows)
