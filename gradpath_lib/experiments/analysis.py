"""The gradient path analysis chapters: Figs. 7-8 (timestamps and sources), Fig. 9 (stop
gradient), Table 1 (the SparseNet view), the measured gradient spectra, and other well-known
designs analysed the same way."""

from __future__ import annotations

from typing import Any

from ..analysis.figures import SPECTRUM_MODELS
from ..analysis.summary import TABLE1_MODELS
from . import Chapter, register_chapter
from ..train.spectrum import spectrum_config
from .classification import classification_runs, no_runs

SPECTRUM_SEEDS = 1  # the spectra are shown for one trained network per architecture


def spectrum_runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """A `Chapter.runs` function: one spectrum run (trained and initial weights) of each
    SPECTRUM_MODELS network."""
    return [spectrum_config(model, scale, seed) for model in SPECTRUM_MODELS for seed in seeds[:SPECTRUM_SEEDS]]


register_chapter(Chapter("gradient_timestamps", "Figures 7 and 8: gradient timestamps and sources",
                         no_runs, 30))
register_chapter(Chapter("stop_gradient", "Figure 9: stop gradient and gradient path lengths", no_runs, 40))
register_chapter(Chapter("sparsenet_view", "Table 1: path length, aggregation and gradient combination vs accuracy",
                         classification_runs(TABLE1_MODELS), 90))
register_chapter(Chapter("measured_spectra", "Beyond the paper: measured gradient spectra",
                         spectrum_runs, 110))
register_chapter(Chapter("other_designs", "Beyond the paper: gradient paths of other well-known designs",
                         no_runs, 115))
