"""What each chapter (notebook) of the book runs at each scale.

A `Chapter` ties a notebook to the run configs it needs. Each area of the book registers its
chapters in a module of this package (`classification.py`, `analysis.py`, `detection.py`, ...),
imported by `_load_all`. `gradpath reproduce` uses `chapters()` for its order and its `--runs-only`
training; a notebook calls `chapter(name).runs(scale, seeds)` to get the configs it shows.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import GradpathError, check_choice
from ..scales import check_scale

DEFAULT_SEEDS = {"smoke": [0], "mini": [0, 1, 2], "paper": [0]}


@dataclass(frozen=True)
class Chapter:
    """One notebook of the book and the runs it needs."""

    name: str  # also the notebook file stem: notebooks/<name>.ipynb
    title: str
    runs: Callable[[str, list[int]], list[dict[str, Any]]]  # (scale, seeds) -> run configs
    order: int  # position in the book and in the batch (lower first)
    depends_on: tuple[str, ...] = ()  # chapters whose outputs (tables/figures) this one reads
    reads_all_results: bool = False  # reads every record and bench of its scale, not only its own runs


_CHAPTERS: dict[str, Chapter] = {}


def register_chapter(chapter: Chapter) -> Chapter:
    """Add a chapter; names are unique."""
    if chapter.name in _CHAPTERS:
        raise GradpathError(f"chapter {chapter.name!r} is registered twice")
    _CHAPTERS[chapter.name] = chapter
    return chapter


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def chapters() -> list[Chapter]:
    """Every chapter, in book order."""
    _load_all()
    return sorted(_CHAPTERS.values(), key=lambda c: (c.order, c.name))


def chapter(name: str) -> Chapter:
    """The chapter called `name`, or an error listing the valid names."""
    _load_all()
    check_choice("chapter", name, [c.name for c in chapters()])
    return _CHAPTERS[name]


def no_runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """The `runs` of a chapter that trains nothing (figures drawn from models, summaries)."""
    return []


def default_seeds(scale: str) -> list[int]:
    """The seeds a scale runs by default (the mini scale uses three)."""
    return list(DEFAULT_SEEDS[check_scale(scale)])
