"""LW-DNA: channel groups and residual ties, the FLOPs-targeted shrink and its tolerance, exact slicing
(SyncBatchNorm included), scores, smoke runs and their resume, the Taylor-vs-random claim."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradpath_lib.errors import GradpathError
from gradpath_lib.lwdna import (
    FLOPS_TOLERANCE,
    LAYER_FLOOR,
    find_architecture,
    random_scores,
    taylor_scores,
    widened_kwargs,
)
from gradpath_lib.models import create_model, model_kwargs
from gradpath_lib.models.channel_graph import counts_of, masked, slice_network, trace_channels
from gradpath_lib.models.cost import count_flops
from gradpath_lib.runs import ensure_run
from gradpath_lib.train import lwdna as lwdna_task
from gradpath_lib.train.classify import strip_timing
from gradpath_lib.train.lwdna import lwdna_config

from conftest import FIT_HISTORY_ARG, FIT_STOP_EPOCH_ARG

IMAGE = (1, 3, 32, 32)
TINY = {"widths": (4, 8, 8), "stem_width": 4}  # keeps the smoke runs to seconds on a shared CPU
# At TINY widths one channel of the stem-tied group costs 30 % of the baseline's FLOPs.
TINY_TOLERANCE = 0.35


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (so masking matters)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen))
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=gen))
            module.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


def wide_model(name: str, scale: str = "smoke", **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, scale, **widened_kwargs(name, scale, 2.0, **overrides))


def test_residual_adds_tie_channel_groups():
    graph = trace_channels(create_model("resnet", "smoke"), IMAGE)
    out = {name: layer.output for name, layer in graph.layers.items()}
    # stage 1 keeps the stem's width: the identity ties the stem and the block's last conv
    assert out["stem.0.conv"] == out["stages.0.0.body.1.conv"]
    # later stages: the projection shortcut and the block's last conv are added
    assert out["stages.1.0.proj.conv"] == out["stages.1.0.body.1.conv"]
    # a conv inside a residual branch is its own group, and the logits are never shrunk
    assert out["stages.1.0.body.0.conv"] not in (out["stem.0.conv"], out["stages.1.0.body.1.conv"])
    assert graph.fixed[out["head.2"]] and not graph.fixed[out["stem.0.conv"]]


def test_masks_are_consistent_across_residual_ties():
    model = randomize_norms(wide_model("resnet"))
    graph = trace_channels(model, IMAGE)
    gen = torch.Generator().manual_seed(1)
    shrink = find_architecture(graph, random_scores(graph, gen), int(0.6 * graph.flops(graph.sizes)))
    stream = graph.layers["stem.0.conv"].output
    dropped = ~shrink.keep[stream]
    assert dropped.any()
    seen = {}
    hooks = [model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for name in ("stem", "stages.0.0")]
    with masked(model, graph, shrink.keep):
        model(torch.randn(2, *IMAGE[1:]))
    for hook in hooks:
        hook.remove()
    # the same channels are zero in the stem output and after the residual add of the first block
    for name in ("stem", "stages.0.0"):
        assert torch.all(seen[name][:, dropped] == 0)
        assert torch.any(seen[name][:, ~dropped] != 0)


@pytest.mark.parametrize("sync", [False, True], ids=["batchnorm", "syncbatchnorm"])
@pytest.mark.parametrize("name", ["resnet", "elan"])
def test_sliced_network_equals_masked_wide_network(name: str, sync: bool):
    model = randomize_norms(wide_model(name))
    graph = trace_channels(model, IMAGE)
    if sync:  # what distributed.data_parallel does to the widened net during its search epoch on CUDA
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    gen = torch.Generator().manual_seed(2)
    shrink = find_architecture(graph, random_scores(graph, gen), int(0.5 * graph.flops(graph.sizes)))
    narrow = slice_network(model, graph, shrink.keep).eval()
    norm_types = {type(m) for m in narrow.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert norm_types == {nn.SyncBatchNorm if sync else nn.BatchNorm2d}
    x = torch.randn(4, *IMAGE[1:])
    with torch.no_grad(), masked(model, graph, shrink.keep):
        expected = model(x)
    torch.testing.assert_close(narrow(x), expected, rtol=1e-4, atol=1e-5)
    assert count_flops(narrow, IMAGE[1:]) == shrink.flops == graph.flops(counts_of(shrink.keep))
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in model.parameters())


class InvertedResiduals(nn.Module):
    """MobileNetV2's blocks in miniature: 1x1 expansion, depthwise 3x3, 1x1 projection, residual."""

    def __init__(self, width: int = 8, expand: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(width, width * expand, 1, bias=False), nn.BatchNorm2d(width * expand), nn.ReLU6(),
            nn.Conv2d(width * expand, width * expand, 3, padding=1, groups=width * expand, bias=False),
            nn.BatchNorm2d(width * expand), nn.ReLU6(),
            nn.Conv2d(width * expand, width, 1, bias=False), nn.BatchNorm2d(width)) for _ in range(2))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


