"""Run records: one JSON file per run, named by a hash of the run's complete config.

A record has the keys `run_id`, `config`, `status` (`ok` | `diverged` | `failed`), `metrics`,
`params`, `flops`, `wall_time_s` and `provenance`. Records and checkpoints are written atomically
(temporary file + rename), so a kill never leaves half a file behind.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .distributed import world
from .errors import GradpathError

STATUSES = ("ok", "diverged", "failed")
# Every record has these keys (DESIGN.md); `params` and `flops` are None in a failed record.
RECORD_KEYS = ("run_id", "config", "status", "metrics", "params", "flops", "wall_time_s", "provenance")
REPO_ROOT = Path(__file__).resolve().parent.parent


def run_id(config: dict[str, Any]) -> str:
    """A stable id for a config: its model name, seed and a hash of the canonical JSON."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return f"{config.get('model', 'run')}-s{config.get('seed', 0)}-{digest}"


def runs_dir(results_dir: str | Path, scale: str) -> Path:
    """Where the records of `scale` live: `<results_dir>/<scale>/runs/`."""
    return Path(results_dir) / scale / "runs"


def record_path(results_dir: str | Path, config: dict[str, Any]) -> Path:
    """The record file of `config` (which must name its `scale`)."""
    return runs_dir(results_dir, config["scale"]) / f"{run_id(config)}.json"


def checkpoint_path(results_dir: str | Path, config: dict[str, Any]) -> Path:
    """The resumable checkpoint of `config` (git-ignored)."""
    return Path(results_dir) / config["scale"] / "checkpoints" / f"{run_id(config)}.pt"


def weights_path(results_dir: str | Path, config: dict[str, Any]) -> Path:
    """The final weights of `config` (a state_dict, saved by runs that ask for it; git-ignored)."""
    return Path(results_dir) / config["scale"] / "weights" / f"{run_id(config)}.pt"


class WriteError(GradpathError, OSError):
    """A file could not be written: one line for the CLI, and still an OSError for callers that catch those."""


# The permissions a new file gets before the umask, as open() gives them (mkstemp gives 0o600).
NEW_FILE_MODE = 0o666
PROC_STATUS = Path("/proc/self/status")  # Linux: has a `Umask:` line (kernel 4.7+)


def current_umask() -> int:
    """The process umask, read from /proc where it can be (without changing it), else set and restored."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_target(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` for the body to fill; renamed onto `path` if the body ends
    normally (with the umask's permissions, like any new file), removed in any case.

    An OSError (an unwritable folder, a full disk) becomes a `WriteError` naming `path`.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, NEW_FILE_MODE & ~current_umask())
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err}") from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    with atomic_target(path) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomically write a run record (keys sorted, so diffs stay readable)."""
    if record.get("status") not in STATUSES:
        raise GradpathError(f"record status {record.get('status')!r} is not one of {STATUSES}")
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a record, or raise an error naming the file if it is unreadable or incomplete."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise corrupted_record_error(path, str(err)) from err
    problem = _record_problem(record)
    if problem:
        raise corrupted_record_error(path, problem)
    return record


def _record_problem(record: Any) -> str | None:
    """What makes parsed JSON not a record (not an object, keys missing, unknown status), or None."""
    if not isinstance(record, dict):
        return "it is not a JSON object"
    missing = set(RECORD_KEYS) - set(record)
    if missing:
        return f"missing {sorted(missing)}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {STATUSES}"
    return None


def corrupted_record_error(path: Path, problem: str) -> GradpathError:
    """The error for an unusable record: what is wrong, and how to get the run trained again."""
    return GradpathError(
        f"corrupted run record {path}: {problem}. It is never overwritten: move it away (e.g. rename it to "
        f"{path.name}.corrupt) and the run is trained again the next time it is needed"
    )


def set_aside(path: Path) -> Path:
    """Rename an unreadable file to the first free `<name>.corrupt[.N]` beside it (never overwriting)."""
    target = path.with_suffix(".corrupt")
    n = 1
    while target.exists():
        target = path.with_suffix(f".corrupt.{n}")
        n += 1
    path.rename(target)
    return target


def iter_records(results_dir: str | Path, scale: str) -> list[dict[str, Any]]:
    """Every record of `scale` (a corrupted one raises an error naming it)."""
    folder = runs_dir(results_dir, scale)
    return [load_record(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a training state with torch.save."""
    with atomic_target(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state at `path` (weights only), None if there is none, or a clear error."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise GradpathError(
            f"corrupted checkpoint {path}: {err}. Delete it to restart that run from scratch"
        ) from err


def resume_state(path: Path | None) -> dict[str, Any] | None:
    """`load_checkpoint(path)` for a run about to train (None when `path` is None); rank 0 says on
    stderr that the run resumes and from how many finished epochs."""
    state = None if path is None else load_checkpoint(path)
    if state is not None and world().is_main:
        phase = f" of its {state['phase']} phase" if "phase" in state else ""
        print(f"gradpath: resuming {path.stem} from its checkpoint: {len(state['history'])} epoch(s){phase} done",
              file=sys.stderr)
    return state


def git_commit() -> str:
    """The library's git commit (with '+dirty' for uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "gradpath_lib"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """A human-readable name of the device a run used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"


def provenance(device: torch.device, dataset_sha256: str | None) -> dict[str, Any]:
    """Where and with what a run was made (the end time is added by the runner)."""
    return {
        "library_version": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": device_name(device),
        "processes": world().size,  # data-parallel ranks that trained the run (torch.distributed)
        "dataset_sha256": dataset_sha256,
        "hostname": platform.node(),
        "start_time": now_iso(),
    }


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
