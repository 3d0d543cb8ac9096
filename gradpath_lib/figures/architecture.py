"""Figs. 2-6 drawn by code from the networks that are trained: the stem and first stage of a
registered model, traced by `gradpath_lib.analysis` into its DAG of weighted layers.

Each node is one weighted layer (a convolution), placed by its forward depth; an arrow is a data
edge, labelled with the producer's channel range when it carries only part of them (a split, a
masked shortcut, a partial concat). In the gradient view the arrows point backwards, from the
loss, and each node shows its gradient timestamps per channel group (`t=1,3`: the backward steps
at which gradient reaches it), coloured by its shortest gradient path on one scale for all the
figures of a scale (`colour_top`), with its colour bar.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import check_choice

INPUT_SHAPE = (3, 32, 32)  # the classifiers' input
NODE_WIDTH, NODE_HEIGHT = 1.1, 0.55
X_SPACING = 1.5  # between forward depths, leaving room for the arrows
FONT_SIZE = 5.5
ARC_BEND = {"data": -0.3, "gradient": 0.3}  # skip arrows bend upwards in both directions
TIMESTAMP_COLOURS = "viridis_r"  # early timestamps light, late ones dark
COLOUR_RANGE = (0.1, 0.75)  # the part of the colour map used: its darkest end would hide the labels
DARK_BELOW = 1.2  # a node colour whose r + g + b is below this gets a white label
VIEWS = ("data", "gradient")


@dataclass(frozen=True)
class Panel:
    """One drawing: a registered model, the view, and its caption."""

    model: str
    view: str
    caption: str


# Fig. number -> (title, panels): what the paper's Figs. 2-6 show, from our registered models.
FIGURES: dict[int, tuple[str, tuple[Panel, ...]]] = {
    2: ("Data path vs gradient path (ResNet stem + first stage)",
        (Panel("resnet", "data", "data path"), Panel("resnet", "gradient", "gradient path"))),
    3: ("Residual vs masked residual layer (PRN)",
        (Panel("resnet", "gradient", "ResNet"), Panel("prn", "gradient", "PRN: masked residual"))),
    4: ("Cross stage partial: ResNet stage vs CSP ResNet stage",
        (Panel("resnet", "gradient", "ResNet"), Panel("csp-resnet", "gradient", "CSPResNet (full CSP)"))),
    5: ("The three CSP fusions",
        (Panel("csp-resnet", "gradient", "full CSP"), Panel("csp-resnet-first", "gradient", "fusion first"),
         Panel("csp-resnet-last", "gradient", "fusion last"))),
    6: ("ELAN: stack in computational block",
        (Panel("elan", "data", "data path"), Panel("elan", "gradient", "gradient path"))),
}


def first_stage(model_name: str, scale: str = "smoke") -> nn.Module:
    """The stem and first stage of the registered classifier `model_name` (the trained objects)."""
    from ..models.registry import create_model

    model = create_model(model_name, scale)
    return nn.Sequential(model.stem, model.stages[0]).eval()


def layer_dag(module: nn.Module) -> dict[str, Any]:
    """Positions, data edges, forward depths and per-group timestamps of `module`'s weighted layers."""
    from ..analysis.graph import trace_layers
    from ..analysis.layer_graph import LOSS
    from ..analysis.paths import gradient_paths

    graph = trace_layers(module, INPUT_SHAPE)
    producers: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for consumer, producer, lo, hi, _, _ in sorted(graph.edges):
        if producer < 0:
            continue
        ranges = producers[consumer]
        if ranges and ranges[-1][0] == producer and ranges[-1][2] == lo:  # a grouped conv's groups: one arrow
            ranges[-1] = (producer, ranges[-1][1], hi)
        else:
            ranges.append((producer, lo, hi))
    depth: dict[int, int] = {}
    for position in graph.positions:  # traced in execution order, so producers come first
        depth[position.id] = 1 + max((depth[p] for p, _, _ in producers[position.id]), default=0)
    depth[LOSS] = 1 + max(depth.values(), default=0)
    stamps: dict[int, list[tuple[int, int, tuple[int, ...]]]] = defaultdict(list)
    for group in gradient_paths(graph).groups:
        stamps[group.position.id].append((group.start, group.stop, group.timestamps))
    names = {p.id: p.name for p in graph.positions} | {LOSS: "loss"}
    channels = {p.id: p.out_channels for p in graph.positions}
    return {"names": names, "channels": channels, "producers": producers, "depth": depth, "stamps": stamps}


def shortest_paths(dag: dict[str, Any]) -> dict[int, int]:
    """Each node's shortest gradient path (its first timestamp) in a `layer_dag`."""
    return {n: min(min(t) for _, _, t in groups if t) for n, groups in dag["stamps"].items()
            if any(t for _, _, t in groups)}


@functools.lru_cache(maxsize=None)
def colour_top(scale: str) -> int:
    """The longest shortest gradient path over every gradient panel of `FIGURES` at `scale`: the top
    of the colour scale all the figures share, so that a colour means one length on the page."""
    models = {p.model for _, panels in FIGURES.values() for p in panels if p.view == "gradient"}
    return max(max(shortest_paths(layer_dag(first_stage(m, scale))).values(), default=1) for m in sorted(models))


