"""`gradpath bench reproduce` / `bench jobs` and the performance tables, on CPU at the smoke scale."""

from __future__ import annotations

import json

import pytest
import torch

from gradpath_lib.bench import bench_train
from gradpath_lib.bench_jobs import auto_jobs_summary, bench_jobs, jobs_frame, recommended_jobs
from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.experiments import chapter
from gradpath_lib.models.cost import count_flops
from gradpath_lib.models.registry import create_model
from gradpath_lib.store import device_name
from gradpath_lib.train.classify import classify_config
from gradpath_lib.train.detect import detect_config
from gradpath_lib.train.probe import probe_config
from gradpath_lib.workload import (
    UNMEASURED,
    bench_reproduce,
    classifiers_of_the_book,
    compile_summary,
    compile_table,
    jobs_table,
    performance_table,
    recorded_benches,
    recorded_cost_table,
    run_workload,
    save_bench,
    train_set,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SMOKE_TRAIN_IMAGES = 512  # the generated smoke training set
SMOKE_BATCH, SMOKE_EPOCHS = 64, 3  # the smoke recipe


@pytest.fixture(scope="module")
def resnet_bench() -> dict:
    """One real (tiny) `bench train` of resnet on the CPU."""
    return bench_train("resnet", "smoke", batch_size=16, steps=1, repeats=1, device="cpu", workers=0)


def test_workload_counts_epochs_of_full_batches_and_three_forwards():
    workload = run_workload(classify_config("resnet", "smoke", 0, batch_size=100))
    assert workload.train_images == SMOKE_EPOCHS * 500  # 5 full batches of 100 per epoch
    forward = count_flops(create_model("resnet", "smoke"), (3, 32, 32))
    assert workload.train_flops() == 3 * forward * workload.train_images


def test_probe_runs_count_their_target_and_detectors_their_canvases():
    probe = run_workload(probe_config("resnet-aux1", "smoke", 0))
    assert (probe.model, probe.train_images) == ("resnet-aux1", SMOKE_EPOCHS * SMOKE_TRAIN_IMAGES)
    detector = run_workload(detect_config("yolor-v3", "smoke", 0))
    canvases, side = train_set("cifar-det", "smoke")
    assert detector.input_shape == (3, side, side) and detector.train_images % canvases == 0
    with pytest.raises(GradpathError, match="valid choices"):
        train_set("mnist", "smoke")


def test_estimate_uses_the_recorded_bench_and_extrapolates_the_rest(tmp_path, resnet_bench):
    unmeasured = bench_reproduce("smoke", results_dir=tmp_path).set_index("chapter")
    assert (unmeasured["est. minutes"] == UNMEASURED).all()

    save_bench(resnet_bench, tmp_path, "train-resnet")
    table = bench_reproduce("smoke", results_dir=tmp_path).set_index("chapter")
    assert (tmp_path / "smoke" / "tables" / "bench_reproduce.csv").exists()
    fig1 = table.loc["fig1_objective"]
    assert fig1["runs"] == 2 and fig1["estimate from"] == "1 measured, 1 extrapolated"
    ours = next(row for row in resnet_bench["loops"] if row["loop"] == "gradpath")
    images = SMOKE_EPOCHS * SMOKE_TRAIN_IMAGES
    aux = run_workload(probe_config("resnet-aux1", "smoke", 0))
    expected = images / ours["images_per_s"] + aux.train_flops() / ours["train_flops_per_s"]
    assert fig1["est. minutes"] == pytest.approx(expected / 60, abs=0.01)
    assert table.loc["fig1_objective", "device"].startswith("CPU: ")
    total = table.loc["total (distinct runs)"]
    assert total["runs"] == len({json.dumps(c, sort_keys=True) for name in table.index[:-1]
                                 for c in chapter(name).runs("smoke", [0])})


def test_unmeasured_minutes_say_how_to_measure_them(tmp_path, capsys):
    assert main(["bench", "reproduce", "--scale", "smoke", "--results-dir", str(tmp_path)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "gradpath bench train --model M --scale smoke --save" in last and "--measure" in last


def test_measure_benches_every_classifier_and_records_it(tmp_path, resnet_bench):
    benched = []

    def bench(model: str) -> dict:
        benched.append(model)
        return {**resnet_bench, "model": model}

    bench_reproduce("smoke", results_dir=tmp_path, measure=True, bench=bench)
    assert benched == classifiers_of_the_book("smoke") and {"resnet", "resnet-aux1"} <= set(benched)
    assert sorted(b["model"] for b in recorded_benches(tmp_path, "smoke", "train")) == sorted(benched)


def test_performance_table_reads_the_recorded_bench(tmp_path, resnet_bench):
    assert performance_table(tmp_path, "smoke").empty
    save_bench(resnet_bench, tmp_path, "train-resnet")
    row = performance_table(tmp_path, "smoke").iloc[0]
    assert (row["model"], row["family"], row["batch"]) == ("resnet", "resnet", 16)
    assert row["device"].startswith("CPU: cpu")
    assert row["ratio to reference"] == pytest.approx(resnet_bench["speedup"], abs=0.01)
    (tmp_path / "smoke" / "bench" / "train-broken.json").write_text("{")
    with pytest.raises(GradpathError, match="train-broken.json"):
        performance_table(tmp_path, "smoke")


def test_bench_jobs_runs_concurrent_processes(tmp_path, capsys):
    result = bench_jobs("resnet", "smoke", [1, 2], batch_size=8, steps=1, device="cpu")
    one, two = result["results"]
    assert (one["jobs"], one["images"], two["jobs"], two["images"]) == (1, 8, 2, 16)
    assert len(two["per_job_images_per_s"]) == 2 and one["scaling_vs_one_job"] == 1.0
    assert two["total_images_per_s"] == pytest.approx(16 / two["seconds"])
    save_bench(result, tmp_path, "jobs-resnet")
    table = jobs_table(tmp_path, "smoke")
    assert table["jobs"].tolist() == [1, 2] and table["device"].str.startswith("CPU: ").all()
    assert jobs_frame(result)["scaling vs 1 job"].tolist()[0] == 1.0


def test_bench_cli_rejects_bad_arguments(capsys):
    assert main(["bench", "jobs", "--model", "resnet", "--jobs", "0", "--device", "cpu"]) == 2
    assert "job counts >= 1" in capsys.readouterr().err
    assert main(["bench", "jobs", "--model", "resnet", "--batch", "0", "--device", "cpu"]) == 2
    assert "--batch) must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(GradpathError, match="classifiers"):
        bench_jobs("yolor-v3", "smoke", [1], device="cpu")
    with pytest.raises(GradpathError, match="needs the `bench` function"):
        bench_reproduce("smoke", measure=True)


def test_compile_table_and_summary_read_the_recorded_variants(tmp_path, resnet_bench):
    assert compile_table(tmp_path, "smoke").empty
    assert "No compiled variant is benched" in compile_summary(tmp_path, "smoke")
    save_bench(resnet_bench, tmp_path, "train-resnet")  # eager only: still nothing to judge
    assert compile_table(tmp_path, "smoke").empty
    eager = resnet_bench["loops"][0]
    slow_compile = dict(eager, loop="gradpath+compile", images_per_s=eager["images_per_s"] / 2,
                        compile_break_even_steps=None)
    save_bench(resnet_bench | {"variants": ["eager", "compile"], "loops": [eager, slow_compile]},
               tmp_path, "train-resnet")
    table = compile_table(tmp_path, "smoke")
    assert list(table["variant"]) == ["compile"] and not table["pays"].item()
    assert table["device"].item().startswith("CPU: ")
    summary = compile_summary(tmp_path, "smoke")
    assert "never repays" in summary and "The recipe follows the measurement." in summary


def test_jobs_auto_takes_the_fewest_jobs_near_the_best_of_this_device(tmp_path):
    here = device_name(torch.device("cpu"))
    jobs, why = recommended_jobs(tmp_path, "smoke", "cpu")
    assert jobs == 1 and "no `gradpath bench jobs`" in why

    def bench(device: str, totals: dict[int, float]) -> dict:
        return {"model": "resnet", "scale": "smoke", "device": device,
                "results": [{"jobs": n, "total_images_per_s": t} for n, t in totals.items()]}

    save_bench(bench("NVIDIA H200", {1: 100.0, 8: 900.0}), tmp_path, "jobs-other")  # another device: ignored
    assert recommended_jobs(tmp_path, "smoke", "cpu")[0] == 1
    save_bench(bench(here, {1: 100.0, 2: 190.0, 4: 300.0, 8: 310.0}), tmp_path, "jobs-resnet")
    jobs, why = recommended_jobs(tmp_path, "smoke", "cpu")
    assert jobs == 4 and "4 concurrent resnet runs train 300 images/s" in why  # 300 >= 0.95 * 310
    summary = auto_jobs_summary(tmp_path, "smoke")
    assert f"On {here}, `--jobs auto` trains 4 runs at once" in summary
    assert "On NVIDIA H200, `--jobs auto` trains 8 runs at once" in summary
    assert "one run at a time" in auto_jobs_summary(tmp_path / "none", "smoke")


def test_reproduce_says_what_jobs_auto_chose(tmp_path, capsys):
    argv = ["reproduce", "--scale", "smoke", "--only", "architecture", "--runs-only", "--device", "cpu",
            "--results-dir", str(tmp_path)]
    assert main(argv) == 0
    assert "--jobs auto = 1 (no `gradpath bench jobs` of cpu" in capsys.readouterr().out


def test_a_job_count_that_fails_is_reported_and_the_others_kept(monkeypatch, capsys, tmp_path):
    import gradpath_lib.bench_jobs as bench_jobs_module

    measured = bench_jobs_module.measure_jobs

    def out_of_memory_at_two(model, scale, jobs, **kwargs):
        if jobs == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\ndetails")
        return measured(model, scale, jobs, **kwargs)

    monkeypatch.setattr(bench_jobs_module, "measure_jobs", out_of_memory_at_two)
    assert main(["bench", "jobs", "--model", "resnet", "--scale", "smoke", "--jobs", "1", "2", "--batch", "8",
                 "--steps", "1", "--device", "cpu", "--save", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 jobs failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in out and "details" not in out
    (bench,) = recorded_benches(tmp_path, "smoke", "jobs")
    assert [row["jobs"] for row in bench["results"]] == [1] and list(bench["failed_jobs"]) == ["2"]
    assert recommended_jobs(tmp_path, "smoke", "cpu")[0] == 1


def test_a_job_that_fails_before_the_start_releases_the_others(monkeypatch):
    import threading

    from gradpath_lib import bench_jobs as bench_jobs_module

    barrier = threading.Barrier(2)  # this job and one other, which would otherwise wait for ever
    monkeypatch.setattr(bench_jobs_module, "_start_together", barrier)
    with pytest.raises(GradpathError, match="unknown device 'tpu'"):
        bench_jobs_module._timed_job("resnet", "smoke", 8, 1, "tpu", 0)
    assert barrier.broken


def test_detectors_are_estimated_from_their_recorded_runs(smoke_results):
    from gradpath_lib.run_pool import recorded
    from gradpath_lib.train.detect import detect_config

    results, _ = smoke_results
    table = recorded_cost_table(results, "smoke").set_index("chapter")
    table5 = table.loc["table5"]
    assert table5["estimate from"] == "2 recorded runs"
    expected = sum(run_workload(c).train_images / recorded(c, results)["metrics"]["images_per_s"]
                   for c in (detect_config(m, "smoke", 0) for m in ("yolor-v3", "yolor-prn")))
    assert table5["est. minutes"] == pytest.approx(expected / 60, abs=0.01)
    assert table.loc["table2", "est. minutes"] == UNMEASURED, "classifiers still need a bench"
