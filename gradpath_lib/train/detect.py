"""The detection trainer: task "detect", one YOLOR-mini run on CIFAR-Det (COCO at the paper scale).

A config (build it with `detect_config`) names the detector and its overrides, the dataset, the
scale, the seed and the full recipe (`DetectRecipe`, one per scale below); a COCO config also
has its square `input_size` (640 by default). Training keeps CIFAR-Det on the device
(`DeviceDetections`) and streams COCO from disk through DataLoader workers that letterbox every
image to the input size (`StreamedDetections`); both get the same flip + scale-jitter
augmentation on the device. It checkpoints every epoch and resumes from the checkpoint, so a
killed run ends with the same metrics as an uninterrupted one (exactly, on CPU). On CUDA: bf16
autocast, channels-last, fused AdamW, and no host sync inside an epoch (augmentation, assignment
and loss have static shapes, except that a streamed batch pads its labels to its own most
instances; the loss sums and the first non-finite step stay on the device until the epoch ends).

Assignment and loss: `gradpath_lib.train.det_loss` (task-aligned assignment, CIoU + BCE + cropped
mask BCE). Weights are averaged by an exponential moving average (EMA); every evaluation uses the
EMA weights. Evaluation is pycocotools' COCOeval (`evaluate_coco`) of COCO-format predictions:
boxes [x, y, w, h] px and RLE masks in each original image's pixels (COCO's letterboxed inputs
mapped back) after class-aware NMS (`gradpath_lib.train.det_predict`). Final metrics: `bbox_AP`,
`bbox_AP50`, `bbox_AP75`, `bbox_APs`, `bbox_APm`, `bbox_APl` and the same six `segm_*` (None
where COCOeval leaves a number undefined); the history has the box AP of every `eval_every`-th
epoch and of the last one.

A run that ends `ok` also records `sample_predictions`: the final EMA model's detections on the
first `PREDICTION_CANVASES` val images, in their original pixels (the chapters' prediction
pictures are drawn from them, so the book needs no weights), and saves its final EMA weights to `store.weights_path` (git-ignored).

A non-finite training loss stops the run at the end of that epoch with status "diverged" and the
1-based global step and 0-based epoch where it first happened (a result, not a crash).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data.coco import PAPER_COCO_CONFIG
from ..data.detection import DetectionDataset
from ..distributed import check_global_batch, data_parallel, earliest_step, is_main, sum_across_ranks, world
from ..errors import GradpathError, check_choice
from ..models.cost import check_input, count_flops, count_params
from ..models.registry import create_model, get_entry
from ..runs import TaskContext, TaskResult, register_task
from ..scales import check_scale
from ..store import resume_state, save_checkpoint, weights_path
from .batches import epoch_generator
from .boxes import anchor_points
from .classify import autocast, compiled, fast_path, finite_or_none, prepare_model, rng_state, set_rng_state
from .coco_eval import SUMMARY_NAMES, evaluate_coco
from .det_data import DetectionData, detection_data
from .det_loss import detection_loss
from .det_predict import Detections, best_detections, coco_predictions, postprocess
from .recipes import COMPILE_MODES, SCHEDULES, lr_at, why, with_overrides

TASK = "detect"
DATASETS = {"smoke": "cifar-det", "mini": "cifar-det", "paper": "coco"}
STREAMED = ("coco",)  # datasets read from disk per batch, letterboxed to the config's input_size
LOSS_PARTS = ("box", "cls", "mask")
PREDICTION_CANVASES = 3  # val canvases whose detections a finished run records (the prediction pictures)
SAMPLE_SCORE = 0.3  # recorded sample detections score at least this (COCO evaluation keeps lower ones)
SAMPLE_DETECTIONS = 20  # at most this many sample detections per canvas, best first (keeps records small)


@dataclass(frozen=True)
class DetectRecipe:
    """How a detector is trained; every field says why it has its value."""

    epochs: int = why("Passes over the training canvases.")
    batch_size: int = why("Canvases per optimizer step.")
    lr: float = why("Peak AdamW learning rate: AdamW converges faster than SGD on short from-scratch schedules.")
    weight_decay: float = why("Decoupled weight decay on conv weights only "
                              "(BN scales and biases are not decayed).", 0.05)
    warmup_fraction: float = why("Fraction of all steps spent warming "
                                 "the learning rate up linearly from zero.", 0.05)
    schedule: str = why("Decay after warm-up, per step down to zero: \"linear\" or \"cosine\".", "cosine")
    flip: bool = why("Random horizontal flips (CIFAR-Det and COCO objects are mirror-symmetric classes).", True)
    scale_jitter: float = why("Canvases are zoomed by a factor uniform in [1 "
                              "- s, 1 + s] about the centre (YOLO's \"scale\").", 0.25)
    grad_clip: float = why("Gradient-norm clipping: keeps the first steps "
                           "stable while the assignment is still random.", 10.0)
    ema_decay: float = why("EMA of the weights: decay * (1 - "
                           "exp(-updates / ema_tau)) (YOLOv5's ramp, so early EMA tracks).", 0.9998)
    ema_tau: float = why("Time constant, in optimizer steps, of the EMA decay ramp (see ema_decay).", 2000.0)
    eval_every: int = why("Evaluate box AP after every eval_every-th epoch "
                          "(the last one always gets the full evaluation).", 1)
    eval_batch_size: int = why("Canvases per evaluation step.", 64)
    compile: str = why("torch.compile mode of the detector (choices as the classification recipe's): off, "
                       "since `gradpath bench train` measures compilation on classifiers only.", "off")


RECIPES: dict[str, DetectRecipe] = {
    # Seconds on a CPU: 3 epochs over the 64 smoke canvases (64x64), batch 16, the learning rate
    # with which the test suite's smoke detector overfits 8 canvases (bbox AP50 > 0.5 in 70 epochs).
    "smoke": DetectRecipe(epochs=3, batch_size=16, lr=1e-2, warmup_fraction=0.1, ema_tau=50.0),
    # One GPU, 10 000 CIFAR-Det canvases (192x192): 24 epochs of batch 128 = 1 872 steps. A step of
    # this small detector is bound by kernel launches, not FLOPs, so a large batch buys throughput;
    # target about two H100-minutes, NOT yet measured on a GPU (no GPU was available when written).
    # Box AP after epochs 8 and 16 (and the final evaluation): one bbox COCOeval of the 1 000 val
    # canvases takes about 7 s of CPU (measured on 2 cores), likely more than an epoch's training.
    "mini": DetectRecipe(epochs=24, batch_size=128, lr=3e-3, ema_tau=300.0, eval_every=8, eval_batch_size=128),
    # The paper's COCO setting, streamed from disk (not run by us: it needs COCO and many GPUs):
    # 300 epochs of batch 64 at 640x640 (YOLOR/YOLOv7 use SGD lr 0.01; AdamW here).
    "paper": DetectRecipe(epochs=300, batch_size=64, lr=1e-3, scale_jitter=0.5, eval_every=10, eval_batch_size=32),
}


def detect_recipe_for(scale: str, **overrides: Any) -> dict[str, Any]:
    """The detection recipe of `scale` as a dict, with `overrides` (field names of `DetectRecipe`) applied."""
    recipe = with_overrides(RECIPES, scale, overrides, "detection recipe")
    check_detect_recipe(recipe)
    return asdict(recipe)


def check_detect_recipe(recipe: DetectRecipe) -> None:
    """Raise GradpathError if a recipe's values cannot be trained."""
    check_choice("recipe schedule", recipe.schedule, SCHEDULES)
    check_choice("recipe compile mode", recipe.compile, COMPILE_MODES)
    if min(recipe.epochs, recipe.batch_size, recipe.eval_batch_size, recipe.eval_every) < 1:
        raise GradpathError(f"recipe epochs, batch sizes and eval_every must be >= 1, got {recipe}")
    if not 0.0 <= recipe.warmup_fraction < 1.0 or not 0.0 <= recipe.scale_jitter < 1.0:
        raise GradpathError(f"recipe warmup_fraction and scale_jitter must be in [0, 1), got {recipe}")