def test_a_depthwise_conv_keeps_the_channels_it_reads_and_slices_exactly():
    torch.manual_seed(0)
    model = randomize_norms(InvertedResiduals())
    graph = trace_channels(model, IMAGE)
    expansion = graph.layers["blocks.0.0"].output
    assert graph.layers["blocks.0.3"].inputs == [expansion] and graph.layers["blocks.0.3"].output is None
    assert graph.flops(graph.sizes) == count_flops(model, IMAGE[1:])
    shrink = find_architecture(graph, random_scores(graph, torch.Generator().manual_seed(4)),
                               int(0.6 * graph.flops(graph.sizes)))
    assert 0 < shrink.counts[expansion] < graph.sizes[expansion]
    narrow = slice_network(model, graph, shrink.keep).eval()
    assert narrow.blocks[0][3].groups == narrow.blocks[0][3].in_channels == shrink.counts[expansion]
    x = torch.randn(4, *IMAGE[1:])
    with torch.no_grad(), masked(model, graph, shrink.keep):
        expected = model(x)
    torch.testing.assert_close(narrow(x), expected, rtol=1e-4, atol=1e-5)
    assert count_flops(narrow, IMAGE[1:]) == shrink.flops == graph.flops(counts_of(shrink.keep))
    scores = taylor_scores(model, graph, [(x, torch.arange(4))])
    assert len(scores) == len(graph.sizes) and scores[expansion].isfinite().all() and scores[expansion].gt(0).any()


def test_other_grouped_convs_are_refused_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2))
    with pytest.raises(GradpathError, match=r"1: grouped convolutions other than depthwise \(groups=2 of 8"):
        trace_channels(model, IMAGE)


@pytest.mark.parametrize("ratio", [0.45, 0.6, 0.8])
def test_shrink_hits_flops_target_within_tolerance(ratio: float):
    # wide enough that one channel costs well under the tolerance (as at the mini scale)
    graph = trace_channels(wide_model("resnet", widths=(32, 64, 128), stem_width=32), IMAGE)
    gen = torch.Generator().manual_seed(3)
    target = int(ratio * graph.flops(graph.sizes))
    shrink = find_architecture(graph, random_scores(graph, gen), target)
    assert shrink.flops <= target
    assert abs(shrink.flops_error) <= FLOPS_TOLERANCE
    for g in graph.prunable():
        assert shrink.counts[g] >= math.ceil(LAYER_FLOOR * graph.sizes[g])
    assert len({shrink.counts[g] for g in graph.prunable()}) > 1  # layer-wise differentiated


def test_threshold_is_global_and_unreachable_target_is_an_error():
    graph = trace_channels(wide_model("resnet"), IMAGE)
    scores = random_scores(graph, torch.Generator().manual_seed(4))
    shrink = find_architecture(graph, scores, int(0.6 * graph.flops(graph.sizes)), floor=0.1)
    for g in graph.prunable():  # above the floor, a group keeps exactly its channels at/above the threshold
        if shrink.counts[g] > math.ceil(0.1 * graph.sizes[g]):
            assert torch.equal(shrink.keep[g], scores[g] > shrink.threshold)
    with pytest.raises(GradpathError, match="unreachable"):
        find_architecture(graph, scores, 1000)


