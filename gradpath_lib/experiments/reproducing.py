"""The closing chapter "Reproducing this book": what every chapter ran, where and how long."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..run_pool import recorded
from . import Chapter, chapters, no_runs, register_chapter

REPRODUCING_ORDER = 990  # after every other chapter


def chapter_costs(scale: str, seeds: list[int], results_dir: str | Path) -> pd.DataFrame:
    """Per chapter: runs needed and recorded, training time (sum of the records' wall times),
    the devices and code commits the records come from."""
    rows = []
    for chap in chapters():
        configs = chap.runs(scale, seeds)
        if not configs:
            continue
        records = [r for r in (recorded(c, results_dir) for c in configs) if r is not None]
        prov = [r.get("provenance", {}) for r in records]
        rows.append({
            "chapter": chap.title,
            "runs needed": len(configs),
            "recorded": len(records),
            "diverged": sum(r["status"] == "diverged" for r in records),
            "failed": sum(r["status"] == "failed" for r in records),
            "training time (min)": round(sum(r.get("wall_time_s") or 0 for r in records) / 60, 2),
            "devices": ", ".join(sorted({str(p.get("device_name")) for p in prov})),
            "torch": ", ".join(sorted({str(p.get("torch")) for p in prov})),
            "commits": ", ".join(sorted({str(p.get("git_commit"))[:12] for p in prov})),
        })
    return pd.DataFrame(rows)


register_chapter(Chapter("reproducing", "Reproducing this book", no_runs, REPRODUCING_ORDER,
                         reads_all_results=True))
