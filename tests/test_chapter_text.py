"""The computed sentences and tables of the classification and analysis chapters: what they say
must follow from the records and the networks, whatever the numbers are."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pandas as pd
import pytest

from gradpath_lib.analysis.figures import analyze_registry, peak_lengths, spectrum_peaks
from gradpath_lib.experiments.analysis import (
    SPECTRUM_RUN_TIME,
    combination_comparison,
    correlation_rule_text,
    first_step_paths_text,
    sparse_aggregation_text,
    sparsenet_sizing_note,
    spectrum_runs_table,
    spectrum_ties_note,
    timestamp_gaps,
    timestamps_reading,
)
from gradpath_lib.experiments.classification import (
    TABLE3_MODELS,
    _count_of,
    classification_frame,
    convergence_reading,
    path_lengths,
    relative_cost_changes,
    stop_gradient_reading,
    table2_cost_reading,
)
from gradpath_lib.models.cost import count_params
from gradpath_lib.tables import seed_spread_note
from gradpath_lib.models.registry import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def run(model: str, seed: int = 0, status: str = "ok", params: int = 100, flops: int = 200,
        acc: float | None = 0.5) -> tuple[dict, dict]:
    config = {"task": "classify", "model": model, "scale": "smoke", "seed": seed}
    record = {"run_id": f"{model}-{seed}", "config": config, "status": status, "params": params, "flops": flops,
              "wall_time_s": 1.0, "metrics": {"test_acc": acc, "train_loss": 1.0, "target_test_acc": acc},
              "provenance": {"device_name": "cpu"}}
    return config, record


@pytest.fixture(scope="module")
def smoke_reports():
    return analyze_registry(("resnet", "prn", "densenet"), "smoke")


def test_seed_note_says_one_seed_shows_no_spread() -> None:
    one = classification_frame([run("a"), run("b")])
    assert "one seed" in seed_spread_note(one) and "no spread" in seed_spread_note(one)
    three = classification_frame([run("a", s) for s in range(3)])
    assert "standard deviation over the seeds of its network (3 here)" in seed_spread_note(three)
    mixed = classification_frame([run("a", 0), run("a", 1), run("b", 0)])
    note = seed_spread_note(mixed)
    assert "(1 to 2 here)" in note and "one seed shows its single value" in note
    assert "No run has a value" in seed_spread_note(classification_frame([]))
    one_missing = classification_frame([run("a", 0), (run("a", 1)[0], None)])  # seed 1 never recorded
    assert "one seed" in seed_spread_note(one_missing)


def table2_runs(resnext_params: int) -> list:
    """resnet and darknet cut by 50 %, resnext's CSP variant at `resnext_params`, densenet by 10 %."""
    sizes = {"resnet": 1000, "csp-resnet": 500, "resnext": 1000, "csp-resnext": resnext_params,
             "darknet": 1000, "csp-darknet": 500, "densenet": 1000, "csp-densenet": 900}
    return [run(m, params=p, flops=2 * p) for m, p in sizes.items()]


def test_table2_reading_is_computed_from_the_runs() -> None:
    frame = classification_frame(table2_runs(resnext_params=1200))
    changes = relative_cost_changes(frame).set_index("base")
    assert changes.loc["resnet", "params"] == pytest.approx(-0.5)
    assert changes.loc["resnet", "paper params"] == pytest.approx(21.57 / 22.73 - 1)
    text = table2_cost_reading(frame)
    resnet_line = next(line for line in text.splitlines() if line.startswith("- `resnet`"))
    assert resnet_line.count("a larger cut than the paper's") == 2  # -50 % against -5.1 % and -7.9 %
    resnext_line = next(line for line in text.splitlines() if line.startswith("- `resnext`"))
    assert resnext_line.count("a rise where the paper cuts") == 2
    densenet_line = next(line for line in text.splitlines() if line.startswith("- `densenet`"))
    assert "a cut where the paper's rises" in densenet_line  # CSPPeleeNet has more params than PeleeNet
    assert "cheaper in both parameters and FLOPs" in text and "`resnext` dearer in both" in text
    assert "the smallest `densenet`'s (-10.0%)" in text

    cheaper = table2_cost_reading(classification_frame(table2_runs(resnext_params=800)))
    assert "dearer" not in cheaper and "`resnext`" in cheaper.splitlines()[-1]
    without = classification_frame([r for r in table2_runs(800) if r[0]["model"] != "csp-darknet"])
    assert "`darknet` is not recorded" in table2_cost_reading(without)


