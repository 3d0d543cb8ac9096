"""What every chapter notebook calls first: `setup(...)` checks the papermill parameters (a bad
value fails at once, listing the valid ones), resolves the seeds, and shows a banner saying
which scale, hardware and code the numbers come from, and whether they are smoke numbers.

    ctx = setup("table2", scale=scale, seeds=seeds, device=device, allow_train=allow_train,
                jobs=jobs, results_dir=results_dir)
    runs = ctx.collect()            # recorded runs; trains the missing ones if allow_train
    frame = tables.runs_frame(runs, metrics={"top1": "test_top1"})
    ctx.save_table(table, "table2") # <results_dir>/<scale>/tables/table2.csv
    ctx.save_figure(fig, "fig4")    # <results_dir>/<scale>/figures/fig4.png
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import GradpathError, check_choice
from .experiments import Chapter, chapter, default_seeds, no_runs
from .run_pool import MISSING, RunOutcome, ensure_runs
from .runs import resolve_device
from .scales import check_scale
from .store import device_name, git_commit
from .tables import Run, output_dir

SCALE_NOTES = {
    "smoke": ("**SMOKE NUMBERS.** Tiny generated data and tiny networks trained for seconds on a "
              "CPU: they prove that every code path runs and say nothing about the paper's claims."),
    "mini": ("Mini scale: CIFAR-10 (or CIFAR-Det) on one GPU, several seeds; small enough to "
             "rerun, large enough to answer the paper's qualitative questions."),
    "paper": "Paper scale: the paper's ImageNet / MS COCO settings.",
}
UNTRAINED_NOTE = ("Nothing on this page is trained: what it shows is computed exactly from the networks and "
                  "data themselves, at the sizes the page gives, and involves no accuracy.")
FIGURE_DPI = 150  # sharp enough for the book, small enough for git


@dataclass(frozen=True)
class Setup:
    """A chapter's checked parameters, and where its runs, tables and figures live."""

    chapter: Chapter
    scale: str
    seeds: list[int]
    device: str
    allow_train: bool
    jobs: int
    results_dir: Path

    def configs(self) -> list[dict[str, Any]]:
        """The run configs this chapter needs at this scale and these seeds."""
        return self.chapter.runs(self.scale, self.seeds)

    def collect(self, configs: Sequence[dict[str, Any]] | None = None) -> list[Run]:
        """`(config, record or None)` for the chapter's runs (or `configs`), training the missing
        ones if `allow_train`; shows where the records come from and which are missing."""
        outcomes = ensure_runs(list(self.configs() if configs is None else configs),
                               results_dir=self.results_dir, allow_train=self.allow_train,
                               device=self.device, jobs=self.jobs)
        show_markdown(provenance_note(outcomes, self.allow_train))
        return [(o.config, o.record) for o in outcomes]

    def save_table(self, table: Any, name: str) -> Path:
        """Write a DataFrame to `<results_dir>/<scale>/tables/<name>.csv`."""
        from .tables import save_table

        return save_table(table, self.results_dir, self.scale, name)

    def save_figure(self, figure: Any, name: str) -> Path:
        """Save a matplotlib figure to `<results_dir>/<scale>/figures/<name>.png`."""
        path = output_dir(self.results_dir, self.scale, "figures") / f"{name}.png"
        figure.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        return path


def setup(
    chapter_name: str,
    *,
    scale: str = "smoke",
    seeds: Iterable[int] | int | None = None,
    device: str = "auto",
    allow_train: bool = False,
    jobs: int = 1,
    results_dir: str | Path = "results",
    choices: Mapping[str, tuple[Any, Sequence[Any]]] | None = None,
) -> Setup:
    """Check a notebook's parameters and show its banner.

    `choices` checks the notebook's own parameters: {name: (value, valid values)}.
    """
    ctx = Setup(
        chapter=chapter(chapter_name),
        scale=check_scale(scale),
        seeds=check_seeds(seeds, scale),
        device=_check_device(device),
        allow_train=_check_bool("allow_train", allow_train),
        jobs=_check_jobs(jobs),
        results_dir=Path(results_dir),
    )
    for name, (value, valid) in (choices or {}).items():
        check_choice(f"value for parameter {name}", value, valid)
    show_markdown(banner(ctx))
    return ctx


def _bad(name: str, value: Any, valid: str) -> Any:
    raise GradpathError(f"bad value for parameter {name}: {value!r}; valid values: {valid}")


def check_seeds(seeds: Iterable[int] | int | None, scale: str) -> list[int]:
    """None => the scale's default seeds; else a non-empty list of distinct non-negative ints."""
    if seeds is None:
        return default_seeds(scale)
    values = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    valid = f"None (the scale's default seeds) or a list of distinct non-negative ints such as {default_seeds(scale)}"
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return _bad("seeds", seeds, valid)
    values = list(values)
    if not values or len(set(values)) != len(values) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
        return _bad("seeds", seeds, valid)
    return values


