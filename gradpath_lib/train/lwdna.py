"""The LW-DNA task ("lwdna"): the Heterogeneity Hypothesis procedure inside the baseline's epochs.

Epochs [0, search_epochs) train the widened network on the baseline recipe's schedule; then every
channel is scored once (`gradpath_lib.lwdna`), the global threshold is searched so that the shrunk
network meets the FLOPs target, the kept weights are sliced into a dense narrower network, and it
trains the remaining epochs of the SAME schedule (learning rate continuing, fresh optimizer state).
The run therefore takes as many epochs as the baseline; each search epoch costs the widened
network's FLOPs. Score "random" is the control: random channels kept at the same FLOPs target,
through the same floor and residual ties. A found architecture that misses the target by more
than the `tolerance` setting stops the run with an error before the shrunk network trains.

Under data parallelism every rank scores the channels and then takes rank 0's scores, so that all
ranks cut the same channels even where GPU reductions differ in the last bits.

The record's `metrics["lwdna"]` holds the per-layer widths of the baseline, the widened and the
found network, the target and reached FLOPs and the threshold; `params` and `flops` are the
shrunk network's.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import check_global_batch, world
from ..errors import GradpathError, check_choice
from ..lwdna import (
    DEFAULT_WIDEN,
    FLOPS_TOLERANCE,
    LAYER_FLOOR,
    Shrink,
    check_flops,
    find_architecture,
    random_scores,
    taylor_scores,
    widened_kwargs,
)
from ..models.channel_graph import ChannelGraph, slice_network, trace_channels
from ..models.cost import count_flops, count_params
from ..models.registry import create_model
from ..runs import TaskContext, TaskResult, register_task
from ..store import resume_state
from .batches import epoch_generator
from .classify import (
    TrainingData,
    classify_config,
    final_metrics,
    fit,
    load_resident_data,
    make_optimizer,
    prepare_model,
    set_rng_state,
)
from .recipes import recipe_from_config

TASK = "lwdna"
SCORES = ("taylor", "random")
# One epoch of the widened network before scoring: the official code scores after two SGD steps
# of a hypernetwork; without one, one epoch lets the weights and BN statistics settle enough for
# first-order scores to rank channels, and it still counts inside the baseline's epoch budget.
SEARCH_EPOCHS = 1
SCORE_BATCHES = 8  # training batches the Taylor score averages over (a few thousand images)


def lwdna_config(
    model: str,
    scale: str = "mini",
    seed: int = 0,
    *,
    score: str = "taylor",
    widen: float = DEFAULT_WIDEN,
    target: str | float = "baseline",
    floor: float = LAYER_FLOOR,
    tolerance: float = FLOPS_TOLERANCE,
    search_epochs: int = SEARCH_EPOCHS,
    score_batches: int = SCORE_BATCHES,
    model_kwargs: dict[str, Any] | None = None,
    data: str | None = None,
    **recipe_overrides: Any,
) -> dict[str, Any]:
    """The run config of LW-DNA on registry model `model` with the baseline's classification recipe.

    `target` is "baseline" (the FLOPs of `model` itself) or a ratio of the widened network's FLOPs;
    `tolerance` is the relative FLOPs error beyond which the run fails.
    """
    config = classify_config(model, scale, seed, model_kwargs=model_kwargs, data=data, **recipe_overrides)
    settings = {"score": score, "widen": float(widen), "target": target, "floor": float(floor),
                "tolerance": float(tolerance), "search_epochs": int(search_epochs),
                "score_batches": int(score_batches)}
    check_settings(settings, config["recipe"]["epochs"])
    return {**config, "task": TASK, "lwdna": settings}


def check_settings(settings: dict[str, Any], epochs: int) -> None:
    """Raise GradpathError unless the `lwdna` block of a config can run in `epochs` epochs."""
    check_choice("LW-DNA score", settings["score"], SCORES)
    target = settings["target"]
    if target != "baseline" and not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise GradpathError(f"LW-DNA target must be 'baseline' or a FLOPs ratio in (0, 1], got {target!r}")
    if settings["widen"] < 1:
        raise GradpathError(f"LW-DNA widen must be >= 1, got {settings['widen']}")
    if not 0 < settings["floor"] <= 1:
        raise GradpathError(f"LW-DNA floor must be in (0, 1], got {settings['floor']}")
    if settings["tolerance"] <= 0:
        raise GradpathError(f"LW-DNA tolerance must be > 0 (a relative FLOPs error), got {settings['tolerance']}")
    if not 1 <= settings["search_epochs"] < epochs:
        raise GradpathError(f"LW-DNA search_epochs must be in [1, {epochs - 1}] (the recipe has {epochs} "
                            f"epochs), got {settings['search_epochs']}")
    if settings["score_batches"] < 1:
        raise GradpathError(f"LW-DNA score_batches must be >= 1, got {settings['score_batches']}")


def channel_scores(config: dict[str, Any], wide: nn.Module, graph: ChannelGraph, data: TrainingData) -> list[torch.Tensor]:
    """The configured score of every channel of the (briefly trained) widened network, rank 0's on every rank."""
    settings = config["lwdna"]
    if settings["score"] == "random":
        return random_scores(graph, torch.Generator().manual_seed(config["seed"]))
    recipe = recipe_from_config(config["recipe"])
    batches = data.train.train_batches(recipe.batch_size, epoch_generator(config["seed"], settings["search_epochs"]),
                                       recipe.crop_padding, recipe.flip)
    scores = taylor_scores(wide, graph, itertools.islice(batches, settings["score_batches"]))
    return rank_zero_scores(scores, data.train.images.device)


