"""`gradpath bench train` on CPU: both loops run and the expected columns come out."""

from __future__ import annotations

import json

import pytest

from gradpath_lib import bench
from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import registry
from test_train import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TINY = ["bench", "train", "--model", "tiny-bench-net", "--scale", "smoke", "--batch", "16",
        "--steps", "2", "--repeats", "2", "--workers", "0", "--device", "cpu"]


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    registry.model_names()
    monkeypatch.setitem(registry._REGISTRY, "tiny-bench-net",
                        registry.ModelEntry("tiny-bench-net", TinyNet, "test", presets={"smoke": {}}))


def test_bench_prints_both_loops_with_every_column(capsys):
    assert main(TINY) == 0
    out = capsys.readouterr().out
    for column in ("images_per_s", "train_TFLOP/s", "fraction_of_peak", "peak_mem_GiB"):
        assert column in out
    assert "gradpath" in out and "reference" in out and "speedup gradpath / reference" in out
    assert "3 x forward" in out and "float32 matmul peak" in out
    assert "smoke: generated smoke data" in out


def test_bench_json_is_consistent(capsys):
    assert main(TINY + ["--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ours, reference = result["loops"]
    assert (ours["loop"], reference["loop"]) == ("gradpath", "reference")
    assert result["train_flops_per_image"] == 3 * result["forward_flops_per_image"] > 0
    for row in (ours, reference):
        assert row["images_per_s"] > 0 and row["peak_memory_bytes"] is None
        assert row["train_flops_per_s"] == pytest.approx(row["images_per_s"] * result["train_flops_per_image"])
        assert row["fraction_of_peak"] == pytest.approx(row["train_flops_per_s"] / result["peak_flops_per_s"])
    assert result["speedup"] == pytest.approx(ours["images_per_s"] / reference["images_per_s"])


def test_bench_falls_back_to_synthetic_data_and_says_so(monkeypatch):
    def missing(name, split):
        raise GradpathError("no CIFAR-10 found")

    monkeypatch.setattr(bench, "load_classification", missing)
    images, labels, note = bench.bench_images("mini", 40, seed=0)
    assert images.shape == (40, 32, 32, 3) and labels.shape == (40,)
    assert note.startswith("synthetic") and "no CIFAR-10 found" in note


def test_bench_rejects_bad_arguments():
    with pytest.raises(GradpathError, match="steps"):
        bench.bench_train("tiny-bench-net", "smoke", steps=0, device="cpu")
    detector = next(name for name in registry.model_names() if registry.get_entry(name).task == "detect")
    with pytest.raises(GradpathError, match="classifiers"):
        bench.bench_train(detector, "smoke", device="cpu")