def detect_recipe_from_config(recipe: dict[str, Any]) -> DetectRecipe:
    """The `DetectRecipe` stored (as a dict) in a run config, checked."""
    valid = {f.name for f in fields(DetectRecipe)}
    if set(recipe) != valid:
        raise GradpathError(f"run config recipe must have exactly the fields {sorted(valid)}; got {sorted(recipe)}")
    result = DetectRecipe(**recipe)
    check_detect_recipe(result)
    return result


def detect_config(
    model: str, scale: str = "mini", seed: int = 0, *, model_kwargs: dict[str, Any] | None = None,
    input_size: int | None = None, **recipe_overrides: Any,
) -> dict[str, Any]:
    """The complete run config of detector `model` at `scale` (recipe fields may be overridden by name;
    `input_size`, the square side COCO is letterboxed to, only where the data is streamed)."""
    check_scale(scale)
    entry = get_entry(model)
    if entry.task != TASK:
        raise GradpathError(f"model {model!r} is a {entry.task!r} model, not a detector; detectors: "
                            "see gradpath_lib.models.model_names('detect')")
    config = {
        "task": TASK,
        "model": model,
        "scale": scale,
        "seed": int(seed),
        "model_kwargs": dict(model_kwargs or {}),
        "data": DATASETS[scale],
        "recipe": detect_recipe_for(scale, **recipe_overrides),
    }
    if config["data"] in STREAMED:
        side = PAPER_COCO_CONFIG["input_size"] if input_size is None else input_size
        return {**config, "input_size": check_input(side, model, TASK)}
    if input_size is not None:
        raise GradpathError(f"input_size applies to streamed datasets ({', '.join(STREAMED)}); {config['data']!r} "
                            f"canvases have the fixed size of scale {scale!r}")
    return config