def _check_device(device: str) -> str:
    if not isinstance(device, str):
        return _bad("device", device, "auto, cpu, cuda, cuda:N")
    resolve_device(device)  # raises for unknown devices or CUDA without a GPU
    return device


def _check_bool(name: str, value: Any) -> bool:
    return value if isinstance(value, bool) else _bad(name, value, "True, False")


def _check_jobs(jobs: Any) -> int:
    if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1:
        return jobs
    return _bad("jobs", jobs, "an int >= 1")


def banner(ctx: Setup) -> str:
    """Markdown: chapter, scale (with the smoke warning, or for a chapter that trains nothing
    `UNTRAINED_NOTE`), this machine and code, seeds, training."""
    here = device_name(resolve_device(ctx.device))
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    training = ("on: missing runs are trained here" if ctx.allow_train
                else "off: only recorded runs are shown")
    untrained = ctx.chapter.runs is no_runs and not ctx.chapter.reads_all_results
    note = UNTRAINED_NOTE if untrained else SCALE_NOTES[ctx.scale]
    return "\n".join([
        f"> **{ctx.chapter.title}** · scale `{ctx.scale}` · seeds {ctx.seeds} · training {training}",
        ">",
        f"> {note}",
        ">",
        f"> Rendered {when} on {here} with gradpath {__version__} (commit `{git_commit()[:12]}`), "
        f"torch {torch.__version__}.",
    ])


def provenance_note(outcomes: Sequence[RunOutcome], allow_train: bool) -> str:
    """Markdown: how many runs are recorded, on which hardware and code, and which are missing."""
    records = [o.record for o in outcomes if o.record is not None]
    counts = {s: sum(o.source == s for o in outcomes) for s in ("cached", "trained", MISSING, "failed")}
    lines = [f"**Runs:** {len(outcomes)} needed · " + " · ".join(f"{n} {s}" for s, n in counts.items() if n)]
    if records:
        prov = [r.get("provenance", {}) for r in records]
        lines.append("**Numbers from:** " + "; ".join(_distinct(
            f"{p.get('device_name')} (torch {p.get('torch')}, CUDA {p.get('cuda')}, "
            f"commit `{str(p.get('git_commit'))[:12]}`)" for p in prov)))
        datasets = _distinct(str(p.get("dataset_sha256"))[:12] for p in prov if p.get("dataset_sha256"))
        if datasets:
            lines.append("**Dataset sha256:** " + ", ".join(f"`{d}…`" for d in datasets))
        if len(datasets) > 1:
            lines.append("**Warning: these runs were trained on different copies of the data** (above); "
                         "their numbers are not comparable. Retrain the odd ones with `gradpath train --force` "
                         "on one copy (`GRADPATH_DATA`).")
    absent = [o for o in outcomes if o.source in (MISSING, "failed")]
    text = "\n\n".join(lines)
    if absent:
        how = ("they failed to train: see the errors below" if allow_train else
               "rerun with `allow_train=True`, or `gradpath reproduce --runs-only`, to train them")
        text += f"\n\n**Not shown ({len(absent)} runs):** {how}.\n\n" + "\n".join(
            f"- `{o.config['model']}` seed {o.config['seed']}: {o.source}" + (f" ({o.error})" if o.error else "")
            for o in absent)
    return text


def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


VERDICT_COLOURS = {"reproduced": "#d8f0d8", "not reproduced": "#f6d5d5", "inconclusive": "#eeeeee"}
WIDE_TABLE_COLUMNS = 10  # from this many columns on, `show_table` uses WIDE_TABLE_FONT
WIDE_TABLE_FONT = "0.75em"


def show_table(table: Any) -> None:
    """Display a DataFrame without its index; a `verdict` column is coloured by verdict; a table of
    `WIDE_TABLE_COLUMNS` columns or more in a smaller font, so that it fits the page."""
    if not _in_notebook():
        print(table.to_string(index=False))
        return
    from IPython.display import display

    styled = table.style.hide(axis="index").format(readable_number, na_rep="—")
    if len(table.columns) >= WIDE_TABLE_COLUMNS:
        styled = styled.set_table_styles([{"selector": "", "props": [("font-size", WIDE_TABLE_FONT)]}])
    if "verdict" in table.columns:
        styled = styled.map(lambda v: f"background-color: {VERDICT_COLOURS.get(v, 'transparent')}",
                            subset=["verdict"])
    display(styled)


def readable_number(value: Any) -> Any:
    """A float as a reader wants it (four significant digits, thousands separated); other values as they are."""
    if not isinstance(value, float) or value != value:
        return value
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def show_markdown(text: str) -> None:
    """Display Markdown in a notebook (plain text elsewhere)."""
    if _in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(text))
    else:
        print(text)
