"""Small helpers for the sentences the chapters compute from their records."""

from __future__ import annotations

from collections.abc import Iterable


def join_words(items: Iterable[str], last: str = "and") -> str:
    """"a", "a and b", "a, b and c" (`last` joins the last two); "" for no items."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {last} {items[-1]}"


def join_names(names: Iterable[str], last: str = "and") -> str:
    """`join_words` of the names as code: "`resnet` and `prn`"."""
    return join_words((f"`{name}`" for name in names), last)