class ModelEMA:
    """Exponential moving average of a model's floating-point state (YOLOv5's ramped decay)."""

    def __init__(self, model: nn.Module, decay: float, tau: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0
        self._tensors: tuple[Any, ...] | None = None  # (id(model), the four lists of `_state_lists`)

    def _state_lists(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        """(averaged floats, model floats, averaged others, model others): the state tensors, which share
        the modules' storage, gathered once per model (the step is launch-bound: no state_dict walk per step)."""
        if self._tensors is None or self._tensors[0] != id(model):
            averaged, current = self.module.state_dict(), model.state_dict()
            floats = [k for k, v in averaged.items() if v.is_floating_point()]
            others = [k for k in averaged if k not in floats]
            self._tensors = (id(model), [averaged[k] for k in floats], [current[k] for k in floats],
                             [averaged[k] for k in others], [current[k] for k in others])
        return self._tensors[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights and buffers (integer buffers are copied)."""
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.tau))
        averaged_floats, floats, averaged_others, others = self._state_lists(model)
        torch._foreach_lerp_(averaged_floats, floats, 1 - decay)
        if others:
            torch._foreach_copy_(averaged_others, others)

    def state_dict(self) -> dict[str, Any]:
        """Averaged weights and the update count (for checkpoints)."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def make_optimizer(model: nn.Module, recipe: DetectRecipe, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on conv weights only, fused on the fast path."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, fused=fast_path(device))


@dataclass
class EpochStats:
    """What one training epoch measured."""

    losses: dict[str, float]  # mean of each loss part over the epoch's steps
    lr: float
    seconds: float
    first_nonfinite_step: int | None  # 1-based global step of the first NaN/inf loss


def train_epoch(
    model: nn.Module, forward: nn.Module, ema: ModelEMA, optimizer: torch.optim.Optimizer, data: DetectionData,
    recipe: DetectRecipe, generator: torch.Generator, first_step: int, total_steps: int,
) -> EpochStats:
    """One pass over `data`; reads device values once, at the end. Under torch.distributed each rank
    trains on its shard of every global batch (its loss normalized by its own positives, as YOLOv5
    does) and the epoch's loss means are averaged over the ranks."""
    device = data.device
    points, strides = anchor_points(*data.image_size, model.strides, device)
    model.train()
    start = time.perf_counter()
    loss_sums = torch.zeros(len(LOSS_PARTS), device=device)
    step = torch.full((), first_step, dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    steps, lr = 0, 0.0
    for images, targets in data.train_batches(recipe.batch_size, generator, recipe.flip, recipe.scale_jitter,
                                              model.proto_stride):
        lr = lr_at(recipe, first_step + steps, total_steps)  # DetectRecipe has the fields lr_at reads
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device):
            outputs = forward(images)
        loss, parts = detection_loss(outputs, targets, points, strides, model.proto_stride)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        ema.update(model)
        step += 1
        steps += 1
        bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
        first_bad = torch.where(bad, step, first_bad)
        loss_sums += parts
    first = int(earliest_step(first_bad).item())
    means = (sum_across_ranks(loss_sums) / (max(steps, 1) * world().size)).tolist()
    return EpochStats(dict(zip(LOSS_PARTS, means)), lr, time.perf_counter() - start, first if first >= 0 else None)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, with_masks: bool = True) -> list[Detections]:
    """Detections (after NMS, optionally with masks) of a batch of float images (B, 3, H, W), model in eval mode."""
    model.eval()
    image_size = (images.shape[2], images.shape[3])
    points, strides = anchor_points(*image_size, model.strides, images.device)
    with autocast(images.device):
        outputs = model(images.contiguous(memory_format=torch.channels_last))
    return postprocess(outputs, points, strides, image_size, with_masks)


def evaluate_detector(
    model: nn.Module, data: DetectionData, dataset: DetectionDataset, batch_size: int, masks: bool = True
) -> dict[str, float | None]:
    """COCOeval of `model` on `dataset` (read for the device as `data`): {"bbox_AP", ..., "segm_APl"} (segm if
    masks)."""
    category_ids = coco_category_ids(dataset)
    predictions: list[dict[str, Any]] = []
    for start, images in zip(range(0, len(data), batch_size), data.eval_batches(batch_size)):
        detections = data.to_original(predict(model, images, with_masks=masks), start)
        predictions += coco_predictions(detections, dataset.image_ids[start:start + len(detections)], category_ids)
    summary = evaluate_coco(dataset.annotation_file, predictions, ("bbox", "segm") if masks else ("bbox",))
    return {f"{iou_type}_{name}": finite_or_none(values[name]) for iou_type, values in summary.items()
            for name in SUMMARY_NAMES}


def coco_category_ids(dataset: DetectionDataset) -> list[int]:
    """The COCO category id of every 0-based label of `dataset`."""
    return [dataset.category_id(label) for label in range(len(dataset.categories))]


def sample_predictions(
    model: nn.Module, data: DetectionData, dataset: DetectionDataset, count: int = PREDICTION_CANVASES
) -> list[dict[str, Any]]:
    """Per image of the first `count` of `dataset` (read for the device as `data`): its image_id and `model`'s
    best detections (at most SAMPLE_DETECTIONS, scoring at least SAMPLE_SCORE) as COCO result records
    in the original image's pixels."""
    category_ids = coco_category_ids(dataset)
    batches = data.eval_batches(count, limit=count)  # one batch: no loader over the whole split
    detections = data.to_original(predict(model, next(batches)), 0)
    batches.close()
    samples = []
    for found, image_id in zip(detections, dataset.image_ids):
        records = coco_predictions([best_detections(found, SAMPLE_SCORE, SAMPLE_DETECTIONS)], [image_id], category_ids)
        samples.append({"image_id": int(image_id),
                        "detections": [{k: v for k, v in r.items() if k != "image_id"} for r in records]})
    return samples


@dataclass
class FitResult:
    """What `fit_detector` returns: status, final metrics (with history), record extras, EMA weights."""

    status: str
    metrics: dict[str, Any]
    extra: dict[str, Any]
    ema_state: dict[str, torch.Tensor]


def fit_detector(
    model: nn.Module, train_set: DetectionDataset, val_set: DetectionDataset, recipe: DetectRecipe,
    device: torch.device, seed: int, checkpoint: Path | None = None, progress: bool = False, desc: str = TASK,
    input_size: int | None = None,
) -> FitResult:
    """Train `model` (its initial weights already drawn) on `train_set`, evaluate its EMA on `val_set`.

    With `checkpoint` (a path) the state is saved every epoch and resumed from when present. With
    `input_size` the sets are streamed and letterboxed to that square side, else kept on the device.
    """
    check_num_classes(model, val_set)
    train_data = detection_data(train_set, device, input_size)
    val_data = detection_data(val_set, device, input_size)
    steps_per_epoch = len(train_data) // recipe.batch_size
    if steps_per_epoch == 0:
        raise GradpathError(f"recipe batch_size {recipe.batch_size} exceeds the {len(train_data)} training canvases; "
                            "use a smaller batch_size")
    check_global_batch(recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    prepare_model(model, device)
    optimizer = make_optimizer(model, recipe, device)
    ema = ModelEMA(model, recipe.ema_decay, recipe.ema_tau)
    history: list[dict[str, Any]] = []
    state = resume_state(checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        set_rng_state(state["rng"], device)
    forward = data_parallel(model, device)
    forward = compiled(forward, recipe.compile)
    status, extra = "ok", {}
    bar = tqdm(total=recipe.epochs, initial=len(history), desc=desc, unit="epoch",
               disable=None if progress else True)  # None: off when stderr is not a terminal (a log)
    for epoch in range(len(history), recipe.epochs):
        stats = train_epoch(model, forward, ema, optimizer, train_data, recipe, epoch_generator(seed, epoch),
                            epoch * steps_per_epoch, total_steps)
        if stats.first_nonfinite_step is not None:
            status = "diverged"
            extra.update(diverged_at_step=stats.first_nonfinite_step, diverged_at_epoch=epoch)
            break
        eval_start = time.perf_counter()
        box_ap = None  # the last epoch's comes from the final evaluation below
        if (epoch + 1) % recipe.eval_every == 0 and epoch + 1 < recipe.epochs:
            box_ap = evaluate_detector(ema.module, val_data, val_set, recipe.eval_batch_size, masks=False)["bbox_AP"]
        history.append({
            "epoch": epoch + 1,
            **{f"train_{part}_loss": value for part, value in stats.losses.items()},
            "bbox_AP": box_ap,
            "lr": stats.lr,
            "train_images": steps_per_epoch * recipe.batch_size,
            "train_s": round(stats.seconds, 3),
            "epoch_s": round(stats.seconds + time.perf_counter() - eval_start, 3),
        })
        if checkpoint is not None and is_main():
            save_checkpoint(checkpoint, {"model": model.state_dict(), "ema": ema.state_dict(),
                                         "optimizer": optimizer.state_dict(), "history": history,
                                         "rng": rng_state(device)})
        bar.update(1)
        bar.set_postfix(loss=f"{sum(stats.losses.values()):.3f}", box_ap=box_ap)
    bar.close()
    final = evaluate_detector(ema.module, val_data, val_set, recipe.eval_batch_size) if status == "ok" else {}
    if final:
        history[-1]["bbox_AP"] = final["bbox_AP"]
        final["sample_predictions"] = sample_predictions(ema.module, val_data, val_set)
    train_seconds = sum(epoch["train_s"] for epoch in history)
    metrics = {
        **final,
        "epochs_done": len(history),
        "images_per_s": round(sum(e["train_images"] for e in history) / train_seconds, 1) if train_seconds else None,
        "history": history,
    }
    return FitResult(status, metrics, extra, ema.module.state_dict())


def check_num_classes(model: nn.Module, dataset: DetectionDataset) -> None:
    """Raise GradpathError unless `model` predicts exactly the categories of `dataset`."""
    if model.num_classes != len(dataset.categories):
        raise GradpathError(f"the detector predicts {model.num_classes} classes but {dataset.source} has "
                            f"{len(dataset.categories)} categories; set model_kwargs num_classes="
                            f"{len(dataset.categories)}")


def load_detection_data(name: str, scale: str) -> tuple[DetectionDataset, DetectionDataset]:
    """(train, val) of the detection dataset `name` at `scale` (COCO from `$GRADPATH_DATA/coco`, read lazily)."""
    from ..data.cifar_det import load_cifar_det  # Pillow, pandas: only when detection data is needed
    from ..data.coco import load_coco

    check_choice("detection dataset", name, ("cifar-det",) if scale != "paper" else ("coco",))
    if name == "coco":
        return load_coco(None, PAPER_COCO_CONFIG["train_split"]), load_coco(None, PAPER_COCO_CONFIG["eval_split"])
    return load_cifar_det(scale, "train"), load_cifar_det(scale, "val")


def train_detect(config: dict[str, Any], ctx: TaskContext) -> TaskResult:
    """Train (or resume) the run `config` on `ctx.device`; the trainer of task "detect"."""
    recipe = detect_recipe_from_config(config["recipe"])
    train_set, val_set = load_detection_data(config["data"], config["scale"])
    input_size = config.get("input_size")
    torch.manual_seed(config["seed"])
    model = create_model(config["model"], config["scale"], **config.get("model_kwargs", {}))
    height, width = (input_size, input_size) if input_size else train_set.images.shape[1:3]
    params, flops = count_params(model), count_flops(model, (3, height, width))
    result = fit_detector(model, train_set, val_set, recipe, ctx.device, config["seed"], ctx.checkpoint, ctx.progress,
                          desc=config["model"], input_size=input_size)
    if result.status == "ok":
        save_checkpoint(weights_path(ctx.results_dir, config), result.ema_state)
    dataset = {"name": config["data"], "source": train_set.source, "sha256": train_set.sha256}
    return TaskResult(status=result.status, metrics=result.metrics, params=params, flops=flops,
                      dataset_sha256=train_set.sha256, extra={"dataset": dataset, **result.extra})


register_task(TASK, train_detect)
