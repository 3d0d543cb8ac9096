"""Where source data is found (`GRADPATH_DATA`) and where decoded caches go (`GRADPATH_CACHE`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import GradpathError

DATA_ENV = "GRADPATH_DATA"
CACHE_ENV = "GRADPATH_CACHE"
USER_CACHE_DIR = "~/.cache/gradpath"


def user_cache_dir() -> Path:
    """The per-user directory used when no environment variable says otherwise."""
    return Path(os.path.expanduser(USER_CACHE_DIR))


def data_dir() -> Path:
    """The directory holding source archives: `$GRADPATH_DATA`, else the user cache directory."""
    value = os.environ.get(DATA_ENV)
    if not value:
        return user_cache_dir()
    path = Path(value)
    if path.is_file():
        raise GradpathError(
            f"{DATA_ENV} names a file ({path}); set it to the folder holding it ({path.resolve().parent})"
        )
    return path


def is_writable(path: Path) -> bool:
    """Whether files can be created under `path` (its nearest existing ancestor must be a folder that allows it).

    The owner-write bit is checked as well as `os.access`, so a folder marked read-only is
    respected even by root, for whom `os.access` always says yes.
    """
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            return False
        existing = existing.parent
    mode = existing.stat().st_mode
    return stat.S_ISDIR(mode) and os.access(existing, os.W_OK) and bool(mode & stat.S_IWUSR)


def cache_dir() -> Path:
    """Where decoded arrays go: `$GRADPATH_CACHE`, else `<data dir>/cache` if writable, else the user cache."""
    value = os.environ.get(CACHE_ENV)
    if value:
        return Path(value)
    beside_data = data_dir() / "cache"
    return beside_data if is_writable(beside_data) else user_cache_dir() / "cache"
