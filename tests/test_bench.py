"""`gradpath bench train` on CPU: both loops run and the expected columns come out."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gradpath_lib import bench
from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import registry
from gradpath_lib.train.recipes import recipe_for
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


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(GradpathError, match="steps"):
        bench.bench_train("tiny-bench-net", "smoke", steps=0, device="cpu")
    with pytest.raises(GradpathError, match=r"--batch\) must be >= 1, got 0"):
        bench.bench_train("tiny-bench-net", "smoke", batch_size=0, device="cpu")
    assert main([*TINY, "--workers", "-1"]) == 2
    assert "(--workers) must be >= 0" in capsys.readouterr().err
    detector = next(name for name in registry.model_names() if registry.get_entry(name).task == "detect")
    with pytest.raises(GradpathError, match="classifiers"):
        bench.bench_train(detector, "smoke", device="cpu")


def test_reference_workers_default_to_at_most_the_cpu_cores():
    from gradpath_lib.cli import build_parser

    args = build_parser().parse_args(["bench", "train", "--model", "resnet"])
    assert args.workers == bench.REFERENCE_WORKERS == min(4, os.cpu_count() or 1)
    assert bench.bench_recipe("smoke", 8).batch_size == 8


def test_compiled_variants_are_timed_beside_eager_with_their_break_even(monkeypatch, capsys):
    modes = []

    def compile_stand_in(module, mode):  # the loop plumbing is under test, not inductor
        modes.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", compile_stand_in)
    assert main(TINY + ["--variants", "cudagraphs", "compile", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert modes == ["reduce-overhead", "default"]
    assert [row["loop"] for row in result["loops"]] == [
        "gradpath", "gradpath+cudagraphs", "gradpath+compile", "reference"]
    assert result["variants"] == ["eager", "cudagraphs", "compile"]
    assert result["steps_per_run"] == 3 * (512 // 64)  # smoke recipe: 3 epochs of full batches of 64
    for row in result["loops"]:
        assert row["first_pass_s"] > 0 and row["step_s"] > 0
    assert all("compile_break_even_steps" in row for row in result["loops"][1:3])
    assert "compile_break_even_steps" not in result["loops"][0]
    assert [row["variant"] for row in bench.compile_rows(result)] == ["cudagraphs", "compile"]


def test_break_even_is_the_run_length_where_the_compiled_loop_catches_up():
    eager = {"step_s": 0.010, "first_pass_s": 0.2}
    faster = {"step_s": 0.008, "first_pass_s": 10.2}
    steps = 20
    even = bench.compile_break_even(eager, faster, steps)
    assert even == pytest.approx(steps + 10.0 / 0.002)
    # at that many steps both loops have taken the same time (first pass + the remaining steps)
    assert eager["first_pass_s"] + (even - steps) * eager["step_s"] == pytest.approx(
        faster["first_pass_s"] + (even - steps) * faster["step_s"])
    assert bench.compile_break_even(eager, {"step_s": 0.011, "first_pass_s": 5.0}, steps) is None


def test_compile_verdict_says_whether_a_run_repays_the_compilation():
    loops = [
        {"loop": "gradpath", "images_per_s": 100.0, "first_pass_s": 1.0},
        {"loop": "gradpath+compile", "images_per_s": 150.0, "first_pass_s": 31.0, "compile_break_even_steps": 900.0},
        {"loop": "gradpath+cudagraphs", "images_per_s": 90.0, "first_pass_s": 9.0, "compile_break_even_steps": None},
        {"loop": "reference", "images_per_s": 20.0, "first_pass_s": 1.0},
    ]
    result = {"model": "resnet", "variants": ["eager", "compile", "cudagraphs"], "steps_per_run": 1000,
              "loops": loops}
    compiled, graphs = bench.compile_rows(result)
    assert (compiled["pays"], compiled["images/s vs eager"], compiled["extra first-pass s"]) == (True, 1.5, 30.0)
    assert "it pays at this scale" in bench.compile_verdict(compiled, "mini")
    assert graphs["pays"] is False and "never repays" in bench.compile_verdict(graphs, "mini")
    result["steps_per_run"] = 800
    assert "does not pay" in bench.compile_verdict(bench.compile_rows(result)[0], "mini")


def test_unknown_variant_or_compile_mode_names_the_choices():
    with pytest.raises(GradpathError, match="valid choices: eager, compile, cudagraphs"):
        bench.bench_train("tiny-bench-net", "smoke", variants=["fast"], device="cpu")
    with pytest.raises(GradpathError, match="valid choices: off, default, reduce-overhead"):
        recipe_for("smoke", compile="fast")


def test_a_failing_compiled_variant_is_reported_and_the_other_loops_kept(monkeypatch, capsys):
    def no_compiler(module, mode):
        raise RuntimeError("Failed to find C compiler\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    assert main(TINY + ["--variants", "compile"]) == 0
    out = capsys.readouterr().out
    assert "compile failed: RuntimeError: Failed to find C compiler" in out and "more detail" not in out
    result = bench.bench_train("tiny-bench-net", "smoke", batch_size=16, steps=1, repeats=1, workers=0,
                               device="cpu", variants=["compile"])
    assert [row["loop"] for row in result["loops"]] == ["gradpath", "reference"]
    assert result["variants"] == ["eager"] and "compile" in result["failed_variants"]
