"""The three scales every experiment can run at (see the book's 'Reproducing' chapter)."""

from __future__ import annotations

from .errors import check_choice

SCALES = ("smoke", "mini", "paper")


def check_scale(scale: str) -> str:
    """Return `scale` if it is known, else raise an error listing the scales."""
    check_choice("scale", scale, SCALES)
    return scale
