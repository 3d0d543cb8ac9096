"""The Jupyter Book: its table of contents, the API page, and a smoke build with warnings as errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.book import ANNOUNCEMENTS, api_markdown, choose_scale, full_toc_yaml, toc_yaml
from gradpath_lib.runner import select_chapters
from gradpath_lib.store import REPO_ROOT

from conftest import SMOKE_TIMEOUT_S

pytestmark = pytest.mark.timeout(SMOKE_TIMEOUT_S)  # the shared smoke reproduction runs in the first test


def test_committed_toc_is_the_generated_one() -> None:
    assert (REPO_ROOT / "_toc.yml").read_text() == full_toc_yaml(), "regenerate _toc.yml: gradpath_lib.book.full_toc_yaml()"


def test_toc_lists_chapters_in_book_order_between_prose_and_api() -> None:
    toc = toc_yaml(["architecture", "table2"])
    files = [line.removeprefix("- file: ") for line in toc.splitlines() if line.startswith("- file: ")]
    assert files == ["book/gradient_paths", "book/chapters/architecture", "book/chapters/table2", "book/chapters/api"]
    assert "root: book/intro" in toc


def test_every_chapter_with_a_notebook_is_in_the_toc() -> None:
    toc = full_toc_yaml()
    for chap in select_chapters():
        assert f"book/chapters/{chap.name}\n" in toc


def test_scale_is_mini_only_when_mini_pages_exist(tmp_path: Path) -> None:
    assert choose_scale(tmp_path) == "smoke"
    (tmp_path / "mini" / "notebooks").mkdir(parents=True)
    (tmp_path / "mini" / "notebooks" / "table2.ipynb").write_text("{}")
    assert choose_scale(tmp_path) == "mini" and choose_scale(tmp_path, "paper") == "paper"


@pytest.mark.parametrize("scale, said", [("smoke", "running the smoke reproduction first"),
                                         (None, "no mini-scale results; running the smoke reproduction")])
def test_smoke_reproduction_is_announced_as_asked_and_jobs_auto_resolved(scale, said, tmp_path, monkeypatch,
                                                                        capsys) -> None:
    import gradpath_lib.book as book

    jobs = []
    monkeypatch.setattr(book, "reproduce", lambda *a, **kw: jobs.append(kw["jobs"]) or [])
    monkeypatch.setattr(book, "stage_pages", lambda results_dir, scale: [])
    with pytest.raises(GradpathError, match="no executed notebooks"):
        book.build_book(scale, results_dir=tmp_path, jobs=None, output_dir=tmp_path)
    out = capsys.readouterr().out
    assert said in out and ("no mini-scale" in out) == (scale is None)
    assert jobs == [1] and "--jobs auto = 1" in out


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_book_jobs_are_checked_as_reproduce_checks_them(jobs, tmp_path, capsys) -> None:
    assert main(["book", "--jobs", jobs, "--results-dir", str(tmp_path)]) == 2
    assert f"--jobs must be a whole number >= 1 or auto, got {jobs!r}" in capsys.readouterr().err


def test_api_page_lists_public_functions() -> None:
    page = api_markdown()
    assert "## `gradpath_lib.verdicts`" in page and "- `judge(" in page and "- `setup(" in page
    # a summary over several lines of the docstring is whole, its code spans kept
    entry = next(line for line in page.splitlines() if line.startswith("- `verdict_frame("))
    assert entry.endswith("`gradpath_lib.verdicts` and its reason.") and "ours / paper" in entry


def test_book_builds_at_smoke_scale_with_warnings_as_errors(smoke_results, tmp_path: Path) -> None:
    from gradpath_lib.book import build_book

    results, _ = smoke_results
    assert build_book("smoke", results_dir=results, output_dir=tmp_path) == 0
    html = tmp_path / "_build" / "html"
    for chap in select_chapters():
        page = html / "book" / "chapters" / f"{chap.name}.html"
        assert page.exists(), page
    intro = (html / "book" / "intro.html").read_text()
    assert ANNOUNCEMENTS["smoke"].split(":")[0] in intro  # every page says the numbers are smoke numbers
    assert "Krizhevsky, 2009" in intro and "Kang and Kim, 2021" in intro  # author-year bibliography labels
    table2 = (html / "book" / "chapters" / "table2.html").read_text()
    assert "reproduced" in table2 and "CSPResNet-50" in table2
    scale_out = (html / "book" / "scale_out.html").read_text()  # the generated fragment it includes
    assert "official ΔFLOPs" in scale_out and "−22.9%" in scale_out


def test_architecture_figures_colour_one_scale_with_a_colour_bar() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from gradpath_lib.figures.architecture import FIGURES, architecture_figure, first_stage, layer_dag, shortest_paths

    def bar(number: int):
        bars = [ax for ax in architecture_figure(number, "smoke").axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1 and bars[0].get_ylabel() == "shortest gradient path (backward steps)"
        return bars[0]

    models = {p.model for _, panels in FIGURES.values() for p in panels if p.view == "gradient"}
    top = max(max(shortest_paths(layer_dag(first_stage(m, "smoke"))).values()) for m in models)
    assert top > 2 and bar(3).get_ylim() == bar(4).get_ylim() == (1, top)  # one scale for the page's figures
