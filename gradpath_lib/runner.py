"""The batch reproduction behind `gradpath reproduce`: train what the chapters need, then execute
their notebooks with papermill in dependency order, and summarise.

1. **Runs.** Every run the selected chapters need is ensured first (`run_pool.ensure_runs`: cached
   records reused, missing ones trained `jobs` at a time across processes), seed by seed
   (`training_order`): every chapter's seed-0 runs, then every seed-1 run, and so on. A batch cut
   short by a time limit (a GPU lent for minutes) thus leaves every chapter with some seeds rather
   than some chapters with all of them. `--runs-only` stops here, so a GPU machine with only
   PyTorch can train everything (papermill is imported only in step 2).
2. **Notebooks.** `notebooks/<name>.ipynb` is executed with `allow_train=False` (its runs are
   recorded by then) into `<results_dir>/<scale>/notebooks/<name>.ipynb`; notebooks whose
   dependencies are done run in parallel (`jobs` processes). A notebook that fails does not stop
   the others (those that depend on it are skipped); the summary names its failing cell.

**Resuming.** An executed notebook is written under a temporary name and renamed when it
succeeds; beside it, `<name>.inputs.json` holds a fingerprint (sha256) of everything it was made
from: the source notebook, its parameters, the record files of its runs (or their absence), the
executed notebooks of the chapters it depends on, every record and bench of the scale for a
chapter that reads them all (`Chapter.reads_all_results`: the reproducing chapter), and the
library's source code. A chapter counts as done when its executed notebook exists and its recorded
fingerprint equals the current one, so a rerun after a kill (or after new runs were recorded)
redoes exactly what is missing or stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import GradpathError
from .executors import make_executor
from .experiments import Chapter, chapter, chapters, default_seeds
from .run_pool import CACHED, FAILED, MISSING, TRAINED, RunOutcome, ensure_runs, weights_still_needed
from .runs import normalize_config
from .scales import check_scale
from .store import REPO_ROOT, atomic_write_bytes, record_path, run_id, runs_dir
from .tables import output_dir

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
LIBRARY_DIR = REPO_ROOT / "gradpath_lib"
KERNEL = "python3"
MAX_ERROR_CHARS = 160  # of a failed run's error in the summary table
# The kernel logs only what is critical: otherwise every notebook prints ipykernel's warning about
# its local TCP transport, and at times "KeyboardInterrupt caught in kernel" when papermill's
# shutdown interrupts it once the notebook is done. A cell's error and a dead kernel still reach
# the report through papermill.
KERNEL_QUIET = ["--IPKernelApp.log_level=CRITICAL"]
DONE, UP_TO_DATE, FAILED_NB, SKIPPED, RUNS_ONLY = "executed", "up to date", "failed", "skipped", "runs only"


@dataclass
class ChapterReport:
    """One line of the summary: a chapter's notebook status, its runs and its time."""

    name: str
    status: str = ""
    runs: dict[str, int] = field(default_factory=dict)  # cached / trained / missing / failed counts
    seconds: float = 0.0
    error: str = ""


def source_notebook(name: str) -> Path:
    """`notebooks/<name>.ipynb`, the source of chapter `name`."""
    return NOTEBOOKS_DIR / f"{name}.ipynb"


def executed_notebook(results_dir: str | Path, scale: str, name: str) -> Path:
    """`<results_dir>/<scale>/notebooks/<name>.ipynb`, the executed page of chapter `name`."""
    return Path(results_dir) / scale / "notebooks" / f"{name}.ipynb"


def select_chapters(only: Sequence[str] | None = None) -> list[Chapter]:
    """The chapters with a notebook, in book order: all, or `only` plus what they depend on."""
    available = [c for c in chapters() if source_notebook(c.name).exists()]
    if not only:
        return available
    wanted: set[str] = set()
    stack = list(only)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack += chapter(name).depends_on  # chapter() rejects unknown names, listing the valid ones
    lacking = sorted(wanted - {c.name for c in available})
    if lacking:
        raise GradpathError(f"chapter(s) {lacking} have no notebook yet; chapters with a notebook: "
                            f"{', '.join(c.name for c in available)}")
    return [c for c in available if c.name in wanted]


