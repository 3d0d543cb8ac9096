"""Data-parallel training: 2 gloo processes on CPU give the one-process record (per-block gradient
norms included), and resume from its checkpoint; the detection and LW-DNA trainers run on 2
processes too."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gradpath_lib import distributed
from gradpath_lib.cli import INTERRUPTED_EXIT, build_parser, main
from gradpath_lib.distributed import World
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import registry
from gradpath_lib.models.dsfb import GradientNormMonitor
from gradpath_lib.runs import normalize_config
from gradpath_lib.store import checkpoint_path, load_checkpoint, record_path
from gradpath_lib.train import classify
from gradpath_lib.train.classify import classify_config, strip_timing
from gradpath_lib.train.detect import detect_config
from gradpath_lib.train.lwdna import lwdna_config

from conftest import fit_interrupted_after

REPO = Path(__file__).resolve().parent.parent
MODEL = "tiny-bn-free-net"
MONITORED = "tiny-monitored-net"  # with DSFB's per-block gradient-norm monitor
RANKS = 2
# Detection on 2 CPU ranks is checked for its plumbing, not for equality: BatchNorm statistics
# (no SyncBatchNorm on CPU) and the loss normalizer (the rank's own positives) are per rank.
DETECT_CONFIG = detect_config("yolor-v3", "smoke", 0, epochs=1)
# LW-DNA on 2 CPU ranks is checked for its plumbing (the ranks must cut the same channels), not for
# equality (BatchNorm statistics are per rank). At these widths one channel costs up to 30 % of the
# target FLOPs, hence the tolerance.
LWDNA_CONFIG = lwdna_config("resnet", "smoke", 0, model_kwargs={"widths": (4, 8, 8), "stem_width": 4},
                            score_batches=1, epochs=2, tolerance=0.35)
EPOCHS = 2  # the run is resumed after its first
# Summation order differs between one process and two ranks (all-reduce): float32 round-off only.
TOLERANCE = 1e-5


class BNFreeNet(nn.Module):
    """conv-ReLU-conv-ReLU, global pool, linear: no BatchNorm, whose CPU statistics would be per rank."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MonitoredNet(BNFreeNet):
    """BNFreeNet recording the mean gradient norm at both ReLU outputs per epoch, as resnet-dsfb does per block."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__(width, num_classes)
        self.gradient_monitor = GradientNormMonitor([self.body[1], self.body[3]])

    def epoch_metrics(self) -> dict[str, list[float]]:
        norms = self.gradient_monitor.read_and_reset()
        return {} if norms is None else {"block_grad_norm": norms}


TEST_NETS = {MODEL: BNFreeNet, MONITORED: MonitoredNet}


def register_test_nets() -> None:
    """Add the test networks to the registry of this process (torchrun's ranks call it too)."""
    for name, factory in TEST_NETS.items():
        if name not in registry.model_names():
            registry.register(name, factory, family="test", presets={"smoke": {}})


RANK_SCRIPT = """
import sys
sys.path.insert(0, "tests")
import test_distributed
test_distributed.register_test_nets()
from gradpath_lib.cli import main
from gradpath_lib.distributed import process_group
from gradpath_lib.runs import ensure_run
detect_dir, lwdna_dir, *trains = sys.argv[1:]
with process_group("cpu") as device:  # one launch trains everything: each rank imports torch once
    ensure_run(test_distributed.DETECT_CONFIG, results_dir=detect_dir, device=device, progress=False)
    ensure_run(test_distributed.LWDNA_CONFIG, results_dir=lwdna_dir, device=device, progress=False)
    for model, results_dir in zip(trains[::2], trains[1::2]):
        assert main(test_distributed.train_argv(results_dir, model)) == 0
"""


def train_argv(results_dir: Path | str, model: str = MODEL) -> list[str]:
    return ["train", "--model", model, "--scale", "smoke", "--epochs", str(EPOCHS), "--device", "cpu",
            "--results-dir", str(results_dir), "--no-progress"]


def run_two_ranks(tmp_path: Path, detect_dir: Path, lwdna_dir: Path,
                  *trains: tuple[str, Path]) -> subprocess.CompletedProcess:
    """On 2 gloo ranks started by torchrun (as `--nproc 2` does): the smoke detection run into `detect_dir`,
    the LW-DNA run into `lwdna_dir`, then `gradpath train` of each (model, results dir) of `trains`."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}",
               str(script), str(detect_dir), str(lwdna_dir), *(str(a) for run in trains for a in run)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def the_record(results_dir: Path) -> dict:
    (path,) = (results_dir / "smoke" / "runs").glob("*.json")
    return json.loads(path.read_text())


def assert_close(ours: object, reference: object, where: str = "metrics") -> None:
    """Equal structure; equal values, numbers within TOLERANCE (relative)."""
    if isinstance(reference, dict):
        assert isinstance(ours, dict) and ours.keys() == reference.keys(), where
        for key in reference:
            assert_close(ours[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, list):
        assert isinstance(ours, list) and len(ours) == len(reference), where
        for i, (a, b) in enumerate(zip(ours, reference)):
            assert_close(a, b, f"{where}[{i}]")
    elif isinstance(reference, float):
        assert math.isclose(ours, reference, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (where, ours, reference)
    else:
        assert ours == reference, (where, ours, reference)


@pytest.fixture
def test_nets(monkeypatch):
    registry.model_names()
    for name, factory in TEST_NETS.items():
        monkeypatch.setitem(registry._REGISTRY, name, registry.ModelEntry(name, factory, "test", presets={"smoke": {}}))


def test_two_gloo_ranks_match_one_process_and_resume_its_checkpoint(tmp_path, monkeypatch, test_nets):
    torch.set_num_threads(1)
    one, one_monitored = tmp_path / "one", tmp_path / "one-monitored"
    assert main(train_argv(one)) == 0
    reference = the_record(one)
    assert reference["provenance"]["processes"] == 1
    assert main(train_argv(one_monitored, MONITORED)) == 0
    monitored_reference = the_record(one_monitored)

    # One process is interrupted after its first epoch; two ranks will resume from its checkpoint.
    resumed = tmp_path / "resumed"
    monkeypatch.setattr(classify, "fit", fit_interrupted_after(classify.fit, 1))
    assert main(train_argv(resumed)) == INTERRUPTED_EXIT, "Ctrl-C exits 130 and keeps the checkpoint"
    config = normalize_config(classify_config(MODEL, "smoke", 0, epochs=EPOCHS))
    first_epoch = load_checkpoint(checkpoint_path(resumed, config))["history"][0]

    two, two_monitored = tmp_path / "two", tmp_path / "two-monitored"
    detect, lwdna = tmp_path / "detect", tmp_path / "lwdna"
    trains = [(MODEL, two), (MODEL, resumed), (MONITORED, two_monitored)]
    result = run_two_ranks(tmp_path, detect, lwdna, *trains)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.strip().splitlines()) == 2 * len(trains), "only rank 0 prints the record path and summary"
    record = the_record(two)
    assert record["run_id"] == reference["run_id"], "same config, same run: the global batch is unchanged"
    assert record["provenance"]["processes"] == RANKS
    assert_close(strip_timing(record["metrics"]), strip_timing(reference["metrics"]))
    assert not list((two / "smoke" / "checkpoints").glob("*")), "rank 0 removes the checkpoint after the record"

    detection = the_record(detect)
    assert detection["status"] == "ok" and detection["provenance"]["processes"] == RANKS
    assert detection["metrics"]["epochs_done"] == 1 and not list((detect / "smoke" / "checkpoints").glob("*"))
    losses = [detection["metrics"]["history"][0][f"train_{part}_loss"] for part in ("box", "cls", "mask")]
    assert all(math.isfinite(loss) for loss in losses)

    record = json.loads(record_path(resumed, config).read_text())
    assert record["metrics"]["history"][0] == first_epoch, "epoch 1 came from the checkpoint, not retrained"
    assert_close(strip_timing(record["metrics"]), strip_timing(reference["metrics"]))

    # per-block gradient norms: each rank sees only its shard's gradient; the record is the global batch's
    record = the_record(two_monitored)
    assert record["provenance"]["processes"] == RANKS
    norms = [epoch["block_grad_norm"] for epoch in monitored_reference["metrics"]["history"]]
    assert len(norms) == EPOCHS and all(len(n) == 2 and min(n) > 0 for n in norms)
    assert_close(strip_timing(record["metrics"]), strip_timing(monitored_reference["metrics"]))

    shrunk = the_record(lwdna)
    assert shrunk["status"] == "ok" and shrunk["provenance"]["processes"] == RANKS
    assert shrunk["metrics"]["epochs_done"] == 2 and shrunk["flops"] <= shrunk["metrics"]["lwdna"]["target_flops"]


def test_shards_and_batch_split(monkeypatch):
    batch = torch.arange(8)
    assert torch.equal(distributed.shard(batch), batch), "one process keeps the whole batch"
    monkeypatch.setattr(distributed, "world", lambda: World(rank=1, size=2))
    assert distributed.shard(batch).tolist() == [4, 5, 6, 7]
    assert distributed.local_slice(5) == slice(2, 5)
    distributed.check_global_batch(64)
    monkeypatch.setattr(distributed, "world", lambda: World(rank=0, size=3))
    with pytest.raises(GradpathError, match="batch_size 64 cannot be split evenly among 3"):
        distributed.check_global_batch(64)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gradpath_lib"]


@pytest.fixture
def launches(monkeypatch) -> list[list[str]]:
    """The commands `distributed.launch` would run (nothing is started)."""
    launched: list[list[str]] = []
    monkeypatch.setattr(distributed.subprocess, "run",
                        lambda command, check: launched.append(command) or subprocess.CompletedProcess(command, 0))
    return launched


def test_nproc_relaunches_the_command_under_torchrun(launches, tmp_path):
    assert main(["train", "--model", "resnet", "--nproc", "2", "--results-dir", str(tmp_path)]) == 0
    assert main(["reproduce", "--scale", "smoke", "--only", "table2", "--runs-only", "--nproc", "2",
                 "--results-dir", str(tmp_path)]) == 0
    (train, reproduce) = launches
    assert train[:7] == TORCHRUN and reproduce[:7] == TORCHRUN
    assert build_parser().parse_args(train[7:]).model == "resnet" and "--nproc" not in train
    again = build_parser().parse_args(reproduce[7:])
    assert again.runs_only and again.only == ["table2"] and again.nproc == 1
    assert not tmp_path.exists() or not any(tmp_path.iterdir()), "the launcher itself trains nothing"


def test_data_parallel_reproduce_only_trains(launches, capsys):
    assert main(["reproduce", "--scale", "smoke", "--nproc", "2"]) == 2
    assert "need --runs-only with --jobs 1 and the local executor" in capsys.readouterr().err and not launches


def test_relaunch_argv_and_rank_devices():
    args = build_parser().parse_args(
        ["train", "--model", "resnet", "--seed", "3", "--nproc", "2", "--no-progress", "--device", "cpu"])
    argv = distributed.relaunch_argv(args)
    assert argv[0] == "train" and "--nproc" not in argv and "--no-progress" in argv and "--force" not in argv
    assert build_parser().parse_args(argv).seed == 3
    assert distributed.rank_device("cpu", 1) == "cpu"
    with pytest.raises(GradpathError, match="cannot be split among ranks"):
        distributed.rank_device("cuda:3", 1)
