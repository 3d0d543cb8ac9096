"""The analysis chapters' tables and figures in the shared smoke reproduction (`smoke_results`)."""

from __future__ import annotations

import pandas as pd
import pytest

from gradpath_lib.analysis.figures import FIG7_MODELS, FIG9_MODELS, SPECTRUM_MODELS
from gradpath_lib.analysis.summary import STRUCTURAL_METRICS, TABLE1_MODELS
from gradpath_lib.paper import claims, correlation_claims
from gradpath_lib.tables import NOT_AVAILABLE

FIGURES = ("fig7_gradient_timestamps", "fig8_gradient_sources", "fig9_stop_gradient", "measured_spectra")


def table(results, name: str) -> pd.DataFrame:
    return pd.read_csv(results / "smoke" / "tables" / f"{name}.csv")


@pytest.mark.parametrize("figure", FIGURES)
def test_analysis_figures_are_pngs(smoke_results, figure):
    results, _ = smoke_results
    path = results / "smoke" / "figures" / f"{figure}.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_analysis_tables(smoke_results):
    results, _ = smoke_results
    assert table(results, "fig7_networks").model.tolist() == list(FIG7_MODELS)
    paths = table(results, "fig9_path_lengths").set_index("model")
    assert paths.index.tolist() == list(FIG9_MODELS)
    assert paths.loc["resnet-sg-block", "longest path"] < paths.loc["resnet-deep", "longest path"]
    assert (paths.loc["plain-deep", "layers with shortest = longest"] == paths.loc["plain-deep", "weighted layers"])

    table1 = table(results, "table1")
    assert table1.model.tolist() == list(TABLE1_MODELS)
    assert set(STRUCTURAL_METRICS) | {"params", "flops", "top1"} <= set(table1.columns)
    correlations = table(results, "table1_rank_correlations")
    with_accuracy = int((table1.top1.astype(str) != NOT_AVAILABLE).sum())  # runs that did not diverge
    assert with_accuracy >= 3 and (correlations.n_models == with_accuracy).all()
    verdicts = table(results, "table1_verdicts")
    correlated = correlation_claims("table1")
    assert verdicts.claim.tolist() == [c.text for c in claims("table1")] + [c.text for c in correlated]
    judged = verdicts.tail(len(correlated))
    assert (judged.verdict == "inconclusive").all()  # one smoke seed cannot rank networks

    spectra = table(results, "measured_spectra")
    assert spectra.model.unique().tolist() == list(SPECTRUM_MODELS)
    assert set(spectra.weights) == {"trained", "initial"}
    assert spectra.groupby(["model", "weights"]).share.sum().round(9).eq(1).all()