def test_taylor_score_ranks_a_silenced_channel_lowest_and_leaves_the_model_unchanged():
    model = wide_model("resnet")  # fresh BatchNorm: every channel passes the ReLU somewhere
    graph = trace_channels(model, IMAGE)
    bn = model.get_submodule("stages.1.0.body.0.bn")
    with torch.no_grad():
        bn.weight[3], bn.bias[3] = 0.0, 0.0  # channel 3 of that conv's output is always zero
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, *IMAGE[1:], generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(2)]
    scores = taylor_scores(model.train(), graph, batches)
    group = graph.layers["stages.1.0.body.0.conv"].output
    assert scores[group][3] == 0 and bool((scores[group][torch.arange(len(scores[group])) != 3] > 0).all())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())


def test_channel_slicing_models_are_refused():
    with pytest.raises(GradpathError, match="channel slicing"):
        trace_channels(create_model("csp-resnet", "smoke"), IMAGE)


def test_widened_kwargs_and_settings_are_checked():
    wide = widened_kwargs("resnet", "smoke", 2.0, **TINY)
    assert (wide["widths"], wide["stem_width"]) == ((8, 16, 16), 8)
    assert {k: v for k, v in wide.items() if k not in TINY} == {
        k: v for k, v in model_kwargs("resnet", "smoke").items() if k not in TINY}
    with pytest.raises(GradpathError, match="cannot be widened"):
        widened_kwargs("resnet-dsfb", "smoke", 2.0)
    with pytest.raises(GradpathError, match="search_epochs"):
        lwdna_config("resnet", "smoke", search_epochs=3, epochs=3)
    with pytest.raises(GradpathError, match="LW-DNA score"):
        lwdna_config("resnet", "smoke", score="magnitude")
    with pytest.raises(GradpathError, match="tolerance must be > 0"):
        lwdna_config("resnet", "smoke", tolerance=0)


def test_lwdna_smoke_run_meets_the_baseline_flops(tmp_path):
    config = lwdna_config("resnet", "smoke", 0, model_kwargs=TINY, score_batches=1, epochs=2, tolerance=TINY_TOLERANCE)
    record = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    summary = record["metrics"]["lwdna"]
    assert record["status"] == "ok" and record["metrics"]["epochs_done"] == 2
    assert record["flops"] <= summary["target_flops"] == summary["baseline_flops"]
    assert abs(summary["flops_error"]) <= TINY_TOLERANCE
    assert record["flops"] < summary["wide_flops"]
    assert len(summary["layers"]) == len(summary["widths"]) == len(summary["baseline_widths"])
    assert all(w2 == 2 * w for w, w2 in zip(summary["baseline_widths"], summary["wide_widths"]))
    assert all(math.ceil(LAYER_FLOOR * wide) <= w <= wide for w, wide in zip(summary["widths"], summary["wide_widths"]))
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0


def test_chapter_compares_at_equal_epochs():
    from gradpath_lib.experiments import chapter
    from gradpath_lib.experiments.extensions import LWDNA_MODELS, lwdna_label

    configs = chapter("lwdna").runs("mini", [0, 1])
    assert len(configs) == len(LWDNA_MODELS) * 2 * 3
    assert len({str(c["recipe"]) for c in configs}) == 1  # baseline, LW-DNA and control: one budget
    assert {lwdna_label(c) for c in configs if c["model"] == "elan"} == {"elan", "elan lwdna-taylor",
                                                                         "elan lwdna-random"}


def test_missed_flops_target_stops_the_run_before_the_shrunk_net_trains(tmp_path, monkeypatch):
    # Widened to 2 channels per layer, the floor (ceil(0.4 x 2) = 1 channel) leaves each group one
    # channel to lose, each far dearer than the tolerance: the search lands far below 90 % of the FLOPs.
    config = lwdna_config("resnet", "smoke", 0, model_kwargs={"widths": (1, 1, 1), "stem_width": 1},
                          score="random", target=0.9, epochs=2)
    stops = []
    real_fit = lwdna_task.fit
    monkeypatch.setattr(lwdna_task, "fit",
                        lambda *args, **kw: stops.append(args[FIT_STOP_EPOCH_ARG]) or real_fit(*args, **kw))
    with pytest.raises(GradpathError, match=r"LW-DNA on 'resnet': the found architecture has \d+ FLOPs, -\d+\.\d% "
                                            r"from the target \d+ \(tolerance 2%\)"):
        ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert stops == [1], "only the search epoch trained"


