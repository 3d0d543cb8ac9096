"""The classification trainer: task "classify", one run of one model on one image dataset.

A config (build it with `classify_config`) names the model and its overrides, the dataset, the
scale, the seed and the full recipe (`gradpath_lib.train.recipes`). Smoke data and CIFAR-10 stay
whole on the device (`DeviceImages`); ImageNet is streamed from its class folders by DataLoader
workers (`gradpath_lib.data.imagenet`; its "test" split is the val folder). Training checkpoints
every epoch and resumes from the checkpoint, so a killed run ends with the same metrics as an
uninterrupted one (exactly, on CPU).

On CUDA it runs in bf16 autocast with channels-last memory and the fused SGD, and never waits for
the GPU inside an epoch: loss and accuracy sums and the first non-finite step stay on the device
and are read once per epoch. On CPU it runs in fp32 and is deterministic.

Model hook: a model may define `extra_loss(self, targets) -> Tensor | None`. It is called after
every training forward (outside autocast, so it is computed in fp32) and the tensor it returns is
added to the cross-entropy loss; None adds nothing. DSFB's orthogonality penalty and auxiliary
heads use it. The recorded `train_loss` is the cross-entropy alone, comparable across models.
A model may also define `epoch_metrics(self) -> dict`: called once after every epoch's
evaluation, its entries are added to that epoch's history (DSFB's per-block gradient norms).

A non-finite training loss stops the run at the end of that epoch with status "diverged" and the
1-based global step and 0-based epoch where it first happened (a result, not a crash).
Timing fields (`TIMING_KEYS`) vary from run to run; every other metric is deterministic on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import STREAMED_DATASETS, dataset_for_scale, load_classification
from ..distributed import check_global_batch, data_parallel, earliest_step, is_main, sum_across_ranks
from ..errors import GradpathError
from ..models.cost import count_flops, count_params
from ..models.registry import create_model, get_entry
from ..runs import TaskContext, TaskResult, register_task
from ..scales import check_scale
from ..store import resume_state, save_checkpoint, weights_path
from .batches import ClassificationData, DeviceImages, epoch_generator
from .recipes import Recipe, lr_at, recipe_for, recipe_from_config

TASK = "classify"
# Metrics that measure time, not learning: they differ between otherwise identical runs.
TIMING_KEYS = ("epoch_s", "train_s", "images_per_s")


def classify_config(
    model: str,
    scale: str = "mini",
    seed: int = 0,
    *,
    model_kwargs: dict[str, Any] | None = None,
    data: str | None = None,
    **recipe_overrides: Any,
) -> dict[str, Any]:
    """The complete run config of `model` at `scale` (recipe fields may be overridden by name).

    A run that ends `ok` also saves its final state_dict to `store.weights_path`
    (`<results>/<scale>/weights/<run_id>.pt`, git-ignored) for the analyses that need the trained
    network (probes, measured spectra); the weights are not part of the record.
    """
    check_scale(scale)
    entry = get_entry(model)
    if entry.task != TASK:
        raise GradpathError(f"model {model!r} is a {entry.task!r} model, not a classifier")
    return {
        "task": TASK,
        "model": model,
        "scale": scale,
        "seed": int(seed),
        "model_kwargs": dict(model_kwargs or {}),
        "data": data or dataset_for_scale(scale),
        "recipe": recipe_for(scale, **recipe_overrides),
    }


def strip_timing(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` without the timing fields (what must be identical between identical CPU runs)."""
    out = {k: v for k, v in metrics.items() if k not in TIMING_KEYS and k != "history"}
    if "history" in metrics:
        out["history"] = [strip_timing(epoch) for epoch in metrics["history"]]
    return out


def fast_path(device: torch.device) -> bool:
    """Whether training on `device` takes the speed path: bf16 autocast, channels-last weights,
    cuDNN autotuning and fused optimizers. CUDA only; elsewhere training stays fp32 and deterministic."""
    return device.type == "cuda"


def make_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.SGD:
    """SGD (Nesterov) with weight decay on conv/linear weights only, fused on the fast path."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
        fused=fast_path(device),
    )


def compiled(forward: nn.Module, mode: str) -> nn.Module:
    """`forward` under `torch.compile(mode=mode)`, or unchanged when `mode` is "off" (see recipes.COMPILE_MODES)."""
    return forward if mode == "off" else torch.compile(forward, mode=mode)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on the fast path; a no-op (fp32) elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast_path(device))


def training_loss(
    model: nn.Module, forward: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss to minimize, cross-entropy, logits) of one batch, with the model's `extra_loss`."""
    with autocast(x.device):
        logits = forward(x)
    cross_entropy = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
    extra = model.extra_loss(y) if hasattr(model, "extra_loss") else None
    loss = cross_entropy if extra is None else cross_entropy + extra
    return loss, cross_entropy, logits


@dataclass
class EpochStats:
    """What one training epoch measured."""

    loss: float
    acc: float
    lr: float  # the learning rate of the epoch's last step
    seconds: float
    first_nonfinite_step: int | None  # 1-based global step of the first NaN/inf loss


