"""The detection chapters' runs, tables and claims, on made-up records (fast); the prediction
pictures also on the record of one smoke run (seconds)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from gradpath_lib.detection_tables import (
    AP_COLUMNS,
    baseline_cost_sentence,
    cheapest_by_preset,
    costs_by_preset,
    detection_costs,
    detection_frame,
    detection_table,
    preset_changes_table,
    stated_cost_comparison,
    stated_fraction,
)
from gradpath_lib.errors import GradpathError
from gradpath_lib.prose import join_names, join_words
from gradpath_lib.tables import seed_spread_note
from gradpath_lib.experiments import chapter
from gradpath_lib.experiments.detection import (
    MAIN_APS,
    SIZE_APS,
    TABLE3_DETECTION_MODELS,
    TABLE5_MODELS,
    TABLE6_MODELS,
    TABLE7_MODELS,
    TABLE8_MODELS,
    prediction_caption,
    prediction_counts,
    prediction_figure,
    runs_in_points,
    show_box_ap_curves,
    show_predictions,
    stop_gradient_path_text,
    stop_gradient_table,
)
from gradpath_lib.models.cost import count_flops, count_params
from gradpath_lib.models.registry import create_model
from gradpath_lib.notebook import setup
from gradpath_lib.paper import STATED, STATED_DELTA, Claim, claims
from gradpath_lib.runs import ensure_run, normalize_config
from gradpath_lib.store import run_id, weights_path
from gradpath_lib.tables import verdict_frame
from gradpath_lib.train.detect import PREDICTION_CANVASES, detect_config

TABLE_MODELS = {"table5": TABLE5_MODELS, "table6": TABLE6_MODELS, "table7": TABLE7_MODELS,
                "table3_detection": TABLE3_DETECTION_MODELS, "table8": TABLE8_MODELS}


def _record(config: dict, status: str = "ok", box_ap: float = 0.25, params: int = 1000, flops: int = 10**6) -> dict:
    metrics = {name: box_ap / 2 for name in AP_COLUMNS.values()} | {"bbox_AP": box_ap, "segm_APl": None}
    return {"run_id": f"{config['model']}-{config['seed']}", "config": config, "status": status,
            "metrics": metrics if status == "ok" else {}, "params": params, "flops": flops,
            "provenance": {"device_name": "cpu"}}


def _runs(models: tuple[str, ...], seeds: list[int], ap: dict[str, float] | None = None) -> list:
    configs = [{"task": "detect", "model": m, "scale": "smoke", "seed": s} for m in models for s in seeds]
    return [(c, _record(c, box_ap=(ap or {}).get(c["model"], 0.2) + 0.01 * c["seed"])) for c in configs]


def test_every_detection_chapter_is_registered_in_book_order() -> None:
    orders = {name: chapter(name).order for name in ("cifar_det", *TABLE_MODELS)}
    assert orders == {"cifar_det": 140, "table5": 150, "table6": 160, "table7": 170, "table3_detection": 175,
                      "table8": 180}
    assert chapter("cifar_det").runs("mini", [0]) == []


@pytest.mark.parametrize("name", sorted(TABLE_MODELS))
def test_chapter_runs_every_model_and_seed_with_one_recipe(name: str) -> None:
    configs = chapter(name).runs("mini", [0, 1])
    assert [(c["model"], c["seed"]) for c in configs] == [(m, s) for m in TABLE_MODELS[name] for s in (0, 1)]
    assert {c["task"] for c in configs} == {"detect"}
    assert len({repr(c["recipe"]) for c in configs}) == 1


def test_a_detector_in_several_tables_is_one_shared_run() -> None:
    ids = {name: {c["model"]: run_id(normalize_config(c)) for c in chapter(name).runs("smoke", [0])}
           for name in TABLE_MODELS}
    assert ids["table5"]["yolor-v3"] == ids["table6"]["yolor-v3"] == ids["table8"]["yolor-v3"]
    assert ids["table6"]["yolor-csp"] == ids["table3_detection"]["yolor-csp"] == ids["table8"]["yolor-csp"]
    unique = set().union(*(set(v.values()) for v in ids.values()))
    assert len(unique) == len(set().union(*TABLE_MODELS.values()))


@pytest.mark.parametrize("name", sorted(TABLE_MODELS))
def test_every_claim_compares_two_models_of_its_table_on_a_frame_column(name: str) -> None:
    frame = detection_frame(_runs(TABLE_MODELS[name], [0]))
    assert claims(name)
    for claim in claims(name):
        assert {claim.subject, claim.baseline} <= set(TABLE_MODELS[name]), claim.id
        assert claim.metric in frame.columns, claim.id


def test_detection_frame_shows_ap_points_for_ok_runs_only() -> None:
    ok = {"task": "detect", "model": "yolor-v3", "scale": "smoke", "seed": 0}
    bad = {**ok, "model": "yolor-prn"}
    missing = {**ok, "model": "yolor-csp"}
    frame = detection_frame([(ok, _record(ok, box_ap=0.25)), (bad, _record(bad, status="diverged")), (missing, None)])
    assert frame["status"].tolist() == ["ok", "diverged", "missing"]
    assert frame.loc[0, "ap_box"] == pytest.approx(25.0) and frame.loc[0, "ap_mask"] == pytest.approx(12.5)
    assert math.isnan(frame.loc[0, "apl_mask"])  # COCOeval left it undefined
    assert frame.loc[1:, list(AP_COLUMNS)].isna().all().all()


def test_costs_are_the_models_own_and_relative_to_yolor_v3() -> None:
    costs = detection_costs(TABLE6_MODELS, "smoke").set_index("model")
    assert costs.index.tolist() == list(TABLE6_MODELS)
    with torch.device("meta"):  # counting needs shapes only
        csp = create_model("yolor-csp", "smoke")
    assert costs.loc["yolor-csp", "params (M)"] == pytest.approx(count_params(csp) / 1e6)
    assert costs.loc["yolor-csp", "GFLOPs (run input)"] == pytest.approx(count_flops(csp, (3, 64, 64)) / 1e9)
    assert costs.loc["yolor-csp", "GFLOPs (640)"] == pytest.approx(count_flops(csp, (3, 640, 640)) / 1e9)
    assert (costs.loc["yolor-v3", [c for c in costs.columns if c.endswith("vs yolor-v3")]] == 0).all()
    v3 = costs.loc["yolor-v3"]
    assert costs.loc["yolor-csp", "FLOPs (640) vs yolor-v3"] == pytest.approx(
        costs.loc["yolor-csp", "GFLOPs (640)"] / v3["GFLOPs (640)"] - 1)
    assert (costs.loc[["yolor-csp", "yolor-csp-first", "yolor-csp-last"], "FLOPs vs yolor-v3"] < 0).all()


def test_detection_table_shows_costs_and_mean_std_over_seeds() -> None:
    frame = detection_frame(_runs(TABLE5_MODELS, [0, 1], ap={"yolor-v3": 0.20, "yolor-prn": 0.30}))
    costs = detection_costs(TABLE5_MODELS, "smoke")
    table = detection_table(frame, costs, MAIN_APS)
    assert table["model"].tolist() == list(TABLE5_MODELS)
    assert table["status"].tolist() == ["2 ok", "2 ok"]
    assert table.loc[1, "AP box"] == "30.50 ± 0.71"  # two decimals keep small differences visible
    assert table.loc[0, "ΔFLOPs"] == "+0.0%" and table.loc[1, "Δparams"] == "{:+.1%}".format(
        costs.loc[1, "params vs yolor-v3"])
    assert {"AP50 box", "AP75 mask", "params (M)", "GFLOPs (640)"} <= set(table.columns)
    sizes = detection_table(frame, costs, SIZE_APS)
    assert sizes["APl mask"].tolist() == ["—", "—"]


def test_verdicts_follow_the_records() -> None:
    runs = _runs(TABLE5_MODELS, [0, 1, 2], ap={"yolor-v3": 0.20, "yolor-prn": 0.30})
    verdicts = verdict_frame(claims("table5"), detection_frame(runs)).set_index("claim")
    assert verdicts.loc["yolor-prn has higher box AP than yolor-v3", "verdict"] == "reproduced"
    assert verdicts.loc["yolor-prn costs about the same FLOPs as yolor-v3", "verdict"] == "reproduced"
    runs = _runs(TABLE5_MODELS, [0, 1, 2], ap={"yolor-v3": 0.30, "yolor-prn": 0.20})
    verdicts = verdict_frame(claims("table5"), detection_frame(runs)).set_index("claim")
    assert verdicts.loc["yolor-prn has higher box AP than yolor-v3", "verdict"] == "not reproduced"


@pytest.fixture(scope="module")
def smoke_samples(tmp_path_factory: pytest.TempPathFactory) -> list:
    """The sample predictions recorded by a smoke run whose saved weights were then deleted."""
    import gradpath_lib.train.detect as detect

    results = tmp_path_factory.mktemp("results")
    config = detect_config("yolor-v3", "smoke", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared: one thread is faster and steadier
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(detect, "SAMPLE_SCORE", 0.0)  # a smoke detector's scores are low: record some to draw
            record = ensure_run(config, results_dir=results, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    weights = weights_path(results, record["config"])
    assert weights.exists()
    weights.unlink()
    return record["metrics"]["sample_predictions"]


def _with_samples(config: dict, samples: list) -> dict:
    record = _record(config)
    return {**record, "metrics": {**record["metrics"], "sample_predictions": samples}}


def test_prediction_figure_needs_recorded_sample_predictions() -> None:
    runs = _runs(("yolor-v3",), [0])
    assert prediction_figure(runs, "yolor-v3") is None  # a record that predates sample predictions
    assert prediction_figure([(runs[0][0], None)], "yolor-v3") is None


def test_prediction_figure_draws_from_the_record_without_weights(smoke_samples: list) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    config = detect_config("yolor-v3", "smoke", 0)
    figure = prediction_figure([(config, _with_samples(config, smoke_samples))], "yolor-v3")
    assert len(figure.axes) == PREDICTION_CANVASES
    assert [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in figure.axes] == [
        len(sample["detections"]) for sample in smoke_samples]
    assert all(ax.images[0].get_array().shape == (64, 64, 3) for ax in figure.axes)
    diverged = {**_with_samples(config, smoke_samples), "status": "diverged"}
    assert prediction_figure([(config, diverged)], "yolor-v3") is None
    plt.close(figure)


def test_stop_gradient_table_adds_the_detectors_gradient_path_lengths() -> None:
    frame = detection_frame(_runs(TABLE3_DETECTION_MODELS, [0]))
    table = stop_gradient_table(frame, detection_costs(TABLE3_DETECTION_MODELS, "smoke"), "smoke").set_index("model")
    paths = table[["longest shortest path", "longest path"]]
    # identical forward passes; the stops only change which paths carry gradient
    assert table["GFLOPs (640)"].nunique() == 1
    assert paths.loc["yolor-csp-sg-block", "longest path"] < paths.loc["yolor-csp", "longest path"]
    assert paths.loc["yolor-csp-sg-block", "longest shortest path"] == paths.loc["yolor-csp", "longest shortest path"]
    assert paths.loc["yolor-csp-sg-identity", "longest shortest path"] > paths.loc["yolor-csp", "longest shortest path"]


@pytest.mark.parametrize("name", sorted(TABLE_MODELS))
def test_show_predictions_saves_the_recorded_and_names_the_rest(tmp_path: Path, capsys, smoke_samples: list,
                                                                 name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    models = TABLE_MODELS[name]
    drawn, predating, *unfinished = models
    configs = [detect_config(model, "smoke", 0) for model in models]
    records = [_with_samples(configs[0], smoke_samples), _record(configs[1])] + [None] * len(unfinished)
    ctx = setup(name, scale="smoke", results_dir=tmp_path)
    capsys.readouterr()
    saved = show_predictions(ctx, list(zip(configs, records)), models)
    assert saved == [tmp_path / "smoke" / "figures" / f"{name}_predictions_{drawn}.png"]
    assert saved[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert f"**{drawn}**" in out and f"`{drawn}`" not in out
    assert f"predate sample predictions:** `{predating}`. Rerun them with `gradpath train --force`" in out
    if unfinished:
        assert "No finished run recorded for:** " + ", ".join(f"`{m}`" for m in unfinished) + "." in out
    else:
        assert "No finished run" not in out


def _flops_claim(subject: str, paper: str, kind: str = STATED_DELTA) -> Claim:
    return Claim(f"{subject}-flops", "table7", f"{subject} needs fewer FLOPs", subject, "yolor-v3", "flops", "lower",
                 kind, paper, "test", relative=True, deterministic=True)


def test_stated_cost_comparison_is_computed_from_the_cost_table() -> None:
    costs = detection_costs(TABLE7_MODELS, "smoke")
    ratios = costs.set_index("model")["FLOPs vs yolor-v3"]
    text = stated_cost_comparison(costs, claims("table7"))
    for claim in claims("table7"):
        if claim.metric == "flops":
            gap = abs(ratios[claim.subject] - stated_fraction(claim)) * 100
            assert f"`{claim.subject}` {ratios[claim.subject]:+.1%} against the paper's {claim.paper}" in text
            assert f"a cut {gap:.1f} points smaller than stated" in text  # smoke widths cut far less
    made_up = costs.assign(**{"FLOPs vs yolor-v3": [0.0, -0.40, -0.10, 0.05]})
    text = stated_cost_comparison(made_up, [_flops_claim("yolor-elan", "-26 % computation"),
                                            _flops_claim("yolor-elan-b2n2", "-35 % computation")])
    assert "`yolor-elan` -40.0% against the paper's -26 % computation, a cut 14.0 points larger than stated" in text
    assert "`yolor-elan-b2n2` +5.0% against the paper's -35 % computation, a cut 40.0 points smaller" in text


def test_stated_cost_comparison_needs_a_stated_percentage_and_the_claims_model() -> None:
    assert stated_fraction(_flops_claim("yolor-elan", "−35 % computation")) == pytest.approx(-0.35)
    with pytest.raises(GradpathError, match="states no percentage"):
        stated_fraction(_flops_claim("yolor-elan", "much less computation"))
    costs = detection_costs(TABLE5_MODELS, "smoke")
    with pytest.raises(GradpathError, match="none of these claims states a FLOPs change"):
        stated_cost_comparison(costs, [_flops_claim("yolor-prn", "-1 %", kind=STATED)])
    with pytest.raises(GradpathError, match="'yolor-elan', which has no costs here"):
        stated_cost_comparison(costs, claims("table7"))


def test_box_ap_curves_draw_only_the_evaluated_epochs() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from gradpath_lib.figures.curves import training_curves

    history = [{"bbox_AP": None}, {"bbox_AP": 0.25}, {"bbox_AP": None}, {"bbox_AP": 0.40}]
    runs = [({"model": "yolor-v3"}, {"status": "ok", "metrics": {"history": history}}),
            ({"model": "yolor-v3"}, None)]  # a missing run draws nothing
    figure = training_curves(runs, "bbox_AP", ylabel="box AP")
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [2, 4] and list(line.get_ydata()) == [0.25, 0.40]
    assert figure.axes[0].get_ylabel() == "box AP"


def test_a_detector_has_one_curve_colour_on_every_page() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from gradpath_lib.figures.curves import training_curves
    from gradpath_lib.models.registry import model_names

    record = {"status": "ok", "metrics": {"history": [{"bbox_AP": 0.1}, {"bbox_AP": 0.2}]}}

    def colours(models: list[str]) -> dict[str, tuple]:
        axes = training_curves([({"model": m}, record) for m in models], "bbox_AP").axes[0]
        return {line.get_label(): tuple(line.get_color()) for line in axes.get_lines()}

    assert colours(["yolor-v3", "yolor-csp"])["yolor-csp"] == colours(["yolor-csp", "yolov5"])["yolor-csp"]
    every = colours(model_names("detect"))
    assert len(set(every.values())) == len(every)  # no two detectors alike


def test_detector_speed_is_read_from_the_records(smoke_results) -> None:
    from gradpath_lib.run_pool import recorded
    from gradpath_lib.workload import DETECTOR_SPEED_COLUMNS, detector_speed_table

    results, _ = smoke_results
    table = detector_speed_table(results, "smoke", [0])
    assert list(table.columns) == DETECTOR_SPEED_COLUMNS
    assert set(table["model"]) == {m for models in TABLE_MODELS.values() for m in models}
    record = recorded(detect_config("yolor-csp", "smoke", 0), results)
    row = table.set_index("model").loc["yolor-csp"]
    train_s = sum(epoch["train_s"] for epoch in record["metrics"]["history"])
    # rounded as shown (numpy's rounding, which may differ from Python's round() on a tie such as 1.15)
    assert row["runs"] == 1 and row["images/s (training)"] == pytest.approx(record["metrics"]["images_per_s"],
                                                                           abs=0.05 + 1e-9)
    assert row["train TFLOP/s"] == pytest.approx(3 * record["flops"] * record["metrics"]["images_per_s"] / 1e12,
                                                 abs=5e-5 + 1e-12)
    assert row["training (s)"] == pytest.approx(train_s, abs=0.05 + 1e-9)
    assert row["wall (s)"] == pytest.approx(record["wall_time_s"], abs=0.05 + 1e-9)
    assert pd.isna(row["fraction of peak"]), "no bench of the runs' device is recorded"


def test_seed_spread_note_says_what_an_ap_cell_is() -> None:
    def note(frame: pd.DataFrame) -> str:
        return seed_spread_note(frame, what="AP cell", unit="detector", column="ap_box")

    one = detection_frame(_runs(TABLE5_MODELS, [0]))
    assert note(one).startswith("Each detector has one seed here, so each AP cell is that run's value")
    three = detection_frame(_runs(TABLE5_MODELS, [0, 1, 2]))
    assert note(three) == ("Each AP cell is the mean ± sample standard deviation over the seeds of its detector "
                           "(3 here).")
    mixed = detection_frame(_runs(("yolor-v3",), [0, 1]) + _runs(("yolor-prn",), [0]))
    assert note(mixed).endswith("(1 to 2 here); a detector with one seed shows its single value.")
    config = {"task": "detect", "model": "yolor-v3", "scale": "smoke", "seed": 0}
    assert note(detection_frame([(config, None)])) == "No run has a value, so no AP cell has one."


def test_baseline_cost_sentence_gives_the_missing_baseline_row() -> None:
    row = detection_costs(["yolor-v3"], "smoke").iloc[0]
    text = baseline_cost_sentence("smoke")
    assert "relative to `yolor-v3` (not a row of this table)" in text
    assert f"{row['params (M)']:.3g} M parameters and {row['GFLOPs (run input)']:.3g} GFLOPs" in text
    assert f"({row['GFLOPs (640)']:.3g} at 640×640)" in text


def _preset_costs(params: dict[str, float]) -> pd.DataFrame:
    names = list(params)
    values = [params[n] for n in names]
    return pd.DataFrame({"model": names, "params (M)": values,
                         "params vs yolor-v3": [v / params["yolor-v3"] - 1 for v in values]})


def test_cheapest_by_preset_follows_each_presets_costs() -> None:
    flips = {"smoke": _preset_costs({"yolor-v3": 1.0, "yolor-csp": 0.8, "yolor-elan": 0.9}),
             "mini": _preset_costs({"yolor-v3": 1.0, "yolor-csp": 0.8, "yolor-elan": 0.7}),
             "paper": _preset_costs({"yolor-v3": 1.0, "yolor-csp": 0.8, "yolor-elan": 0.6})}
    text = cheapest_by_preset(flips, "yolor-elan")
    assert "smoke: `yolor-csp` (0.8, `yolor-elan` 0.9); mini: `yolor-elan` (0.7); paper: `yolor-elan` (0.6)" in text
    assert text.endswith("depends on the preset's widths and depths: it is at mini and paper, not at smoke.")
    always = {scale: _preset_costs({"yolor-v3": 1.0, "yolor-elan": 0.5}) for scale in ("smoke", "mini")}
    assert cheapest_by_preset(always, "yolor-elan").endswith("`yolor-elan` is the cheapest at every preset.")
    assert cheapest_by_preset(always, "yolor-v3").endswith("`yolor-v3` is the cheapest at no preset.")
    table = preset_changes_table(flips, "params").set_index("model")
    assert list(table.columns) == ["Δparams (smoke)", "Δparams (mini)", "Δparams (paper)"]
    assert table.loc["yolor-elan"].tolist() == ["-10.0%", "-30.0%", "-40.0%"]
    assert join_words(["a"]) == "a" and join_words(["a", "b", "c"], "or") == "a, b or c" and join_words([]) == ""
    assert join_names(["resnet", "prn"]) == "`resnet` and `prn`"


def test_costs_by_preset_counts_each_scales_preset() -> None:
    by_preset = costs_by_preset(["yolor-v3", "yolor-csp"], ["smoke"])
    assert list(by_preset) == ["smoke"]
    pd.testing.assert_frame_equal(by_preset["smoke"], detection_costs(["yolor-v3", "yolor-csp"], "smoke"))


def test_stop_gradient_path_text_is_computed_from_the_path_columns() -> None:
    def table(identity: tuple[int, int], block: tuple[int, int]) -> pd.DataFrame:
        rows = [("yolor-csp", 13, 55), ("yolor-csp-sg-identity", *identity), ("yolor-csp-sg-block", *block)]
        return pd.DataFrame(rows, columns=["model", "longest shortest path", "longest path"])

    text = stop_gradient_path_text(table((14, 55), (13, 39)))
    assert ("the identity stop (`yolor-csp-sg-identity`) raises the longest shortest gradient path from 13 to 14 "
            "and keeps the longest path at 55") in text
    assert "the block stop (`yolor-csp-sg-block`) keeps the longest shortest gradient path at 13 and cuts the " \
           "longest path from 55 to 39" in text
    assert "does not make the shortest paths as long as the network is deep" in text
    assert text.count("14") == 1  # each length is stated once
    deep = stop_gradient_path_text(table((55, 55), (12, 60)))
    assert "raises the longest shortest gradient path from 13 to 55" in deep
    assert "cuts the longest shortest gradient path from 13 to 12 and raises the longest path from 55 to 60" in deep
    assert "does not make" not in deep


def test_prediction_caption_counts_the_shown_detections() -> None:
    samples = [{"image_id": 1, "detections": [{}, {}]}, {"image_id": 2, "detections": []},
               {"image_id": 3, "detections": [{}]}]
    assert prediction_counts(samples) == [2, 0, 1]
    assert prediction_caption("yolor-v3", samples, 0.3) == (
        "**yolor-v3**: 2, 0 and 1 detections scoring ≥ 0.3 on the 3 canvases (3 in all).")
    empty = [{"image_id": k, "detections": []} for k in (1, 2, 3)]
    assert prediction_caption("yolor-v3", empty, 0.3) == "**yolor-v3** finds nothing scoring ≥ 0.3 on the 3 canvases."


def test_show_predictions_draws_no_picture_for_a_detector_that_finds_nothing(tmp_path: Path, capsys) -> None:
    import matplotlib

    matplotlib.use("Agg")
    models = ("yolor-v3", "yolor-prn")
    configs = [detect_config(model, "smoke", 0) for model in models]
    empty = [{"image_id": k, "detections": []} for k in (1, 2, 3)]
    ctx = setup("table5", scale="smoke", results_dir=tmp_path)
    capsys.readouterr()
    saved = show_predictions(ctx, [(c, _with_samples(c, empty)) for c in configs], models)
    assert saved == []
    out = capsys.readouterr().out
    assert ("**No detection scoring ≥ 0.3 on any recorded canvas:** `yolor-v3`, `yolor-prn`. These detectors "
            "find nothing at this scale's training, so no picture is drawn for them.") in out


def test_box_ap_curves_are_in_points_like_the_tables(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [{"bbox_AP": None}, {"bbox_AP": 0.25}]
    runs = [({"model": "yolor-v3", "seed": 0}, {"status": "ok", "metrics": {"history": history}}),
            ({"model": "yolor-prn", "seed": 0}, None)]
    scaled = runs_in_points(runs, "bbox_AP")
    assert scaled[0][1]["metrics"]["history"] == [{"bbox_AP": None}, {"bbox_AP": 25.0}]
    assert history[1]["bbox_AP"] == 0.25 and scaled[1][1] is None  # the records themselves are untouched
    ctx = setup("table5", scale="smoke", results_dir=tmp_path)
    shown = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
        patch.setattr(plt, "close", lambda figure=None: None)
        show_box_ap_curves(ctx, runs)
    (line,) = shown[0].axes[0].get_lines()
    assert list(line.get_ydata()) == [25.0]
    assert shown[0].axes[0].get_ylabel() == "box AP (COCOeval, points: 0 to 100)"
    matplotlib.pyplot.close("all")
