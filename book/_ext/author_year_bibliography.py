"""A Sphinx extension: the bibliography labels its entries by author and year ("Wang et al.,
2022"), as the in-text citations do (`bibtex_reference_style: author_year`), instead of pybtex's
alpha labels ("[WLY22]")."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle

STYLE = "author_year"  # the name `bibtex_default_style` selects


def author_year(entry: Any) -> str:
    """'He et al., 2016', 'Lee and Park, 2019' or 'Huang, 2017' (editors when there is no author)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [" ".join(p.last_names) for p in people] or [entry.fields.get("title", entry.key)]
    who = names[0] if len(names) == 1 else f"{names[0]} and {names[1]}" if len(names) == 2 else f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabels(BaseLabelStyle):
    """Labels each entry `author_year(entry)`."""

    def format_labels(self, sorted_entries: Iterable[Any]) -> Iterator[str]:
        for entry in sorted_entries:
            yield author_year(entry)


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt formatting with author-year labels."""

    default_label_style = AuthorYearLabels


def setup(app: Any) -> dict[str, Any]:
    register_plugin("pybtex.style.formatting", STYLE, AuthorYearStyle)
    return {"parallel_read_safe": True}
