"""The verdict rule, the paper's claims as data, and the record -> table helpers."""

from __future__ import annotations

import math

import pytest

from gradpath_lib import paper
from gradpath_lib.errors import GradpathError
from gradpath_lib.tables import mean_std_text, missing_runs, runs_frame, summarize, verdict_frame
from gradpath_lib.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, judge, pooled_std


def test_pooled_std_matches_the_textbook_formula() -> None:
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    expected = math.sqrt(((3 - 1) * 1.0 + (2 - 1) * 2.0) / (3 + 2 - 2))
    assert pooled_std(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("subject, baseline, direction, verdict", [
    ([76.0, 76.2, 76.1], [75.0, 75.1, 74.9], "higher", REPRODUCED),
    ([74.0, 74.2, 74.1], [75.0, 75.1, 74.9], "higher", NOT_REPRODUCED),
    ([75.0, 76.0, 74.0], [75.2, 74.2, 76.2], "higher", INCONCLUSIVE),  # within 2 pooled stds
    ([76.0], [75.0], "higher", INCONCLUSIVE),  # one seed says nothing about noise
    ([74.0, 74.2, 74.1], [75.0, 75.1, 74.9], "lower", REPRODUCED),
    ([75.0, 75.1], [75.05, 75.0], "equal", INCONCLUSIVE),  # tolerance 0: any spread straddles it
])
def test_judge_applies_the_documented_rule(subject, baseline, direction, verdict) -> None:
    assert judge(subject, baseline, direction).verdict == verdict


def test_equal_claims_use_the_tolerance_band() -> None:
    assert judge([77.2, 77.3], [77.2, 77.25], "equal", tolerance=0.5).verdict == REPRODUCED
    assert judge([75.0, 75.1], [77.2, 77.25], "equal", tolerance=0.5).verdict == NOT_REPRODUCED


def test_deterministic_metrics_need_one_run_and_no_margin() -> None:
    verdict = judge([100.0], [120.0], "lower", deterministic=True)
    assert verdict.verdict == REPRODUCED and verdict.margin == 0.0 and verdict.diff == -20.0


def test_diverged_or_missing_side_is_inconclusive() -> None:
    verdict = judge([math.nan, math.nan], [70.0, 71.0], "higher")
    assert verdict.verdict == INCONCLUSIVE and "subject" in verdict.reason


def test_bad_direction_lists_the_valid_ones() -> None:
    with pytest.raises(GradpathError, match="higher, lower, equal"):
        judge([1.0], [2.0], "better")


def test_every_table_and_extension_has_claims_with_unique_ids() -> None:
    ids = [c.id for c in paper.CLAIMS]
    assert len(ids) == len(set(ids))
    tables = {c.table for c in paper.CLAIMS}
    assert {f"table{n}" for n in range(1, 9)} <= tables and {"fig1", "lwdna", "dsfb"} <= tables
    assert {c.kind for c in paper.CLAIMS} == set(paper.CLAIM_KINDS)


def test_printed_references_match_paper_md() -> None:
    top1 = {r.paper_model: r.value for r in paper.references("table2") if r.metric == "top1"}
    assert top1 == {"ResNet-50": 75.8, "CSPResNet-50": 76.6, "ResNeXt-50": 77.8, "CSPResNeXt-50": 77.9,
                    "DarkNet-53": 77.2, "CSPDarkNet-53": 77.2, "PeleeNet": 70.7, "CSPPeleeNet": 70.9}
    assert [c.paper for c in paper.claims("table5")][1:] == ["+0.5 AP box", "+0.1 AP mask", "+0.3 AP75 mask"]


def test_unknown_table_lists_the_tables() -> None:
    with pytest.raises(GradpathError, match="table2"):
        paper.claims("table9")


def _record(model: str, seed: int, status: str, acc: float | None, params: int = 100) -> tuple[dict, dict]:
    config = {"task": "classify", "model": model, "scale": "smoke", "seed": seed}
    record = {"run_id": f"{model}-{seed}", "config": config, "status": status, "params": params,
              "flops": 2 * params, "wall_time_s": 1.0, "metrics": {"test_acc": acc},
              "provenance": {"device_name": "cpu"}}
    if status == "diverged":
        record["diverged_at_step"] = 7
    return config, record


def test_runs_frame_keeps_metrics_of_ok_runs_only_and_marks_missing() -> None:
    runs = [_record("a", 0, "ok", 0.5), _record("a", 1, "diverged", 0.1),
            ({"task": "classify", "model": "b", "scale": "smoke", "seed": 0}, None)]
    frame = runs_frame(runs, metrics={"acc": "test_acc"})
    assert frame["status"].tolist() == ["ok", "diverged", "missing"]
    assert frame["acc"].iloc[0] == 0.5 and math.isnan(frame["acc"].iloc[1])
    assert frame["converged"].iloc[:2].tolist() == [1.0, 0.0] and frame["diverged_at_step"].iloc[1] == 7
    assert missing_runs(frame)[["model", "seed"]].values.tolist() == [["b", 0]]
    summary = summarize(frame, ["acc", "params"])
    assert summary["status"].tolist() == ["1 ok, 1 diverged", "1 missing"]
    assert summary["acc_n"].tolist() == [1, 0] and summary["params_mean"].iloc[0] == 100


def test_mean_std_text() -> None:
    assert mean_std_text(76.6, 0.31, "{:.1f}") == "76.6 ± 0.3"
    assert mean_std_text(76.6, math.nan, "{:.1f}") == "76.6"
    assert mean_std_text(math.nan, math.nan) == "—"


def test_verdict_frame_judges_claims_from_records() -> None:
    runs = [_record("csp-resnet", s, "ok", 0.80 + s / 1000, params=80) for s in range(3)]
    runs += [_record("resnet", s, "ok", 0.70 + s / 1000, params=100) for s in range(3)]
    frame = runs_frame(runs, metrics={"top1": "test_acc"})
    verdicts = verdict_frame(paper.claims("table2")[:3], frame)
    assert verdicts["verdict"].tolist() == [REPRODUCED, REPRODUCED, REPRODUCED]
    assert verdicts["ours"].iloc[0] == "-20.0%"
    # the size beside the paper's: CSPResNet-50 has 21.57 vs 22.73 M parameters (-5.1 %)
    assert verdicts["ours / paper"].iloc[0] == round(-0.2 / (21.57 / 22.73 - 1), 2) == 3.92


def test_ours_over_paper_is_empty_where_the_verdict_is_inconclusive() -> None:
    runs = [_record("csp-resnet", 0, "ok", 0.80, params=80), _record("resnet", 0, "ok", 0.70, params=100)]
    verdicts = verdict_frame(paper.claims("table2")[:3], runs_frame(runs, metrics={"top1": "test_acc"}))
    cost, accuracy = verdicts.iloc[0], verdicts.iloc[2]  # params (exact), top-1 (one seed: noise)
    assert cost["verdict"] == REPRODUCED and cost["ours / paper"] == 3.92
    assert accuracy["verdict"] == INCONCLUSIVE and math.isnan(accuracy["ours / paper"])


def test_ours_over_paper_is_empty_where_the_paper_gives_no_number() -> None:
    models = (("vovnet-deep-planned-csp", 60), ("vovnet-deep-planned", 100))
    runs = [_record(m, 0, "ok", 0.5, params=p) for m, p in models]
    verdicts = verdict_frame(paper.claims("table4"), runs_frame(runs, metrics={"top1": "test_acc"})).set_index("claim")
    params = verdicts.loc["vovnet-deep-planned-csp has fewer parameters than vovnet-deep-planned"]
    assert params["ours"] == "-40.0%" and math.isnan(params["ours / paper"])


def test_an_output_folder_that_cannot_be_made_is_one_error_line(tmp_path):
    from gradpath_lib.tables import output_dir

    (tmp_path / "taken").write_text("")
    with pytest.raises(GradpathError, match=r"cannot create .*taken/smoke/tables.*give a writable --results-dir"):
        output_dir(tmp_path / "taken", "smoke", "tables")