def reproduce(
    scale: str,
    *,
    only: Sequence[str] | None = None,
    jobs: int = 1,
    device: str = "auto",
    train: bool = True,
    runs_only: bool = False,
    results_dir: str | Path = "results",
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    time_limit_s: float | None = None,
) -> list[ChapterReport]:
    """Ensure the runs of the selected chapters, then (unless `runs_only`) execute their notebooks,
    on this machine or (`executor="ray"`) as tasks of the Ray cluster at `address`. With
    `time_limit_s`, no run starts after that many seconds (running ones finish; see `ensure_runs`)."""
    deadline = None if time_limit_s is None else time.time() + time_limit_s
    check_scale(scale)
    selected = select_chapters(only)
    seeds = default_seeds(scale)
    reports = {c.name: ChapterReport(c.name) for c in selected}
    configs = {c.name: c.runs(scale, seeds) for c in selected}
    wanted = training_order([cfg for c in selected for cfg in configs[c.name]])
    outcomes = ensure_runs(wanted, results_dir=results_dir, allow_train=train, device=device, jobs=jobs,
                           progress=progress, executor=executor, address=address, deadline=deadline)
    by_id = {_run_id(o.config): o for o in outcomes}
    for c in selected:
        chapter_outcomes = [by_id[_run_id(cfg)] for cfg in configs[c.name]]
        sources = [o.source for o in chapter_outcomes]
        reports[c.name].runs = {s: sources.count(s) for s in (CACHED, TRAINED, MISSING, FAILED)}
        reports[c.name].error = first_run_error(chapter_outcomes)
    if runs_only:
        for report in reports.values():
            report.status = RUNS_ONLY
    else:
        _execute_all(selected, scale, seeds, device, jobs, Path(results_dir), reports, progress, executor, address)
    return [reports[c.name] for c in selected]