def train_epoch(
    model: nn.Module,
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ClassificationData,
    recipe: Recipe,
    generator: torch.Generator,
    first_step: int,
    total_steps: int,
) -> EpochStats:
    """One pass over `data`; reads device values only once, at the end. Under torch.distributed each
    rank trains on its shard of every global batch and the epoch's sums are all-reduced."""
    device = data.device
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    step = torch.full((), first_step, dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    seen, lr = 0, 0.0
    batches = data.rank_train_batches(recipe.batch_size, generator, recipe.crop_padding, recipe.flip)
    for i, (x, y) in enumerate(batches):
        lr = lr_at(recipe, first_step + i, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, cross_entropy, logits = training_loss(model, forward, x, y, recipe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
        first_bad = torch.where(bad, step, first_bad)
        loss_sum += cross_entropy.detach() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    seen = int(sum_across_ranks(torch.tensor(seen, device=device)).item())
    first = int(earliest_step(first_bad).item())
    return EpochStats(
        loss=sum_across_ranks(loss_sum).item() / seen,
        acc=sum_across_ranks(correct).item() / seen,
        lr=lr,
        seconds=time.perf_counter() - start,
        first_nonfinite_step=first if first >= 0 else None,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: ClassificationData, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `data`, in eval mode (each rank evaluates its part)."""
    model.eval()
    device = data.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in data.rank_eval_batches(batch_size):
        with autocast(device):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return sum_across_ranks(loss_sum).item() / len(data), sum_across_ranks(correct).item() / len(data)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states a resumed run must restore (model code may draw from them)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what `rng_state` saved; a checkpoint resumes only on the kind of device that saved it
    (CUDA and CPU runs differ in numerics: bf16 vs fp32)."""
    saved_on = "cuda" if "cuda" in state else "cpu"
    if saved_on != device.type:
        raise GradpathError(
            f"this run's checkpoint was saved on {saved_on} and cannot resume on {device.type} (numerics "
            f"differ); resume it with --device {saved_on}, or delete its checkpoint (results/<scale>/"
            "checkpoints/<run id>.pt) to restart it from scratch")
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def final_metrics(history: list[dict[str, Any]], completed: bool) -> dict[str, Any]:
    """The record's metrics from the per-epoch history (`test_acc` is None unless completed).

    `images_per_s` counts training images over the training phases only (evaluation excluded,
    the first epoch's warm-up such as cuDNN autotuning or compilation included)."""
    train_seconds = sum(epoch["train_s"] for epoch in history)
    train_images = sum(epoch["train_images"] for epoch in history)
    test_accs = [epoch["test_acc"] for epoch in history if epoch["test_acc"] is not None]
    return {
        "test_acc": history[-1]["test_acc"] if completed and history else None,
        "best_test_acc": max(test_accs) if test_accs else None,
        "train_loss": history[-1]["train_loss"] if history else None,
        "epochs_done": len(history),
        "images_per_s": round(train_images / train_seconds, 1) if train_seconds > 0 else None,
        "history": history,
    }


def finite_or_none(value: float) -> float | None:
    """`value`, or None when it is NaN/inf (JSON has no NaN)."""
    return value if math.isfinite(value) else None


def epoch_entry(
    model: nn.Module, test_data: ClassificationData, recipe: Recipe, epoch: int, stats: EpochStats, steps_per_epoch: int
) -> dict[str, Any]:
    """Evaluate after 0-based `epoch` and return its history entry (plus the model's `epoch_metrics()`)."""
    eval_start = time.perf_counter()
    test_loss, test_acc = evaluate(model, test_data, recipe.eval_batch_size)
    entry = {
        "epoch": epoch + 1,
        "train_loss": stats.loss,
        "train_acc": stats.acc,
        "test_loss": finite_or_none(test_loss),
        "test_acc": test_acc,
        "lr": stats.lr,
        "train_images": steps_per_epoch * recipe.batch_size,
        "train_s": round(stats.seconds, 3),
        "epoch_s": round(stats.seconds + time.perf_counter() - eval_start, 3),
    }
    return entry | (model.epoch_metrics() if hasattr(model, "epoch_metrics") else {})


@dataclass
class TrainingData:
    """A run's train and test data (resident or streamed), its steps per epoch, and the dataset's identity."""

    train: ClassificationData
    test: ClassificationData
    steps_per_epoch: int
    image_shape: tuple[int, int, int]  # (C, H, W) of one input
    dataset: dict[str, Any]  # name, source and sha256, recorded with the run


def resident_data(name: str, device: torch.device) -> tuple[DeviceImages, DeviceImages, dict[str, Any]]:
    """(train, test, identity) of an in-memory dataset on `device`, normalized by the training set's statistics."""
    train_set = load_classification(name, "train")
    test_set = load_classification(name, "test")
    return (
        DeviceImages.from_arrays(train_set.images, train_set.labels, device),
        DeviceImages.from_arrays(test_set.images, test_set.labels, device, stats_from=train_set.images),
        {"name": name, "source": train_set.source, "sha256": train_set.sha256, "classes": len(train_set.classes)},
    )


def load_training_data(config: dict[str, Any], recipe: Recipe, device: torch.device) -> TrainingData:
    """The config's dataset: resident on `device` (smoke, CIFAR-10) or streamed to it (ImageNet)."""
    name = config["data"]
    streamed = STREAMED_DATASETS.get(name)
    train, test, dataset = streamed(device) if streamed else resident_data(name, device)
    steps_per_epoch = len(train) // recipe.batch_size
    if steps_per_epoch == 0:
        raise GradpathError(
            f"recipe batch_size {recipe.batch_size} exceeds the {len(train)} training "
            f"images of {name!r}; use a smaller batch_size"
        )
    return TrainingData(train, test, steps_per_epoch, train.image_shape, dataset)


def load_resident_data(config: dict[str, Any], recipe: Recipe, device: torch.device, task: str) -> TrainingData:
    """`load_training_data` for a task that needs the whole data set in memory (LW-DNA's search, probes)."""
    if config["data"] in STREAMED_DATASETS:
        raise GradpathError(f"the {task} task needs a data set held in memory (smoke, CIFAR-10); "
                            f"{config['data']!r} is streamed from disk, so {task} does not run at the paper scale")
    return load_training_data(config, recipe, device)


def check_logits(model: nn.Module, data: TrainingData) -> None:
    """Raise GradpathError unless `model` gives one logit per class of the dataset (checked before training)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, *data.image_shape)).shape[-1]
    model.train(was_training)
    classes = data.dataset["classes"]
    if logits != classes:
        raise GradpathError(f"model gives {logits} logits but {data.dataset['source']} has {classes} classes; "
                            f"set model_kwargs num_classes={classes}")


def initial_model(config: dict[str, Any]) -> nn.Module:
    """The network of a classify `config` with the initial weights its run starts from."""
    torch.manual_seed(config["seed"])
    return create_model(config["model"], config["scale"], **config.get("model_kwargs", {}))


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device` (channels-last memory and cuDNN autotuning on the fast path)."""
    model.to(device)
    if fast_path(device):
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    return model


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    recipe: Recipe,
    seed: int,
    history: list[dict[str, Any]],
    stop_epoch: int,
    ctx: TaskContext,
    checkpoint_extra: dict[str, Any] | None = None,
    desc: str = "",
) -> dict[str, int]:
    """Train from epoch len(history) up to `stop_epoch` on the recipe's whole schedule, appending to
    `history` and checkpointing every epoch (with `checkpoint_extra`, rank 0 only); returns the
    divergence fields (`diverged_at_step`, `diverged_at_epoch`) or {} if every loss was finite."""
    forward = data_parallel(model, ctx.device)
    forward = compiled(forward, recipe.compile)
    total_steps = data.steps_per_epoch * recipe.epochs
    bar = tqdm(total=stop_epoch, initial=len(history), desc=desc, unit="epoch",
               disable=None if ctx.progress else True)  # None: off when stderr is not a terminal (a log)
    try:
        for epoch in range(len(history), stop_epoch):
            stats = train_epoch(model, forward, optimizer, data.train, recipe, epoch_generator(seed, epoch),
                                epoch * data.steps_per_epoch, total_steps)
            if stats.first_nonfinite_step is not None:
                return {"diverged_at_step": stats.first_nonfinite_step, "diverged_at_epoch": epoch}
            history.append(epoch_entry(model, data.test, recipe, epoch, stats, data.steps_per_epoch))
            if is_main():  # the lr schedule is a function of the step and the epoch is len(history)
                save_checkpoint(ctx.checkpoint, {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "rng": rng_state(ctx.device),
                    **(checkpoint_extra or {}),
                })
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}", test_acc=f"{history[-1]['test_acc']:.3f}")
    finally:
        bar.close()
    return {}


def train_classify(config: dict[str, Any], ctx: TaskContext) -> TaskResult:
    """Train (or resume) the run `config` on `ctx.device`; the trainer of task "classify"."""
    recipe = recipe_from_config(config["recipe"])
    check_global_batch(recipe.batch_size)
    data = load_training_data(config, recipe, ctx.device)

    model = initial_model(config)
    check_logits(model, data)
    params = count_params(model)
    flops = count_flops(model, data.image_shape)
    prepare_model(model, ctx.device)
    optimizer = make_optimizer(model, recipe, ctx.device)

    history: list[dict[str, Any]] = []
    state = resume_state(ctx.checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        set_rng_state(state["rng"], ctx.device)
    divergence = fit(model, optimizer, data, recipe, config["seed"], history, recipe.epochs, ctx,
                     desc=config["model"])
    if not divergence and is_main():
        save_checkpoint(weights_path(ctx.results_dir, config), model.state_dict())
    return TaskResult(
        status="diverged" if divergence else "ok",
        metrics=final_metrics(history, completed=not divergence),
        params=params,
        flops=flops,
        dataset_sha256=data.dataset["sha256"],
        extra={"dataset": data.dataset, **divergence},
    )


register_task(TASK, train_classify)
