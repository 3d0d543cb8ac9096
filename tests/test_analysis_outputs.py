"""Figures 7-9, the spectrum figure, Table 1 and the chapter registrations of the analysis."""

from __future__ import annotations

import math
from collections import OrderedDict

import matplotlib
import pandas as pd
import pytest
import torch

from gradpath_lib.analysis.figures import (
    FIG9_MODELS,
    analyze_registry,
    layer_path_lengths,
    measured_spectra,
    sources_figure,
    spectrum_figure,
    stop_gradient_figure,
    timestamps_figure,
)
from gradpath_lib.analysis.summary import STRUCTURAL_METRICS, rank_correlations, structural_table
from gradpath_lib.experiments import chapter
from gradpath_lib.models import create_model

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fig9_reports():
    return analyze_registry(FIG9_MODELS, "smoke")


def test_stop_gradient_paths_of_the_registry_models(fig9_reports, tmp_path):
    plain = layer_path_lengths(fig9_reports["plain-deep"])
    sg_identity = layer_path_lengths(fig9_reports["resnet-sg-identity"])
    sg_block = layer_path_lengths(fig9_reports["resnet-sg-block"])
    resnet = layer_path_lengths(fig9_reports["resnet-deep"])
    assert (plain.shortest == plain.longest).all() and (sg_identity.shortest == sg_identity.longest).all()
    assert plain.longest.tolist() == list(range(len(plain), 0, -1))
    # sg=block: a layer's path runs through its own block, the identity chain, the stage
    # projections after it and the classifier; never through another block's body
    projections = sum("proj" in name for name in sg_block.layer)
    assert sg_block.longest.max() <= 2 + projections + 1
    assert resnet.longest.max() == sg_identity.longest.max() > sg_block.longest.max()
    assert resnet.shortest.max() < resnet.longest.max()
    stop_gradient_figure(fig9_reports, tmp_path)
    assert (tmp_path / "fig9_stop_gradient.png").stat().st_size > 0


def test_timestamp_and_source_figures_are_written(tmp_path):
    reports = analyze_registry(["resnet", "prn"], "smoke")
    fig = timestamps_figure(reports, tmp_path)
    assert len(fig.axes) == 2
    # one y tick per group row: PRN's split stem shows as two rows
    assert len(fig.axes[1].get_yticklabels()) == len(reports["prn"].groups) > len(reports["prn"].graph.positions)
    sources_figure(reports, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"fig7_gradient_timestamps.png", "fig8_gradient_sources.png"}


def test_measured_spectra_shares_and_figure(tmp_path):
    torch.manual_seed(0)
    models = {name: create_model(name, "smoke") for name in ("plain", "resnet")}
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    table = measured_spectra(models, images, labels)
    sums = table.groupby("model").share.sum()
    assert sums.to_numpy() == pytest.approx([1.0, 1.0])
    plain = table[(table.model == "plain") & (table.share > 0)]
    depth = analyze_registry(["plain"], "smoke")["plain"].network["longest_path"]
    assert plain.timestamp.tolist() == list(range(1, depth + 1))  # a plain net gets every length once
    spectrum_figure({"at initialisation": table}, tmp_path)
    assert (tmp_path / "measured_spectra.png").exists()


def test_structural_table_and_rank_correlations():
    table = structural_table(["plain", "resnet"], "smoke")
    assert list(table.model) == ["plain", "resnet"]
    assert set(STRUCTURAL_METRICS) | {"params", "flops"} <= set(table.columns)
    plain = table.set_index("model").loc["plain"]
    assert plain.longest_shortest_path == plain.longest_path
    assert (table.params > 0).all() and (table.flops > 0).all()

    synthetic = pd.DataFrame({"top1": [1.0, 2.0, 3.0, 4.0, None], "up": [1, 2, 3, 5, 9],
                              "down": [4, 3, 2, 1, 0], "flat": [1, 1, 1, 1, 1]})
    corr = rank_correlations(synthetic, "top1", ["up", "down", "flat"]).set_index("metric")
    assert corr.loc["up", "spearman_rho"] == pytest.approx(1.0)
    assert corr.loc["down", "spearman_rho"] == pytest.approx(-1.0)
    assert math.isnan(corr.loc["flat", "spearman_rho"])
    assert (corr.n_models == 4).all()


def test_analysis_chapters_are_registered():
    assert chapter("gradient_timestamps").order == 30 and chapter("gradient_timestamps").runs("mini", [0]) == []
    assert chapter("stop_gradient").order == 40
    table1 = chapter("sparsenet_view").runs("smoke", [0, 1])
    assert chapter("sparsenet_view").order == 90 and len(table1) == 7 * 2
    assert {c["model"] for c in table1} == {"plain", "resnet", "prn", "densenet", "sparsenet", "csp-resnet", "elan"}
    spectra = chapter("measured_spectra").runs("mini", [0, 1, 2])
    assert chapter("measured_spectra").order == 110 and {c["seed"] for c in spectra} == {0} and len(spectra) == 7
    assert {c["task"] for c in spectra} == {"spectrum"} and all(c["target"]["task"] == "classify" for c in spectra)


def test_path_lengths_name_the_layers_of_a_small_model_and_number_those_of_a_large_one():
    import matplotlib.pyplot as plt
    from torch import nn

    from gradpath_lib.analysis import analyze_model
    from gradpath_lib.analysis.figures import MAX_LABELLED_ROWS, path_lengths_figure

    named_net = nn.Sequential(OrderedDict(hidden=nn.Linear(4, 4), head=nn.Linear(4, 2)))
    small = {"small": analyze_model(named_net, (4,))}
    fig = path_lengths_figure(small, layer_names=True)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["hidden", "head"]
    deep = {"deep": analyze_model(nn.Sequential(*[nn.Linear(4, 4) for _ in range(MAX_LABELLED_ROWS + 1)]), (4,))}
    for reports, names in ((small, False), (deep, True)):  # the book's figures keep numbering the layers
        numbered = path_lengths_figure(reports, layer_names=names)
        numbered.canvas.draw()
        assert all(t.get_text().lstrip("−").isdigit() for t in numbered.axes[0].get_xticklabels() if t.get_text())
        plt.close(numbered)
    plt.close(fig)


def test_the_sources_title_is_no_wider_than_a_one_panel_figure():
    import matplotlib.pyplot as plt
    from torch import nn

    from gradpath_lib.analysis import analyze_model

    fig = sources_figure({"small": analyze_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), (4,))})
    fig.canvas.draw()
    assert fig._suptitle.get_window_extent().width <= fig.bbox.width
    plt.close(fig)
