"""Figures 7, 8 and 9 and the measured-spectrum figure, drawn from the analysis of real models.

Each function returns a matplotlib figure and, given `out_dir`, also saves it there as
`<name>.png` (a notebook passes `results/<scale>/figures/`). matplotlib is imported inside the
functions so the core library does not need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .measured import measured_gradient_spectrum
from .paths import LOSS_NAME, GradientPathReport, analyze_model

FIG7_MODELS = ("resnet", "prn", "densenet", "sparsenet")
FIG8_MODELS = ("resnet", "prn", "densenet")
FIG9_MODELS = ("resnet-deep", "resnet-sg-identity", "resnet-sg-block", "plain-deep")
SPECTRUM_MODELS = ("resnet", "prn", "plain", "csp-resnet", "elan", "vovnet-deep", "vovnet-deep-planned")
SPECTRUM_BATCH = 64  # test images per measured spectrum (held in one forward pass)
SMALL_SCALE = "smoke"  # Figs. 7 and 8 draw every layer: the smallest registry presets stay legible
PANEL_WIDTH, ROW_HEIGHT = 4.0, 0.22  # inches per model panel (at least) and per drawn group row
PANEL_COLUMNS = 2  # panels per row of a figure
LABEL_SIZE = 7  # points, of the layer names on the axes
MAX_LABELLED_ROWS = 60  # a panel with more group rows (or source columns) labels every k-th; it grows no taller
CHAR_WIDTH = 0.6  # of the font size: the width of an average character, to make room for rotated labels
PEAK_RTOL = 1e-6  # shares within this relative distance of the largest count as tied for a spectrum's peak


def analyze_registry(names: tuple[str, ...] | list[str], scale: str) -> dict[str, GradientPathReport]:
    """The structural report of each registered model `name` built at `scale`."""
    from ..models import create_model

    return {name: analyze_model(create_model(name, scale)) for name in names}


def _save(figure: Any, out_dir: str | Path | None, name: str) -> Any:
    if out_dir is not None:
        from ..notebook import FIGURE_DPI

        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        figure.savefig(path / f"{name}.png", dpi=FIGURE_DPI, bbox_inches="tight")
    return figure


def group_labels(report: GradientPathReport) -> list[str]:
    """One label per group row: the layer name, with its channel range when the layer is split."""
    layers = report.layers
    split = layers.groupby("layer", sort=False).layer.transform("size") > 1
    return [f"{r.layer}[{r.group_start}:{r.group_stop}]" if s else r.layer
            for r, s in zip(layers.itertuples(), split)]


def _panels(count: int, rows: int, columns_drawn: int = 0, label_chars: int = 0) -> tuple[Any, Any]:
    """A figure of `count` panels, `PANEL_COLUMNS` a row (so that a page shows them large enough to
    read), each tall enough for `rows` labelled rows (and for x labels of `label_chars` characters
    drawn upright) and wide enough for `columns_drawn` labelled columns; the unused panels are hidden."""
    import matplotlib.pyplot as plt

    columns = min(count, PANEL_COLUMNS)
    grid_rows = -(-count // columns)
    height = max(3.0, ROW_HEIGHT * min(rows, MAX_LABELLED_ROWS)) + label_chars * LABEL_SIZE * CHAR_WIDTH / 72
    width = max(PANEL_WIDTH, ROW_HEIGHT * min(columns_drawn, MAX_LABELLED_ROWS))
    fig, axes = plt.subplots(grid_rows, columns, figsize=(width * columns, height * grid_rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat[:count]


def _thinned(labels: list[str]) -> tuple[range, list[str]]:
    """Tick positions and labels: all of them, or every k-th when there are more than
    `MAX_LABELLED_ROWS` (a large model's hundreds of groups)."""
    step = -(-len(labels) // MAX_LABELLED_ROWS)
    return range(0, len(labels), step), labels[::step]


def measured_timestamps(report: GradientPathReport, check: pd.DataFrame) -> pd.DataFrame:
    """`check` (`measured.structure_check` of the model of `report`) in the order of the report's
    group rows: columns measured and agrees."""
    keys = report.layers[["layer", "group_start"]]
    return keys.merge(check[["layer", "group_start", "measured", "agrees"]], how="left", on=["layer", "group_start"])


def timestamps_figure(reports: Mapping[str, GradientPathReport], out_dir: str | Path | None = None, *,
                      checks: Mapping[str, pd.DataFrame] | None = None,
                      name: str = "fig7_gradient_timestamps") -> Any:
    """Fig. 7: which layer / channel group receives gradient at which backward step. For a model
    with a `structure_check` in `checks`, the measured timestamps are drawn as rings over the
    structural dots, and the groups where they differ are labelled in red."""
    fig, axes = _panels(len(reports), max(len(r.groups) for r in reports.values()))
    for ax, (model, report) in zip(axes, reports.items()):
        labels = group_labels(report)
        for row, stamps in enumerate(report.layers.timestamps):
            ax.scatter(stamps, [row] * len(stamps), s=18, color="tab:blue",
                       label="structural (a path of that length)" if row == 0 else None)
        ticks, tick_labels = _thinned(labels)
        ax.set_yticks(ticks, tick_labels, fontsize=LABEL_SIZE)
        if checks is not None and model in checks:
            measured = measured_timestamps(report, checks[model])
            for row, stamps in enumerate(measured.measured):
                ax.scatter(stamps, [row] * len(stamps), s=60, facecolors="none", edgecolors="tab:orange",
                           label="measured gradient" if row == 0 else None)
            for tick, row in zip(ax.get_yticklabels(), ticks):
                if not measured.agrees.iloc[row]:
                    tick.set_color("tab:red")
            ax.legend(fontsize=LABEL_SIZE, loc="lower right")
        ax.invert_yaxis()
        ax.set_xlabel("gradient timestamp (backward step)")
        ax.set_ylabel("layer [channel group]", fontsize=LABEL_SIZE + 1)
        ax.set_title(model)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def sources_figure(reports: Mapping[str, GradientPathReport], out_dir: str | Path | None = None,
                   name: str = "fig8_gradient_sources") -> Any:
    """Fig. 8: the gradient sources of every group at its first timestamp (rows receive from columns)."""
    fig, axes = _panels(len(reports), max(len(r.groups) for r in reports.values()),
                        max(len(r.graph.positions) + 1 for r in reports.values()),
                        max(len(p.name) for r in reports.values() for p in r.graph.positions))
    for ax, (model, report) in zip(axes, reports.items()):
        labels = group_labels(report)
        columns = [p.name for p in report.graph.positions] + [LOSS_NAME]
        grid = torch.zeros(len(labels), len(columns))
        for row, sources in enumerate(report.layers.sources_at_first):
            for source in sources:
                grid[row, columns.index(source)] = 1
        ax.imshow(grid.numpy(), cmap="Greys", aspect="auto", interpolation="nearest")
        ax.set_yticks(*_thinned(labels), fontsize=LABEL_SIZE)
        ax.set_xticks(*_thinned(columns), fontsize=LABEL_SIZE, rotation=90)
        ax.set_ylabel("receiving group", fontsize=LABEL_SIZE + 1)
        ax.set_xlabel("gradient source (black: the row receives from the column)", fontsize=LABEL_SIZE + 1)
        ax.set_title(model)
    fig.suptitle("Gradient sources at the first timestamp")  # short: no wider than one panel
    fig.tight_layout()
    return _save(fig, out_dir, name)


def layer_path_lengths(report: GradientPathReport) -> pd.DataFrame:
    """Per weighted-layer position in forward order: its shortest and longest gradient path."""
    frame = report.layers.dropna(subset=["shortest"])
    return frame.groupby("layer", sort=False).agg(shortest=("shortest", "min"), longest=("longest", "max")).reset_index()


def stop_gradient_figure(reports: Mapping[str, GradientPathReport], out_dir: str | Path | None = None) -> Any:
    """Fig. 9: per-layer shortest and longest gradient paths, one panel per model."""
    return path_lengths_figure(reports, out_dir, "fig9_stop_gradient")


def path_lengths_figure(reports: Mapping[str, GradientPathReport], out_dir: str | Path | None = None,
                        name: str = "path_lengths", *, layer_names: bool = False) -> Any:
    """Per-layer shortest and longest gradient paths, one panel per model (saved as `name`); the
    layers are numbered in forward order, or named when `layer_names` and no panel has more than
    `MAX_LABELLED_ROWS`."""
    from matplotlib.ticker import MaxNLocator

    tables = {model: layer_path_lengths(report) for model, report in reports.items()}
    named = layer_names and max(map(len, tables.values())) <= MAX_LABELLED_ROWS
    longest_name = max(len(layer) for paths in tables.values() for layer in paths.layer) if named else 0
    fig, axes = _panels(len(reports), 0, max(map(len, tables.values())) if named else 0, longest_name)
    top = max(r.network["longest_path"] for r in reports.values())
    for ax, (model, paths) in zip(axes, tables.items()):
        ax.plot(paths.index + 1, paths.longest, label="longest")
        ax.plot(paths.index + 1, paths.shortest, linestyle="--", label="shortest")
        ax.set_ylim(0, top + 1)
        if named:
            ax.set_xticks(paths.index + 1, paths.layer, fontsize=LABEL_SIZE, rotation=90)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("weighted layer (forward order)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gradient path length (weighted layers)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def time_paths_figure(table: pd.DataFrame, out_dir: str | Path | None = None, name: str = "recurrent_paths") -> Any:
    """Against the steps between a time step and the last one: the shortest gradient path to that
    step's input gates (left) and the number of paths (right, log scale), one marker per recurrent
    design (`designs.recurrent_paths_table`; hollow markers, so designs that coincide both show)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (short, count) = plt.subplots(1, 2, figsize=(8, 3.2))
    for (design, rows), marker, size in zip(table.groupby("design", sort=False), "osD^v", (4, 7, 10, 5, 5)):
        style = dict(marker=marker, markersize=size, markerfacecolor="none", linewidth=1, label=design)
        short.plot(rows["steps after it"], rows["shortest path"], **style)
        count.plot(rows["steps after it"], rows["paths"], **style)
    short.set_ylabel("shortest gradient path (weighted layers)")
    count.set_ylabel("gradient paths")
    count.set_yscale("log", base=2)
    short.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (short, count):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("time steps after the input's step")
        ax.grid(alpha=0.3)
    short.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def path_length_shares(spectrum: pd.DataFrame) -> pd.Series:
    """Per timestamp: the share of a layer's gradient norm arriving through paths of that length,
    averaged over every channel group that receives gradient (each counts once, so the large
    gradient of the classifier does not drown the rest); sums to 1."""
    receiving = spectrum.groupby(["layer", "group_start"]).share.transform("sum") > 0
    per_timestamp = spectrum[receiving].groupby("timestamp").share.sum()
    return per_timestamp / per_timestamp.sum()


def spectrum_batch(scale: str, size: int = SPECTRUM_BATCH, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` test images of the scale's dataset, normalized as training normalizes them."""
    from ..data import dataset_for_scale, load_classification
    from ..train.batches import DeviceImages

    train, test = (load_classification(dataset_for_scale(scale), split) for split in ("train", "test"))
    data = DeviceImages.from_arrays(test.images[:size], test.labels[:size], torch.device(device),
                                    stats_from=train.images)
    return data.normalize(data.images), data.labels


def measured_spectra(
    models: Mapping[str, nn.Module], images: torch.Tensor, labels: torch.Tensor
) -> pd.DataFrame:
    """Long table (model, timestamp, share) of `path_length_shares` for each named model."""
    frames = []
    for name, model in models.items():
        shares = path_length_shares(measured_gradient_spectrum(model, images, labels))
        frames.append(pd.DataFrame({"model": name, "timestamp": shares.index, "share": shares.to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def spectrum_figure(
    spectra: Mapping[str, pd.DataFrame], out_dir: str | Path | None = None, name: str = "measured_spectra"
) -> Any:
    """Gradient share by path length per architecture; `spectra` maps a panel title (e.g.
    "trained", "at initialisation") to a `measured_spectra` table."""
    fig, axes = _panels(len(spectra), 0)
    for ax, (title, table) in zip(axes, spectra.items()):
        for model, rows in table.groupby("model", sort=False):
            ax.plot(rows.timestamp, rows.share, marker=".", label=model)
        ax.set_xlabel("path length (weighted layers)")
        ax.set_ylabel("share of gradient norm")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def peak_lengths(shares: pd.Series, rtol: float = PEAK_RTOL) -> list[int]:
    """The path lengths (index of `shares`) whose share is the largest, within `rtol` of it: one
    length for a single peak, several for a tie."""
    top = shares.max()
    return sorted(int(t) for t, share in shares.items() if share >= top * (1 - rtol))


def peak_text(lengths: list[int]) -> str:
    """'3' for a single peak, 'tie: 1–8' (or 'tie: 1, 3') for several lengths tied for it."""
    if len(lengths) == 1:
        return str(lengths[0])
    if lengths == list(range(lengths[0], lengths[-1] + 1)):
        return f"tie: {lengths[0]}–{lengths[-1]}"
    return "tie: " + ", ".join(map(str, lengths))


def spectrum_peaks(spectra: pd.DataFrame, reports: Mapping[str, GradientPathReport]) -> pd.DataFrame:
    """Per model of a `measured_spectra`-style table: the path length carrying the largest share
    (`peak_text`: a tie where several carry it), the network's longest shortest path, and the
    share carried by paths no longer than it."""
    rows = []
    for model, rows_of_model in spectra.groupby("model", sort=False):
        shares = rows_of_model.set_index("timestamp").share
        shortest = reports[model].network["longest_shortest_path"]
        rows.append({"model": model, "peak path length": peak_text(peak_lengths(shares)),
                     "longest shortest path": shortest,
                     "share up to it": float(shares[shares.index <= shortest].sum())})
    return pd.DataFrame(rows)