def rank_zero_scores(scores: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Rank 0's `scores` on every rank (unchanged when not distributed), sent through `device`."""
    if world().size == 1:
        return scores
    flat = torch.cat(scores).to(device)  # NCCL sends CUDA tensors only
    dist.broadcast(flat, src=0)
    return list(flat.cpu().split([len(s) for s in scores]))


def shrink_summary(shrink: Shrink, graph: ChannelGraph, baseline: nn.Module, wide: nn.Module,
                   image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The JSON-able description of a found architecture, for the record."""
    base_graph = trace_channels(baseline, (1, *image_shape))
    found, wide_widths = graph.conv_widths(shrink.counts), graph.conv_widths(graph.sizes)
    base_widths = base_graph.conv_widths(base_graph.sizes)
    return {
        "layers": list(found),
        "baseline_widths": [base_widths[layer] for layer in found],
        "wide_widths": [wide_widths[layer] for layer in found],
        "widths": list(found.values()),
        "target_flops": shrink.target_flops,
        "flops_error": shrink.flops_error,
        "threshold": shrink.threshold if math.isfinite(shrink.threshold) else None,
        "baseline_flops": count_flops(baseline, image_shape),
        "baseline_params": count_params(baseline),
        "wide_flops": count_flops(wide, image_shape),
        "wide_params": count_params(wide),
    }


def train_lwdna(config: dict[str, Any], ctx: TaskContext) -> TaskResult:
    """Run (or resume) the LW-DNA procedure of `config`; the trainer of task "lwdna"."""
    settings, recipe = config["lwdna"], recipe_from_config(config["recipe"])
    check_settings(settings, recipe.epochs)
    check_global_batch(recipe.batch_size)
    data = load_resident_data(config, recipe, ctx.device, "LW-DNA")
    name, scale, kwargs = config["model"], config["scale"], config.get("model_kwargs", {})

    torch.manual_seed(config["seed"])
    wide = create_model(name, scale, **widened_kwargs(name, scale, settings["widen"], **kwargs))
    graph = trace_channels(wide, (1, *data.image_shape))
    state = resume_state(ctx.checkpoint)
    history: list[dict[str, Any]] = []

    if state is None or state["phase"] == "search":
        prepare_model(wide, ctx.device)
        optimizer = make_optimizer(wide, recipe, ctx.device)
        if state is not None:
            wide.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = state["history"]
            set_rng_state(state["rng"], ctx.device)
        divergence = fit(wide, optimizer, data, recipe, config["seed"], history, settings["search_epochs"], ctx,
                         checkpoint_extra={"phase": "search"}, desc=f"{name} x{settings['widen']:g} search")
        if divergence:
            return _result(wide, history, data, divergence, {})
        baseline = create_model(name, scale, **kwargs)
        target = (count_flops(baseline, data.image_shape) if settings["target"] == "baseline"
                  else int(settings["target"] * graph.flops(graph.sizes)))
        shrink = find_architecture(graph, channel_scores(config, wide, graph, data), target, settings["floor"])
        check_flops(shrink, name, settings["tolerance"])
        summary = shrink_summary(shrink, graph, baseline, wide, data.image_shape)
        keep = shrink.keep
        narrow = prepare_model(slice_network(wide, graph, keep), ctx.device)
        optimizer = make_optimizer(narrow, recipe, ctx.device)
    else:
        keep, summary = state["keep"], state["summary"]
        narrow = prepare_model(slice_network(wide, graph, keep), ctx.device)
        optimizer = make_optimizer(narrow, recipe, ctx.device)
        narrow.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        set_rng_state(state["rng"], ctx.device)
    divergence = fit(narrow, optimizer, data, recipe, config["seed"], history, recipe.epochs, ctx,
                     checkpoint_extra={"phase": "shrunk", "keep": keep, "summary": summary},
                     desc=f"{name} LW-DNA ({settings['score']})")
    return _result(narrow, history, data, divergence, summary)


def _result(model: nn.Module, history: list[dict[str, Any]], data: TrainingData, divergence: dict[str, int],
            summary: dict[str, Any]) -> TaskResult:
    return TaskResult(
        status="diverged" if divergence else "ok",
        metrics=final_metrics(history, completed=not divergence) | {"lwdna": summary},
        params=count_params(model),
        flops=count_flops(model, data.image_shape),
        dataset_sha256=data.dataset["sha256"],
        extra={"dataset": data.dataset, **divergence},
    )


register_task(TASK, train_lwdna)
