"""`gradpath bench train`: our training step against the loop a typical user writes, side by side.

Both loops train the same model at the same batch size on the same images:
- "gradpath": the trainer's own epoch (`train.classify.train_epoch`): data resident on the device
  as uint8, augmentation on the device, bf16 autocast + channels-last + fused SGD on CUDA, one
  host sync per pass. `variants` adds the same loop compiled: "gradpath+compile"
  (`torch.compile`, mode "default") and "gradpath+cudagraphs" (mode "reduce-overhead": CUDA graphs).
- "reference": `torch.utils.data.DataLoader` (`REFERENCE_WORKERS` workers by default: 4, or fewer
  on a machine with fewer CPU cores; pinned memory on GPU) over
  the uint8 arrays with per-image augmentation on the CPU (pad-crop + flip in numpy), fp32, NCHW,
  the default SGD, `loss.item()` every step. cuDNN autotuning, switched on for our loop, stays on
  for it (in its favour).

Each repeat is one pass of `steps` batches; the first pass (warm-up, compilation) is timed apart
(`first_pass_s`); images/s is the median over repeats, timed with CUDA events on GPU. A compiled
variant pays at a scale when a run there is longer than its break-even: the step count of a run
at which it has made up its slower first pass (`compile_break_even_steps`; torch's on-disk
compile caches are left as they are, so a second compile of the same network may be faster).
Training FLOPs per image are taken as 3 x the forward FLOPs of one image (torch's FLOP counter,
FLOPs = 2 x MACs): forward plus a backward costing about twice the forward. The peak is measured in the same process: a large
bf16 matmul on GPU, an fp32 one on CPU.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import dataset_for_scale, load_classification
from .errors import GradpathError, check_choice, error_line
from .models.cost import count_flops
from .models.registry import create_model, get_entry
from .runs import resolve_device
from .store import device_name
from .train.batches import DeviceImages, epoch_generator
from .train.classify import compiled, make_optimizer, prepare_model, train_epoch
from .train.recipes import Recipe, recipe_for

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (about 2 x forward)
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
MATMUL_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}
MATMUL_REPEATS = 10
SYNTHETIC_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
# Our loop's variants: name -> the recipe's torch.compile mode (recipes.COMPILE_MODES).
VARIANTS = {"eager": "off", "compile": "default", "cudagraphs": "reduce-overhead"}
REFERENCE_WORKERS = min(4, os.cpu_count() or 1)  # DataLoader workers: torch warns above the CPU count


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds `fn()` takes on `device` (CUDA events on GPU, a wall clock elsewhere)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def matmul_peak(device: torch.device) -> float:
    """Measured FLOP/s of a large square matmul (bf16 on CUDA, fp32 on CPU), median of repeats."""
    n = MATMUL_SIZE[device.type]
    a = torch.randn(n, n, device=device, dtype=MATMUL_DTYPE[device.type])
    b = torch.randn(n, n, device=device, dtype=MATMUL_DTYPE[device.type])
    timed(lambda: a @ b, device)  # warm-up
    seconds = statistics.median(timed(lambda: a @ b, device) for _ in range(MATMUL_REPEATS))
    return 2 * n**3 / seconds


def bench_images(scale: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` training images of the scale's dataset, or synthetic ones if it is unavailable."""
    name = dataset_for_scale(scale)
    try:
        data = load_classification(name, "train")
    except GradpathError as err:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
        labels = rng.integers(0, SYNTHETIC_CLASSES, count).astype(np.int64)
        return images, labels, f"synthetic random images ({name} unavailable: {err})"
    reps = -(-count // len(data.labels))  # repeat a small dataset to fill the passes
    images = np.concatenate([data.images] * reps)[:count]
    labels = np.concatenate([data.labels] * reps)[:count]
    return images, labels, f"{name}: {data.source}"


class AugmentedArrays(Dataset):
    """What a typical user writes: per-image pad-crop and flip on the CPU, then normalize."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, recipe: Recipe, stats: DeviceImages):
        self.images, self.labels, self.pad, self.flip = images, labels, recipe.crop_padding, recipe.flip
        self.mean = stats.mean.cpu().view(-1, 1, 1)
        self.std = stats.std.cpu().view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = np.pad(self.images[i], ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        img = img[dy : dy + IMAGE_SHAPE[0], dx : dx + IMAGE_SHAPE[1]]
        if self.flip and torch.rand(()) < 0.5:
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std, int(self.labels[i])


def reference_pass(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, recipe: Recipe,
    device: torch.device,
) -> float:
    """One pass of the reference loop; returns the summed loss (read every step, as users do)."""
    model.train()
    running = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
    return running


def loop_name(variant: str) -> str:
    """The bench row of one of our loop's variants: "gradpath" (eager) or "gradpath+<variant>"."""
    return "gradpath" if variant == "eager" else f"gradpath+{variant}"


def loop_result(name: str, first_pass_s: float, seconds: list[float], steps: int, images: int,
                train_flops: int, peak: float, peak_memory: int | None) -> dict[str, Any]:
    """One row of the bench: median images/s, achieved FLOP/s and its fraction of the peak."""
    images_per_s = images / statistics.median(seconds)
    return {
        "loop": name,
        "images_per_s": images_per_s,
        "train_flops_per_s": images_per_s * train_flops,
        "fraction_of_peak": images_per_s * train_flops / peak,
        "peak_memory_bytes": peak_memory,
        "first_pass_s": first_pass_s,
        "step_s": statistics.median(seconds) / steps,
    }


def measure_loop(run_pass: Callable[[int], Any], device: torch.device,
                 repeats: int) -> tuple[float, list[float], int | None]:
    """Seconds of the warm-up pass and of `repeats` timed passes after it, and the peak GPU memory."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    first = timed(lambda: run_pass(0), device)
    seconds = [timed(lambda r=r: run_pass(r), device) for r in range(1, repeats + 1)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return first, seconds, peak


def compile_break_even(eager: dict[str, Any], variant: dict[str, Any], steps: int) -> float | None:
    """Steps of a run after which `variant` (a compiled loop's row) has made up its slower first pass
    of `steps` steps against `eager`'s; None when its steps are not faster, so it never does."""
    saved = eager["step_s"] - variant["step_s"]
    if saved <= 0:
        return None
    return steps + max(0.0, variant["first_pass_s"] - eager["first_pass_s"]) / saved


def steps_per_run(scale: str) -> int:
    """Optimizer steps of one classification run of the scale's recipe on its dataset."""
    from .workload import train_set

    recipe = Recipe(**recipe_for(scale))
    return recipe.epochs * (train_set(dataset_for_scale(scale), scale)[0] // recipe.batch_size)


def bench_recipe(scale: str, batch_size: int | None = None, compile: str = "off") -> Recipe:
    """The scale's training recipe with the bench's batch size and compile mode."""
    overrides = {"compile": compile} | ({"batch_size": batch_size} if batch_size is not None else {})
    return Recipe(**recipe_for(scale, **overrides))


def gradpath_pass(model: str, scale: str, recipe: Recipe, data: DeviceImages, steps: int,
                  seed: int) -> Callable[[int], Any]:
    """A fresh `model` and optimizer on `data`'s device, and `run_pass(r)`: one of our trainer's
    epochs of `steps` batches with the epoch generator of (seed, r)."""
    device = data.images.device
    torch.manual_seed(seed)
    net = prepare_model(create_model(model, scale), device)
    forward = compiled(net, recipe.compile)
    optimizer = make_optimizer(net, recipe, device)
    return lambda r: train_epoch(net, forward, optimizer, data, recipe, epoch_generator(seed, r), 0, steps)


def check_variants(variants: Sequence[str]) -> list[str]:
    """`variants` without repeats, "eager" first (always timed: the others are compared with it)."""
    for variant in variants:
        check_choice("bench variant", variant, VARIANTS)
    return ["eager", *(v for v in dict.fromkeys(variants) if v != "eager")]


def check_batch_size(batch_size: int | None) -> None:
    """Raise GradpathError unless `batch_size` is None (the recipe's) or >= 1."""
    if batch_size is not None and batch_size < 1:
        raise GradpathError(f"bench batch size (--batch) must be >= 1, got {batch_size}")


def check_bench_sizes(steps: int, repeats: int, batch_size: int | None, workers: int) -> None:
    """Raise GradpathError naming the first of the bench's counts that is out of range."""
    if steps < 1 or repeats < 1:
        raise GradpathError(f"bench steps and repeats must be >= 1, got steps={steps}, repeats={repeats}")
    check_batch_size(batch_size)
    if workers < 0:
        raise GradpathError(f"bench DataLoader workers (--workers) must be >= 0 (0: load in the main process), "
                            f"got {workers}")


def bench_train(
    model: str,
    scale: str = "mini",
    *,
    batch_size: int | None = None,
    steps: int = 20,
    repeats: int = 5,
    device: str = "auto",
    variants: Sequence[str] = ("eager",),
    workers: int = REFERENCE_WORKERS,
    seed: int = 0,
) -> dict[str, Any]:
    """Time our training step (in each of `variants`) and the reference loop on `model`; returns
    the bench as a dict."""
    check_bench_sizes(steps, repeats, batch_size, workers)
    if get_entry(model).task != "classify":
        raise GradpathError(f"bench train times classifiers; {model!r} is a {get_entry(model).task!r} model")
    variants = check_variants(variants)
    dev = resolve_device(device)
    recipe = bench_recipe(scale, batch_size)
    count = recipe.batch_size * steps
    images, labels, data_note = bench_images(scale, count, seed)
    data = DeviceImages.from_arrays(images, labels, dev)
    torch.manual_seed(seed)
    forward_flops = count_flops(create_model(model, scale), (3, *IMAGE_SHAPE[:2]))
    train_flops = TRAIN_FLOPS_PER_FORWARD * forward_flops
    peak = matmul_peak(dev)

    rows, failed = [], {}
    for variant in variants:
        torch._dynamo.reset()  # each compiled variant's first pass includes its own compilation
        try:
            run_pass = gradpath_pass(model, scale, bench_recipe(scale, batch_size, VARIANTS[variant]), data, steps,
                                     seed)
            first, seconds, memory = measure_loop(run_pass, dev, repeats)
        except Exception as err:  # a compiler missing on this machine must not lose the other loops
            if variant == "eager":
                raise
            failed[variant] = error_line(err)
            continue
        finally:
            run_pass = None  # free its model, optimizer and graphs before the next loop is measured
            torch._dynamo.reset()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(loop_result(loop_name(variant), first, seconds, steps, count, train_flops, peak, memory))

    torch.manual_seed(seed)
    reference = create_model(model, scale).to(dev)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    loader = DataLoader(
        AugmentedArrays(images, labels, recipe, data), batch_size=recipe.batch_size, shuffle=True,
        drop_last=True, num_workers=workers, pin_memory=dev.type == "cuda",
        persistent_workers=workers > 0,
    )
    ref_first, ref_seconds, ref_memory = measure_loop(
        lambda r: reference_pass(reference, ref_optimizer, loader, recipe, dev), dev, repeats
    )
    rows.append(loop_result("reference", ref_first, ref_seconds, steps, count, train_flops, peak, ref_memory))
    eager = rows[0]
    for row in rows[1:-1]:
        row["compile_break_even_steps"] = compile_break_even(eager, row, steps)
    return {
        "model": model,
        "scale": scale,
        "device": device_name(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "batch_size": recipe.batch_size,
        "steps": steps,
        "repeats": repeats,
        "variants": [v for v in variants if v not in failed],
        "failed_variants": failed,
        "steps_per_run": steps_per_run(scale),
        "reference_workers": workers,
        "data": data_note,
        "forward_flops_per_image": forward_flops,
        "train_flops_per_image": train_flops,
        "peak_flops_per_s": peak,
        "peak_dtype": str(MATMUL_DTYPE[dev.type]).removeprefix("torch."),
        "speedup": eager["images_per_s"] / rows[-1]["images_per_s"],
        "loops": rows,
    }


def compile_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per compiled variant of a bench: its speed against eager, its extra first-pass seconds, its
    break-even and whether a run at the bench's scale is long enough to repay the compilation."""
    loops = {row["loop"]: row for row in result["loops"]}
    eager, rows = loops["gradpath"], []
    for variant in result.get("variants", ["eager"])[1:]:
        row = loops[loop_name(variant)]
        even = row["compile_break_even_steps"]
        rows.append({
            "model": result["model"],
            "variant": variant,
            "images/s vs eager": round(row["images_per_s"] / eager["images_per_s"], 2),
            "extra first-pass s": round(row["first_pass_s"] - eager["first_pass_s"], 1),
            "break-even steps": None if even is None else round(even),
            "steps per run": result["steps_per_run"],
            "pays": even is not None and even < result["steps_per_run"],
        })
    return rows


def compile_verdict(row: dict[str, Any], scale: str) -> str:
    """One sentence on a `compile_rows` row: does compiling pay for one run at `scale`?"""
    speed = f"{row['variant']} runs {row['model']} at {row['images/s vs eager']}x the eager images/s"
    if row["break-even steps"] is None:
        return f"{speed}, so it never repays its {row['extra first-pass s']} s longer first pass: it does not pay."
    verdict = "pays" if row["pays"] else "does not pay"
    return (f"{speed} and repays its {row['extra first-pass s']} s longer first pass after "
            f"{row['break-even steps']} steps; a {scale} run has {row['steps per run']}: it {verdict} at this scale.")


def format_bench(result: dict[str, Any]) -> str:
    """The bench as a readable table with its context lines."""
    rows = [{
        "loop": row["loop"],
        "images_per_s": row["images_per_s"],
        "train_TFLOP/s": row["train_flops_per_s"] / 1e12,
        "fraction_of_peak": row["fraction_of_peak"],
        "peak_mem_GiB": "n/a" if row["peak_memory_bytes"] is None else row["peak_memory_bytes"] / 2**30,
        "first_pass_s": row["first_pass_s"],
    } for row in result["loops"]]
    table = pd.DataFrame(rows).set_index("loop")
    lines = [
        f"model {result['model']} ({result['scale']}), batch {result['batch_size']}, "
        f"{result['steps']} steps x {result['repeats']} timed passes (median) after a first pass "
        f"timed apart, device: {result['device']}, torch {result['torch']}",
        f"data: {result['data']}",
        f"training FLOPs/image = 3 x forward = {result['train_flops_per_image'] / 1e9:.3f} GFLOP "
        f"(torch FLOP counter, FLOPs = 2 x MACs); measured {result['peak_dtype']} matmul peak "
        f"{result['peak_flops_per_s'] / 1e12:.3g} TFLOP/s",
        table.to_string(float_format=lambda v: f"{v:.4g}"),
        f"speedup gradpath / reference: {result['speedup']:.2f}x",
        *(compile_verdict(row, result["scale"]) for row in compile_rows(result)),
        *(f"{variant} failed: {error}" for variant, error in result.get("failed_variants", {}).items()),
    ]
    return "\n".join(lines)
