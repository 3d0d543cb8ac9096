"""One run on several processes (GPUs, or CPU cores) with torch.distributed data parallelism.

`gradpath train ... --nproc N` relaunches the same command under torchrun (`launch`); a multi-node
user runs `torchrun ... -m gradpath_lib train ...` directly. Inside, `process_group` joins the group
torchrun describes in its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL with
one GPU per rank on CUDA, gloo on CPU. The trainers then keep one-process semantics:

- every rank draws the same global batch (same epoch generator) and keeps its contiguous shard
  (`shard`); DDP averages the gradients, so a step equals the one-process step on the global batch
  (the recipe's `batch_size` stays the global batch and must be divisible by the number of ranks);
- epoch sums (loss, correct predictions, first non-finite step) are all-reduced; evaluation is
  sharded the same way and summed;
- rank 0 alone writes checkpoints and records (`is_main`); every rank resumes from the same
  checkpoint, so a killed multi-process run resumes like a one-process run.

The detection trainer does the same, except that each rank normalizes its loss by the positives
of its own shard (as YOLOv5 does), so its multi-rank runs are close to, not equal to, one process.

BatchNorm: on CUDA every BatchNorm becomes a SyncBatchNorm, which normalizes with the statistics of
the whole global batch, as one process does. torch 2.13's SyncBatchNorm refuses CPU tensors, so
with gloo on CPU each rank normalizes with its shard's statistics ("ghost batch" BN of batch/N):
BN-free models train exactly as one process does, BN models only approximately.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import GradpathError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Options of a command that must not be passed on to the processes torchrun starts.
LAUNCHER_OPTIONS = ("func", "command", "nproc")
NO_STEP = -1  # "no non-finite step" in the trainers' first-bad-step tensors


@dataclass(frozen=True)
class World:
    """This process's rank among `size` ranks."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes records, checkpoints and progress."""
        return self.rank == 0


def world() -> World:
    """The process group this process belongs to (a one-rank world when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def is_main() -> bool:
    """True on rank 0 and in every non-distributed process."""
    return world().is_main


def launched_by_torchrun() -> bool:
    """True when torchrun (or `torch.distributed.run`) started this process."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def rank_device(device: str, local_rank: int) -> str:
    """The device of the rank with `local_rank`: its own GPU on CUDA, else the CPU."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    if device in ("auto", "cuda"):
        return f"cuda:{local_rank}"
    raise GradpathError(f"device {device!r} cannot be split among ranks; with --nproc or torchrun use "
                        "auto, cpu or cuda (rank r uses cuda:<local rank r>)")


@contextmanager
def process_group(device: str = "auto") -> Iterator[str]:
    """Join torchrun's process group (if torchrun started us) and yield this rank's device string.

    Inside an enclosing `process_group` the group is reused (and left to the enclosing one to end).
    """
    if not launched_by_torchrun():
        yield device
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    mine = rank_device(device, local_rank)
    if dist.is_initialized():
        yield mine
        return
    if mine.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device(mine))
    else:
        dist.init_process_group("gloo")
    try:
        yield mine
    finally:
        dist.destroy_process_group()


def check_global_batch(batch_size: int) -> None:
    """Raise GradpathError unless the global batch splits evenly among the ranks."""
    size = world().size
    if batch_size % size:
        raise GradpathError(f"batch_size {batch_size} cannot be split evenly among {size} processes; "
                            f"use a number of processes that divides it")


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch (the whole batch when not distributed)."""
    me = world()
    if me.size == 1:
        return batch
    per_rank = batch.shape[0] // me.size
    return batch[me.rank * per_rank:(me.rank + 1) * per_rank]


def local_slice(count: int) -> slice:
    """This rank's contiguous part of `count` items, as even as possible (for evaluation sets)."""
    me = world()
    return slice(count * me.rank // me.size, count * (me.rank + 1) // me.size)


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks (in place; unchanged when not distributed)."""
    if world().size > 1:
        dist.all_reduce(tensor, dist.ReduceOp.SUM)
    return tensor


def earliest_step(first_step: torch.Tensor) -> torch.Tensor:
    """The smallest non-negative step over the ranks, or NO_STEP if no rank has one (an int64 scalar)."""
    if world().size == 1:
        return first_step
    never = torch.iinfo(torch.int64).max
    steps = torch.where(first_step < 0, never, first_step)
    dist.all_reduce(steps, dist.ReduceOp.MIN)
    return torch.where(steps == never, NO_STEP, steps)


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for when not distributed)."""
    if world().size > 1:
        dist.barrier()


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped for data parallelism (SyncBatchNorm on CUDA), or `model` itself on one rank.

    Call the wrapper for training forwards; the parameters stay those of `model` (SyncBatchNorm
    reuses them), so optimizers, checkpoints and evaluation keep using `model`.
    """
    if world().size == 1:
        return model
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def relaunch_argv(args: argparse.Namespace) -> list[str]:
    """The command line of `args` again (its command and options), without the launcher's options."""
    argv = [args.command]
    for key, value in vars(args).items():
        if key in LAUNCHER_OPTIONS or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m gradpath_lib <argv>` on `nproc` processes of this machine with torchrun."""
    if nproc < 1:
        raise GradpathError(f"--nproc must be >= 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "gradpath_lib", *argv]
    return subprocess.run(command, check=False).returncode