def test_stop_gradient_reading_follows_the_path_lengths() -> None:
    lengths = path_lengths(TABLE3_MODELS, "smoke")
    table = lengths.set_index("model")
    text = stop_gradient_reading(lengths, "smoke")
    block = table.loc["resnet-sg-block"]
    assert f"`resnet-sg-block`'s longest shortest path at {block['longest shortest path']}" in text
    assert f"its longest path is {block['longest path']}" in text
    assert "weighted shortcut projections" in text
    assert re.search(r"; (all \d+ of its weighted layers have|\d+ of its \d+ weighted layers have|none of its) ", text)
    assert not re.search(r"; (\d+) of its \1 weighted", text)  # never "22 of its 22"
    changed = lengths.copy()
    changed.loc[changed.model == "plain-deep", "longest path"] += 1
    assert "unlike `plain-deep`" in stop_gradient_reading(changed, "smoke")
    plain = tuple(table.loc["plain-deep"]) == tuple(table.loc["resnet-sg-identity"])
    assert ("the same as `plain-deep`" in text) == plain


def test_count_of_says_all_none_or_how_many() -> None:
    assert _count_of(22, 22, "weighted layer") == "all 22 of its weighted layers"
    assert _count_of(5, 22, "weighted layer") == "5 of its 22 weighted layers"
    assert _count_of(0, 22, "weighted layer") == "none of its 22 weighted layers"
    assert _count_of(1, 1, "weighted layer") == "its only weighted layer"


def test_convergence_reading_says_whether_the_deep_vovnet_diverged() -> None:
    converged = classification_frame([run("vovnet-deep"), run("vovnet-deep-planned")])
    text = convergence_reading(converged)
    assert "+0.00 means" in text and "`vovnet-deep` 1 of 1" in text and "does not hold" in text
    assert "more seeds cannot change that" in text
    diverged = classification_frame([run("vovnet-deep", 0, "diverged", acc=None), run("vovnet-deep", 1),
                                      run("vovnet-deep-planned")])
    text = convergence_reading(diverged)
    assert "`vovnet-deep` 1 of 2" in text and "1 of 2 runs of `vovnet-deep` diverged" in text
    assert "more seeds cannot" not in text
    assert "not recorded" in convergence_reading(classification_frame([run("vovnet")]))


def test_prn_splits_combinations_that_resnet_does_not(smoke_reports) -> None:
    resnet, prn = smoke_reports["resnet"].network, smoke_reports["prn"].network
    assert resnet["split_combination_layers"] == 0 and resnet["distinct_combinations_mean"] == 1
    assert prn["split_combination_layers"] >= 1 and prn["distinct_combinations_mean"] > 1
    text = combination_comparison(smoke_reports)
    smaller = prn["combination_size_mean"] < resnet["combination_size_mean"]
    assert ("smaller than" in text) == smaller and f"{prn['split_combination_layers']} weighted layer" in text
    assert "against none in `resnet` (1 distinct combination per layer)." in text


def test_dense_timestamps_are_two_apart(smoke_reports) -> None:
    assert timestamp_gaps(smoke_reports["resnet"]) == [1]
    assert timestamp_gaps(smoke_reports["densenet"]) == [2]
    text = timestamps_reading(smoke_reports)
    assert "every second length" in text and "`densenet`: up to 7 timestamps" in text


def test_a_flat_spectrum_is_reported_as_a_tie() -> None:
    spectra = pd.DataFrame({"model": ["plain"] * 4 + ["resnet"] * 3, "timestamp": [1, 2, 3, 4, 1, 2, 3],
                            "share": [0.25] * 4 + [0.2, 0.5, 0.3]})
    assert peak_lengths(spectra[spectra.model == "plain"].set_index("timestamp").share) == [1, 2, 3, 4]
    reports = {m: SimpleNamespace(network={"longest_shortest_path": 2}) for m in ("plain", "resnet")}
    table = spectrum_peaks(spectra, reports).set_index("model")
    assert table.loc["plain", "peak path length"] == "tie: 1–4" and table.loc["resnet", "peak path length"] == "2"
    assert "`plain` (lengths 1–4 carry 0.25 each)" in spectrum_ties_note(spectra)
    assert spectrum_ties_note(spectra[spectra.model == "resnet"]) == "Every network's spectrum has a single peak."


