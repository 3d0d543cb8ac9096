"""Table 1: the correlation-claim rule on synthetic correlations, and `table1` on synthetic runs."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import spearmanr

from gradpath_lib.analysis.summary import STRUCTURAL_METRICS, TABLE1_MODELS, structural_table, table1
from gradpath_lib.errors import GradpathError
from gradpath_lib.paper import CorrelationClaim, claims, correlation_claims
from gradpath_lib.verdicts import (
    DOES_NOT_TRACK,
    INCONCLUSIVE,
    MIN_MODELS,
    NOT_REPRODUCED,
    REPRODUCED,
    TRACKS,
    judge_correlation,
)

METRIC = list(range(7))  # a structural metric over seven networks
ACCURACIES = {  # accuracy orders against METRIC, with their Spearman rho
    "same order": [0, 1, 2, 3, 4, 5, 6],  # rho = 1
    "reversed": [6, 5, 4, 3, 2, 1, 0],  # rho = -1
    "unrelated": [0, 3, 5, 6, 4, 1, 2],  # rho = 0.04, p = 0.94
    "loose trend": [0, 1, 2, 5, 6, 4, 3],  # rho = 0.68, p = 0.09
}


def verdict_for(order: str, direction: str, seeds: int = 3) -> str:
    result = spearmanr(METRIC, ACCURACIES[order])
    return judge_correlation(result.statistic, result.pvalue, direction, n_models=len(METRIC), seeds=seeds).verdict


def test_the_synthetic_orders_have_the_correlations_the_cases_need():
    rho = {k: spearmanr(METRIC, v).statistic for k, v in ACCURACIES.items()}
    assert rho["same order"] == pytest.approx(1) and rho["reversed"] == pytest.approx(-1)
    assert abs(rho["unrelated"]) < 0.1 and spearmanr(METRIC, ACCURACIES["unrelated"]).pvalue > 0.5
    assert 0.5 < rho["loose trend"] < 0.8 and spearmanr(METRIC, ACCURACIES["loose trend"]).pvalue > 0.05


@pytest.mark.parametrize("order, expected", [
    ("same order", REPRODUCED), ("reversed", NOT_REPRODUCED), ("unrelated", NOT_REPRODUCED),
    ("loose trend", INCONCLUSIVE),
])
def test_tracks_accuracy_rule(order, expected):
    assert verdict_for(order, TRACKS) == expected


@pytest.mark.parametrize("order, expected", [
    ("same order", NOT_REPRODUCED), ("reversed", NOT_REPRODUCED), ("unrelated", REPRODUCED),
    ("loose trend", INCONCLUSIVE),
])
def test_does_not_track_accuracy_rule(order, expected):
    assert verdict_for(order, DOES_NOT_TRACK) == expected


def test_too_few_networks_or_seeds_or_an_undefined_rho_is_inconclusive():
    assert verdict_for("same order", TRACKS, seeds=1) == INCONCLUSIVE
    few = judge_correlation(1.0, 0.0, TRACKS, n_models=MIN_MODELS - 1, seeds=3)
    assert few.verdict == INCONCLUSIVE and f">= {MIN_MODELS} networks" in few.reason
    undefined = judge_correlation(math.nan, math.nan, DOES_NOT_TRACK, n_models=7, seeds=3)
    assert undefined.verdict == INCONCLUSIVE and "undefined" in undefined.reason


def test_correlation_claims_name_structural_metrics_and_valid_directions():
    table1_claims = correlation_claims("table1")
    assert {c.metric for c in table1_claims} <= set(STRUCTURAL_METRICS)
    assert [c.direction for c in table1_claims] == [DOES_NOT_TRACK, DOES_NOT_TRACK, TRACKS, TRACKS]
    with pytest.raises(GradpathError, match="correlation claim direction"):
        CorrelationClaim("x", "table1", "x", "longest_path", "follows", "x", "x")
    with pytest.raises(GradpathError, match="correlation claim direction"):
        judge_correlation(0.0, 1.0, "follows", n_models=7, seeds=3)


def runs(accuracy: dict[str, float], seeds: int) -> pd.DataFrame:
    """A classification runs frame: `seeds` ok runs per model, top-1 = accuracy +- 0.01."""
    rows = [{"label": m, "model": m, "seed": s, "status": "ok", "params": 1000.0, "flops": 1.0,
             "top1": accuracy[m] + 0.01 * (-1) ** s} for m in accuracy for s in range(seeds)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def structure() -> pd.DataFrame:
    return structural_table(TABLE1_MODELS, "smoke")


def test_table1_judges_the_correlation_claims_from_the_runs(structure):
    # accuracy ranked exactly like the gradient combination size: "tracks" must be reproduced
    accuracy = dict(zip(structure.model, 50 + structure.combination_size_mean.rank(method="first")))
    result = table1(runs(accuracy, seeds=2), "smoke")
    assert result.table.model.tolist() == list(TABLE1_MODELS)
    assert set(STRUCTURAL_METRICS) <= set(result.table.columns)
    rho = result.correlations.set_index("metric").spearman_rho
    assert rho["combination_size_mean"] == pytest.approx(1.0)
    texts = [c.text for c in claims("table1")] + [c.text for c in correlation_claims("table1")]
    assert result.verdicts.claim.tolist() == texts
    verdicts = result.verdicts.set_index("claim").verdict
    assert verdicts["the gradient combination size tracks accuracy"] == REPRODUCED
    for claim in correlation_claims("table1"):
        expected = judge_correlation(rho[claim.metric], result.correlations.set_index("metric").p_value[claim.metric],
                                     claim.direction, n_models=len(TABLE1_MODELS), seeds=2).verdict
        assert verdicts[claim.text] == expected


def test_table1_with_one_seed_leaves_the_correlation_claims_inconclusive(structure):
    accuracy = dict(zip(structure.model, 50 + structure.combination_size_mean.rank(method="first")))
    verdicts = table1(runs(accuracy, seeds=1), "smoke").verdicts
    judged = verdicts[verdicts.claim.isin([c.text for c in correlation_claims("table1")])]
    assert (judged.verdict == INCONCLUSIVE).all() and judged.why.str.contains("seeds per network").all()