def first_run_error(outcomes: Sequence[RunOutcome]) -> str:
    """'<run id>: <first line of its error>' of the first failed run (shortened), '' if none failed."""
    failed = [o for o in outcomes if o.source == FAILED]
    if not failed:
        return ""
    line = (failed[0].error or "no error recorded").strip().splitlines()[0]
    text = f"{_run_id(failed[0].config)}: {line}"
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def training_order(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`configs` seed by seed (stable: book order within a seed); a run that studies a trained
    `target` (probes, spectra) counts with its target's seed."""
    return sorted(configs, key=lambda config: config.get("target", config)["seed"])


def pending_weights(scale: str, results_dir: str | Path = "results") -> list[Path]:
    """The saved weights that runs of the book still missing at `scale` will need (`weights_still_needed`)."""
    seeds = default_seeds(scale)
    return weights_still_needed([cfg for c in select_chapters() for cfg in c.runs(scale, seeds)], results_dir)


def _run_id(config: dict[str, Any]) -> str:
    return run_id(normalize_config(config))


def fingerprint(chap: Chapter, scale: str, seeds: list[int], results_dir: Path, parameters: dict[str, Any]) -> str:
    """sha256 of everything an executed notebook is made from (see the module docstring)."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}:{len(data)}:".encode())
        digest.update(data)

    add("source", source_notebook(chap.name).read_bytes())
    add("parameters", json.dumps(parameters, sort_keys=True).encode())
    for config in chap.runs(scale, seeds):
        path = record_path(results_dir, normalize_config(config))
        add(f"record {path.name}", path.read_bytes() if path.exists() else b"absent")
    for dep in chap.depends_on:
        path = executed_notebook(results_dir, scale, dep)
        add(f"dependency {dep}", path.read_bytes() if path.exists() else b"absent")
    if chap.reads_all_results:
        for folder in (runs_dir(results_dir, scale), Path(results_dir) / scale / "bench"):
            for path in sorted(folder.glob("*.json")):
                add(f"result {folder.name}/{path.name}", path.read_bytes())
    for path in sorted(LIBRARY_DIR.rglob("*.py")):
        add(f"library {path.relative_to(LIBRARY_DIR).as_posix()}", path.read_bytes())
    return digest.hexdigest()


def _inputs_file(results_dir: Path, scale: str, name: str) -> Path:
    return executed_notebook(results_dir, scale, name).with_suffix(".inputs.json")


def is_done(chap: Chapter, scale: str, seeds: list[int], results_dir: Path, parameters: dict[str, Any]) -> bool:
    """True when the executed notebook exists and was made from exactly the current inputs."""
    inputs = _inputs_file(results_dir, scale, chap.name)
    if not (executed_notebook(results_dir, scale, chap.name).exists() and inputs.exists()):
        return False
    try:
        recorded = json.loads(inputs.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # a damaged fingerprint file only means: execute again
    return recorded == fingerprint(chap, scale, seeds, results_dir, parameters)


def notebook_parameters(scale: str, seeds: list[int], device: str, results_dir: Path) -> dict[str, Any]:
    """The papermill parameters of a batch execution: render recorded runs only."""
    return {"scale": scale, "seeds": seeds, "device": device, "allow_train": False, "jobs": 1,
            "results_dir": os.path.relpath(results_dir.resolve(), REPO_ROOT)}


def _execute_all(selected: list[Chapter], scale: str, seeds: list[int], device: str, jobs: int,
                 results_dir: Path, reports: dict[str, ChapterReport], progress: bool,
                 executor: str = "local", address: str | None = None) -> None:
    """Execute the notebooks in dependency order, `jobs` at a time, recording each outcome."""
    parameters = notebook_parameters(scale, seeds, device, results_dir)
    output_dir(results_dir, scale, "notebooks")
    pending = {c.name: c for c in selected}
    running: dict[Future, Chapter] = {}
    bar = tqdm(total=len(selected), desc="notebooks", unit="nb", disable=not progress)

    def finish(name: str, status: str, error: str = "", seconds: float = 0.0) -> None:
        reports[name].status, reports[name].seconds = status, seconds
        reports[name].error = error or reports[name].error  # a notebook's error, else its first failed run's
        bar.update()

    pool, _ = make_executor(executor, jobs=jobs, device="cpu", address=address)  # notebooks never train
    with pool:
        while pending or running:
            for name, chap in list(pending.items()):
                deps = [reports[d].status if d in reports else SKIPPED for d in chap.depends_on]
                if "" in deps:  # a dependency has not finished yet
                    continue
                del pending[name]
                if any(d in (FAILED_NB, SKIPPED) for d in deps):
                    finish(name, SKIPPED, "a chapter it depends on failed")
                elif is_done(chap, scale, seeds, results_dir, parameters):
                    finish(name, UP_TO_DATE)
                else:
                    made_from = fingerprint(chap, scale, seeds, results_dir, parameters)
                    running[pool.submit(execute_notebook, name, scale, parameters, str(results_dir.resolve()),
                                        made_from)] = chap
            if not running:
                if pending:
                    raise GradpathError(f"chapters {sorted(pending)} depend on each other in a cycle")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                chap = running.pop(future)
                status, error, seconds = future.result()
                finish(chap.name, status, error, seconds)
    bar.close()


def execute_notebook(name: str, scale: str, parameters: dict[str, Any], results_dir: str,
                     made_from: str) -> tuple[str, str, float]:
    """Execute one chapter notebook with papermill: (status, failing cell and error, seconds).
    On success the `fingerprint` of its inputs, `made_from`, is recorded first and the notebook
    moved into place last, so that a process killed at any moment leaves either the finished
    page with its fingerprint or no page (executed again next time), never a page that looks
    made from other inputs."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    final = executed_notebook(results_dir, scale, name)
    partial = final.with_name(f".{name}.partial.ipynb")
    failed = final.with_name(f"{name}.failed.ipynb")
    final.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(source_notebook(name)), str(partial), parameters=parameters,
                                   kernel_name=KERNEL, cwd=str(REPO_ROOT), progress_bar=False,
                                   extra_arguments=KERNEL_QUIET)
    except PapermillExecutionError as err:
        os.replace(partial, failed)
        final.unlink(missing_ok=True)
        return FAILED_NB, f"cell {err.cell_index} (exec {err.exec_count}): {err.ename}: {err.evalue} -> {failed}", \
            time.perf_counter() - start
    except Exception as err:  # the kernel died or could not start: still a failed notebook
        partial.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        return FAILED_NB, f"{type(err).__name__}: {err}", time.perf_counter() - start
    final.unlink(missing_ok=True)
    atomic_write_bytes(_inputs_file(Path(results_dir), scale, name), json.dumps({"fingerprint": made_from}).encode())
    os.replace(partial, final)
    failed.unlink(missing_ok=True)
    return DONE, "", time.perf_counter() - start


def summary_frame(reports: Sequence[ChapterReport]) -> Any:
    """The summary table (a DataFrame): chapter, status, runs trained/cached/missing/failed, time."""
    import pandas as pd

    return pd.DataFrame([{
        "chapter": r.name, "status": r.status,
        **{k: r.runs.get(k, 0) for k in (TRAINED, CACHED, MISSING, FAILED)},
        "time (s)": round(r.seconds, 1), "error": r.error,
    } for r in reports])


def succeeded(reports: Sequence[ChapterReport]) -> bool:
    """True when no notebook failed or was skipped and no run failed."""
    return all(r.status in (DONE, UP_TO_DATE, RUNS_ONLY) and not r.runs.get(FAILED) for r in reports)