def interrupting_fit(stop_at: int):
    """classify.fit that trains at most up to epoch `stop_at` and then interrupts the run (as a kill would)."""
    real_fit = lwdna_task.fit

    def fit(*args, **kwargs):
        args = list(args)
        args[FIT_STOP_EPOCH_ARG] = min(args[FIT_STOP_EPOCH_ARG], stop_at)
        divergence = real_fit(*args, **kwargs)
        if len(args[FIT_HISTORY_ARG]) == stop_at:
            raise KeyboardInterrupt  # not an Exception: no failed record, the checkpoint stays
        return divergence
    return fit


def test_interrupted_lwdna_runs_resume_to_the_uninterrupted_record(tmp_path, monkeypatch):
    config = lwdna_config("resnet", "smoke", 0, model_kwargs=TINY, score_batches=1, epochs=3, tolerance=TINY_TOLERANCE)
    reference = ensure_run(config, results_dir=tmp_path / "uninterrupted", device="cpu", progress=False)
    real_fit = lwdna_task.fit
    # after the search epoch (the widened net's checkpoint) and after the first shrunk epoch (the narrow net's)
    for stop_at, resumed_fits in ((1, [(1, 1), (1, 3)]), (2, [(2, 3)])):
        results_dir = tmp_path / f"stopped-after-{stop_at}"
        monkeypatch.setattr(lwdna_task, "fit", interrupting_fit(stop_at))
        with pytest.raises(KeyboardInterrupt):
            ensure_run(config, results_dir=results_dir, device="cpu", progress=False)
        fits = []
        monkeypatch.setattr(lwdna_task, "fit", lambda *args, **kw: fits.append(
            (len(args[FIT_HISTORY_ARG]), args[FIT_STOP_EPOCH_ARG])) or real_fit(*args, **kw))
        record = ensure_run(config, results_dir=results_dir, device="cpu", progress=False)
        assert fits == resumed_fits, "the resumed run starts from the checkpoint's epoch"
        assert (record["status"], record["params"], record["flops"]) == (
            reference["status"], reference["params"], reference["flops"])
        assert strip_timing(record["metrics"]) == strip_timing(reference["metrics"])


def test_taylor_versus_random_claim_is_judged_per_model():
    from gradpath_lib.experiments.extensions import LWDNA_MODELS, lwdna_claims, lwdna_frame, lwdna_runs, score_claim
    from gradpath_lib.tables import verdict_frame

    configs = lwdna_runs("mini", [0, 1, 2])

    def runs(taylor: list[float], random: list[float]) -> list[tuple[dict, dict]]:
        """The chapter's runs with these per-seed top-1 for each score (baselines: 0.5)."""
        top1 = {"taylor": taylor, "random": random}
        return [(c, {"status": "ok", "run_id": f"run-{i}", "params": 1, "flops": 1, "metrics": {
            "test_acc": top1[c["lwdna"]["score"]][c["seed"]] if c["task"] == "lwdna" else 0.5}})
            for i, c in enumerate(configs)]

    clearly_better, overlapping = [0.80, 0.81, 0.82], [0.70, 0.72, 0.74]
    cases = {"reproduced": (clearly_better, [0.70, 0.71, 0.72]), "not reproduced": ([0.70, 0.71, 0.72], clearly_better),
             "inconclusive": (overlapping, [0.71, 0.73, 0.72])}
    score_claims = [c.text for c in lwdna_claims() if c.id.startswith("lwdna-score")]
    assert score_claims == [score_claim(m).text for m in LWDNA_MODELS]
    for expected, (taylor, random) in cases.items():
        verdicts = verdict_frame(lwdna_claims(), lwdna_frame(runs(taylor, random))).set_index("claim")
        for model in LWDNA_MODELS:
            row = verdicts.loc[score_claim(model).text]
            assert (row["verdict"], row["n"]) == (expected, "3 vs 3"), (model, expected, row["why"])