def timestamp_colours(top: int) -> tuple[Any, Any]:
    """(colour map, normalisation) of shortest gradient paths 1..`top`, shared by a figure's panels."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, Normalize

    cmap = ListedColormap(colormaps[TIMESTAMP_COLOURS](np.linspace(*COLOUR_RANGE, 256)))
    return cmap, Normalize(vmin=1, vmax=max(top, 2))


def draw_dag(dag: dict[str, Any], ax: Any, view: str, caption: str, top: int | None = None) -> None:
    """Draw one layer DAG on `ax` in the data or the gradient view; `top`: the longest shortest
    path the colours span (default: this DAG's)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from ..analysis.layer_graph import LOSS

    check_choice("view", view, VIEWS)
    rows: dict[int, list[int]] = defaultdict(list)
    for node, d in sorted(dag["depth"].items(), key=lambda item: (item[1], item[0] if item[0] >= 0 else 1e9)):
        rows[d].append(node)
    xy = {node: (X_SPACING * d, (len(nodes) - 1) / 2 - i) for d, nodes in rows.items() for i, node in enumerate(nodes)}
    shortest = shortest_paths(dag)
    cmap, norm = timestamp_colours(top or max(shortest.values(), default=1))
    for node, (x, y) in xy.items():
        colour = "white" if view == "data" or node not in shortest else cmap(norm(shortest[node]))
        ax.add_patch(FancyBboxPatch((x - NODE_WIDTH / 2, y - NODE_HEIGHT / 2), NODE_WIDTH, NODE_HEIGHT,
                                    boxstyle="round,pad=0.02", facecolor=colour, edgecolor="black", lw=0.8))
        label = dag["names"][node] + (f"\n{dag['channels'][node]} ch" if node in dag["channels"] else "")
        if view == "gradient" and node in dag["stamps"]:
            label += "\n" + "\n".join(f"{lo}:{hi} t={','.join(map(str, t)) or '-'}"
                                      for lo, hi, t in dag["stamps"][node])
        dark = colour != "white" and sum(colour[:3]) < DARK_BELOW  # a light label on the darkest nodes
        ax.text(x, y, label, ha="center", va="center", fontsize=FONT_SIZE, color="white" if dark else "black")
    last = [n for n in dag["names"] if n >= 0 and not any(n == p for ps in dag["producers"].values() for p, _, _ in ps)]
    edges = [(p, c, lo, hi) for c, ps in dag["producers"].items() for p, lo, hi in ps] + \
            [(n, LOSS, 0, dag["channels"][n]) for n in last]
    for producer, consumer, lo, hi in edges:
        (px, py), (cx, cy) = xy[producer], xy[consumer]
        skips = abs(px - cx) > X_SPACING  # arcs over the layers it skips, from the top of one box to the other's
        if skips:
            start, end = (px, py + NODE_HEIGHT / 2), (cx, cy + NODE_HEIGHT / 2)
        else:  # from the producer's right side to the consumer's left side: no line over a label
            start, end = (px + NODE_WIDTH / 2, py), (cx - NODE_WIDTH / 2, cy)
        if view == "gradient":
            start, end = end, start
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=6, lw=0.6, shrinkA=1, shrinkB=1,
                                     color="0.3", connectionstyle=f"arc3,rad={ARC_BEND[view] if skips else 0.0}"))
        if producer in dag["channels"] and (lo, hi) != (0, dag["channels"][producer]):
            lift = 0.45 if skips else NODE_HEIGHT / 2 + 0.1  # above the boxes: the gap between them is narrow
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + lift, f"[{lo}:{hi})", fontsize=FONT_SIZE,
                    color="tab:red", ha="center")
    xs = [x for x, _ in xy.values()]
    ys = [y for _, y in xy.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 1.6)
    ax.set_title(caption, fontsize=8)
    ax.axis("off")


def architecture_figure(number: int, scale: str = "smoke") -> Any:
    """The paper's Fig. `number` (2-6) as a matplotlib figure, one panel per entry of FIGURES."""
    import matplotlib.pyplot as plt

    check_choice("architecture figure", number, sorted(FIGURES))
    title, panels = FIGURES[number]
    dags = {p.model: layer_dag(first_stage(p.model, scale)) for p in panels}
    widest = max(max(d["depth"].values()) for d in dags.values())
    top = colour_top(scale)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.3 * widest), 2.2 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        draw_dag(dags[panel.model], ax, panel.view, f"{panel.caption} ({panel.model}, {panel.view} view)", top)
    fig.suptitle(f"Fig. {number}: {title}", fontsize=10)
    fig.tight_layout()
    if any(p.view == "gradient" for p in panels):
        from matplotlib.cm import ScalarMappable

        cmap, norm = timestamp_colours(top)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:, 0]), shrink=0.6, pad=0.01,
                           ticks=range(1, max(top, 2) + 1))
        bar.set_label("shortest gradient path (backward steps)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig
