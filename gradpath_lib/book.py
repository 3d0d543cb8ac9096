"""Build the Jupyter Book (`gradpath book`, `make book`) from recorded results only.

The book shows the scale whose executed notebooks exist: `results/mini/` when it holds any,
else the smoke reproduction, which is run first (training tiny networks on the CPU, minutes) and
announced on every page. Building never trains at the mini or paper scale.

Steps: the executed notebooks `<results>/<scale>/notebooks/<name>.ipynb` are copied to
`book/chapters/` (git-ignored), the API reference page is generated there, and `jupyter-book`
builds with warnings as errors into `_build/html`, using a table of contents generated from
`chapters()` (only the chapters whose pages exist: the others are absent, not stubs) and the
top-level `_config.yml` plus an announcement naming the scale. `_toc.yml` at the top level is the
same table of contents for every chapter that has a notebook (`tests/test_book.py` checks it).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import GradpathError
from .experiments import chapters
from .runner import executed_notebook, reproduce, select_chapters, succeeded, summary_frame
from .scales import check_scale
from .store import REPO_ROOT

BOOK_DIR = REPO_ROOT / "book"
PAGES_DIR = BOOK_DIR / "chapters"  # staged executed notebooks and generated pages (git-ignored)
ROOT_PAGE = "book/intro"
PROSE_BEFORE = ("book/gradient_paths",)
# Prose pages shown as sections of a chapter's page: chapter name -> pages.
CHAPTER_SECTIONS = {"reproducing": ("book/scale_out",)}
API_PAGE = "api"
# Generated fragments that prose pages include (```{include}```), written beside the staged pages.
PAPER_PRESET_FRAGMENT = "paper_preset.md"  # included by book/scale_out.md
TOC_HEADER = "# Generated from gradpath_lib.experiments.chapters() by gradpath_lib.book.toc_yaml; do not edit.\n"
ANNOUNCEMENTS = {
    "smoke": ("SMOKE NUMBERS: this build shows the smoke reproduction (tiny generated data, CPU). "
              "It proves that every code path runs and says nothing about the paper's claims."),
    "mini": "Numbers from the mini scale (CIFAR-10 / CIFAR-Det on one GPU); see Reproducing this book.",
    "paper": "Numbers from the paper scale (ImageNet / MS COCO settings); see Reproducing this book.",
}
SMOKE, SMOKE_DEVICE = "smoke", "cpu"  # the reproduction a book without mini results runs first
API_MODULES = ("gradpath_lib",)  # the package whose public functions the API page lists


def choose_scale(results_dir: str | Path = "results", scale: str | None = None) -> str:
    """`scale` if given, else mini when `<results_dir>/mini/notebooks` holds a page, else smoke."""
    if scale is not None:
        return check_scale(scale)
    mini_pages = Path(results_dir) / "mini" / "notebooks"
    return "mini" if any(mini_pages.glob("*.ipynb")) else "smoke"


def toc_yaml(chapter_names: Sequence[str]) -> str:
    """The table of contents: the prose opening, the chapters in book order (with their prose
    sections), then the API page."""
    files = [*PROSE_BEFORE, *(f"book/chapters/{name}" for name in chapter_names), f"book/chapters/{API_PAGE}"]
    return TOC_HEADER + f"format: jb-book\nroot: {ROOT_PAGE}\nchapters:\n" + "".join(map(_toc_entry, files))


def _toc_entry(file: str) -> str:
    sections = CHAPTER_SECTIONS.get(Path(file).name, ()) if file.startswith("book/chapters/") else ()
    listed = "".join(f"  - file: {section}\n" for section in sections)
    return f"- file: {file}\n" + (f"  sections:\n{listed}" if sections else "")


def full_toc_yaml() -> str:
    """The table of contents of every registered chapter that has a notebook (= `_toc.yml`)."""
    return toc_yaml([c.name for c in select_chapters()])


def stage_pages(results_dir: str | Path, scale: str) -> list[str]:
    """Copy the executed notebooks of `scale` into book/chapters/; the chapter names, book order."""
    if PAGES_DIR.exists():
        shutil.rmtree(PAGES_DIR)
    PAGES_DIR.mkdir(parents=True)
    staged = []
    for chap in chapters():
        page = executed_notebook(results_dir, scale, chap.name)
        if page.exists():
            shutil.copyfile(page, PAGES_DIR / page.name)
            staged.append(chap.name)
    (PAGES_DIR / f"{API_PAGE}.md").write_text(api_markdown())
    (PAGES_DIR / PAPER_PRESET_FRAGMENT).write_text(paper_preset_markdown())
    return staged


def paper_preset_markdown() -> str:
    """The paper preset's costs beside the official ones (`paper_preset_comparison`), as a Markdown table."""
    from .detection_tables import paper_preset_comparison

    frame = paper_preset_comparison()
    formats = {"ΔFLOPs": "{:+.1%}", "params (M)": "{:.2f}", "GFLOPs": "{:.1f}"}
    for column in frame.columns:
        shown = next((f for key, f in formats.items() if key in column), None)
        if shown is not None:
            frame[column] = ["—" if pd.isna(v) else shown.format(v).replace("-", "\u2212") for v in frame[column]]
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"


def api_markdown() -> str:
    """The API reference page: every public module's docstring and its public functions/classes."""
    lines = ["# API reference", "",
             "Every public function and class of `gradpath_lib`, with its signature and the first "
             "paragraph of its docstring (generated from the code).", ""]
    package = importlib.import_module(API_MODULES[0])
    names = sorted(m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
                   if not any(part.startswith("_") for part in m.name.split(".")))
    for name in names:
        module = importlib.import_module(name)
        members = [(n, obj) for n, obj in vars(module).items()
                   if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                   and getattr(obj, "__module__", None) == name]
        if not members:
            continue
        lines += [f"## `{name}`", "", _summary(module), ""]
        for member_name, obj in members:
            lines += [f"- `{member_name}{_signature(obj)}`: {_summary(obj)}"]
        lines.append("")
    return "\n".join(lines)


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj)).replace("`", "'")
    except (TypeError, ValueError):
        return ""


def _summary(obj: object) -> str:
    """The first paragraph of `obj`'s docstring on one line (its code spans kept, a `<` outside
    them escaped: Markdown would read `<name>` as HTML)."""
    doc = (inspect.getdoc(obj) or "").strip()
    parts = " ".join(doc.split("\n\n")[0].split()).split("`")
    return "`".join(part if k % 2 else part.replace("<", "\\<") for k, part in enumerate(parts))


def build_config(scale: str, folder: Path) -> Path:
    """The top-level `_config.yml` plus the scale's announcement, written into `folder`."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    config.setdefault("html", {})["announcement"] = ANNOUNCEMENTS[scale]
    extensions = config.get("sphinx", {}).get("local_extensions", {})  # relative to the repository, not to `folder`
    config.get("sphinx", {})["local_extensions"] = {name: str(REPO_ROOT / path) for name, path in extensions.items()}
    path = folder / "_config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_book(scale: str | None = None, *, results_dir: str | Path = "results", jobs: int | None = 1,
               output_dir: str | Path | None = None) -> int:
    """Build `<output_dir>/_build/html` (default: the repository root; see the module docstring); 0 when
    the reproduction and the build succeeded. `jobs` of the smoke reproduction: None for as many as the
    recorded `gradpath bench jobs` of the CPU found best."""
    output_dir = REPO_ROOT if output_dir is None else Path(output_dir)
    chosen = choose_scale(results_dir, scale)
    reproduced_ok = True
    if chosen == SMOKE:
        why = "" if scale == SMOKE else "no mini-scale results; "
        print(f"gradpath book: {why}running the smoke reproduction first (CPU, minutes)")
        if jobs is None:
            from .bench_jobs import recommended_jobs

            jobs, reason = recommended_jobs(results_dir, SMOKE, SMOKE_DEVICE)
            print(f"gradpath book: --jobs auto = {jobs} ({reason})")
        reports = reproduce(SMOKE, jobs=jobs, device=SMOKE_DEVICE, results_dir=results_dir)
        print(summary_frame(reports).to_string(index=False))
        reproduced_ok = succeeded(reports)
    staged = stage_pages(results_dir, chosen)
    if not staged:
        raise GradpathError(f"no executed notebooks in {Path(results_dir) / chosen / 'notebooks'}; "
                            f"run `gradpath reproduce --scale {chosen}` first")
    generated = Path(output_dir) / "_build" / "gradpath"  # this build's toc and config
    generated.mkdir(parents=True, exist_ok=True)
    toc = generated / "_toc.yml"
    toc.write_text(toc_yaml(staged))
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(REPO_ROOT),
               "--toc", str(toc), "--config", str(build_config(chosen, generated)), "--path-output",
               str(output_dir), "-W", "-n", "--keep-going", "--all"]
    built = subprocess.run(command, cwd=REPO_ROOT).returncode == 0
    print(f"gradpath book: {'built' if built else 'FAILED to build'} {Path(output_dir) / '_build' / 'html'} "
          f"from the {chosen} scale ({len(staged)} chapters)")
    return 0 if built and reproduced_ok else 1