def test_spectrum_runs_show_top1_in_percent() -> None:
    table = spectrum_runs_table([run("resnet", acc=0.7578, params=19954, flops=6472320)])
    assert table["top-1 (%)"].tolist() == [75.8]
    assert table.columns.tolist() == ["model", "seed", "status", "params", "MFLOPs", "top-1 (%)", SPECTRUM_RUN_TIME]
    assert table.loc[0, "params"] == "19,954" and table.loc[0, "MFLOPs"] == "6.47"
    assert table.loc[0, SPECTRUM_RUN_TIME] == 1.0
    missing = spectrum_runs_table([(run("prn")[0], None)])
    assert missing.loc[0, "params"] == "—" and missing.loc[0, "status"] == "missing"


def test_first_step_paths_text_says_one_path_plainly() -> None:
    recurrent = pd.DataFrame([("Elman RNN (tanh)", 0, 17, 17, 1), ("Elman RNN (tanh)", 1, 16, 16, 1),
                              ("GRU", 0, 2, 17, 32768), ("tied", 0, 3, 3, 4)],
                             columns=["design", "step", "shortest path", "longest path", "paths"])
    assert first_step_paths_text(recurrent).splitlines() == [
        "- Elman RNN (tanh): the first step's input reaches the loss by one path of 17 weighted layers.",
        "- GRU: the first step's input reaches the loss by 32,768 paths of 2 to 17 weighted layers.",
        "- tied: the first step's input reaches the loss by 4 paths, each of 3 weighted layers."]


def test_sparse_aggregation_counts_the_transitions_too() -> None:
    few = sparse_aggregation_text((2, 2, 2))  # every layer reads all; a transition 2 of 3 (outputs 1, 2)
    assert "every sparse layer still reads every earlier output" in few
    assert "a transition reads 2 of the 3 outputs a dense one reads" in few and "exactly as" not in few
    assert "aggregates exactly as `densenet` does" in sparse_aggregation_text((1, 1))  # 2 of 2 everywhere
    mixed = sparse_aggregation_text((6, 12))  # layer shares below 1; transitions 3 of 7 and 4 of 13
    assert "a sparse layer here reads" in mixed and f"a transition reads {(3 / 7 + 4 / 13) / 2:.0%}" in mixed


def test_correlation_rule_text_follows_the_verdict_rule() -> None:
    from gradpath_lib.verdicts import DOES_NOT_TRACK, NOT_REPRODUCED, TRACKS, judge_correlation

    text = correlation_rule_text()
    assert "**not reproduced** when rho < 0.5 and the correlation is not significantly positive" in text
    assert "**inconclusive** when rho >= 0.5 but p >= 0.05" in text and "fewer than 5 networks" in text
    # a weak positive, non-significant rho is "not reproduced" for tracks, as the text says
    assert judge_correlation(0.3, 0.2, TRACKS, n_models=7, seeds=3).verdict == NOT_REPRODUCED
    assert judge_correlation(0.6, 0.01, DOES_NOT_TRACK, n_models=7, seeds=3).verdict == NOT_REPRODUCED


@pytest.mark.parametrize("scale, aggregation", [("smoke", "a transition reads 2 of the 3"),
                                                ("mini", "of the earlier outputs")])
def test_sparsenet_sizing_note_counts_our_parameters(scale: str, aggregation: str) -> None:
    text = sparsenet_sizing_note(scale)
    dense, sparse = (count_params(create_model(m, scale)) for m in ("densenet", "sparsenet"))
    assert f"`sparsenet` has {sparse:,} parameters" in text and f"`densenet`'s {dense:,}" in text
    assert aggregation in text and ("more than" in text) == (sparse > dense)