def test_chapter_runs_on_the_scales_classification_recipe():
    from gradpath_lib.experiments.extensions import lwdna_recipe_note, lwdna_runs
    from gradpath_lib.train.classify import classify_config

    configs = lwdna_runs("smoke", [0])
    baselines = [c for c in configs if c["task"] == "classify"]
    # a baseline is the very run the other classification chapters record (same config, same run id)
    assert baselines == [classify_config(c["model"], "smoke", 0) for c in baselines]
    assert {str(c["recipe"]) for c in configs} == {str(baselines[0]["recipe"])}
    epochs = baselines[0]["recipe"]["epochs"]
    note = lwdna_recipe_note([(c, None) for c in configs])
    assert note.startswith(f"Every run trains {epochs} epochs; an LW-DNA run spends the first epoch ")
    assert "This is the scale's classification recipe" in note
    shorter = [{**c, "recipe": {**c["recipe"], "epochs": 2}} if c["model"] == "elan" else c for c in configs]
    note = lwdna_recipe_note([(c, None) for c in shorter])
    assert note.startswith(f"The runs train 2 and {epochs} epochs") and "do not all share one recipe" in note
    assert "elan, elan lwdna-random and elan lwdna-taylor use a recipe of this chapter's own" in note


def lwdna_record(config: dict, top1: float, flops: int, target: int, params: int = 90, classes: int = 10) -> dict:
    """A minimal ok record of `config` (an LW-DNA summary for an LW-DNA config)."""
    metrics = {"test_acc": top1}
    if config["task"] == "lwdna":
        metrics["lwdna"] = {"target_flops": target, "baseline_params": 100, "flops_error": flops / target - 1}
    return {"status": "ok", "run_id": f"{config['model']}-{config.get('lwdna', {}).get('score')}", "params": params,
            "flops": flops, "dataset": {"classes": classes}, "metrics": metrics}


def test_flops_note_states_the_tolerance_and_the_gaps_of_the_records():
    from gradpath_lib.experiments.extensions import lwdna_flops_match, lwdna_flops_note, lwdna_runs

    configs = lwdna_runs("smoke", [0])
    flops = {("resnet", "taylor"): 953, ("resnet", "random"): 990, ("elan", "taylor"): 1000, ("elan", "random"): 970}
    runs = [(c, lwdna_record(c, 0.5, flops.get((c["model"], c.get("lwdna", {}).get("score")), 1000), 1000))
            for c in configs]
    note = lwdna_flops_note(runs)
    assert "same target, the baseline's FLOPs" in note
    assert "more than 15% below it (the `tolerance` of these runs; the default is 2%" in note
    assert "land between -4.7% and +0.0% from the target" in note
    table = lwdna_flops_match(runs)
    assert table["model"].tolist() == ["resnet lwdna-taylor", "resnet lwdna-random", "elan lwdna-taylor",
                                       "elan lwdna-random"]
    assert table["FLOPs vs target"].tolist() == ["-4.7%", "-1.0%", "+0.0%", "-3.0%"]
    assert set(table["tolerance"]) == {"15%"} and set(table["params vs baseline"]) == {"-10.0%"}
    default = [(c, None) for c in lwdna_runs("mini", [0])]
    assert "(the `tolerance` of these runs)" in lwdna_flops_note(default)
    assert lwdna_flops_note(default).endswith("No LW-DNA run is recorded yet.") and lwdna_flops_match(default).empty


def test_chance_level_note_names_only_the_networks_at_chance():
    from gradpath_lib.experiments.extensions import CHANCE_FACTOR, chance_level_note, lwdna_label, lwdna_runs

    configs = lwdna_runs("smoke", [0])
    top1 = {"elan": 0.102, "elan lwdna-taylor": 0.14}  # a uniform guess over 10 classes: 0.1

    def runs(tops: dict) -> list:
        return [(c, lwdna_record(c, tops.get(lwdna_label(c), 0.6), 1, 1)) for c in configs]

    note = chance_level_note(runs(top1))
    assert note.startswith("**At chance level:** `elan` (10.2%) and `elan lwdna-taylor` (14.0%) are below 1.5 x")
    assert "lwdna-random" not in note and "resnet" not in note
    assert chance_level_note(runs({})).startswith("No network is at chance level")
    assert chance_level_note(runs({"elan": CHANCE_FACTOR * 0.1 + 0.01})).startswith("No network")
    assert chance_level_note([(c, None) for c in configs]) == "No run is recorded yet."
