"""`gradpath data build NAME --scale S`: dataset builders that decode/generate and cache data.

`BUILDERS` maps a dataset name to `build(scale) -> Path` (the file it made or reused). To add a
dataset, import its builder here and add one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..scales import check_scale
from .cifar10 import decoded_cache_path, load_cifar10_arrays
from .cifar_det import build_cifar_det


def build_cifar10(scale: str) -> Path:
    """Decode CIFAR-10 into its cache (once; every scale uses the same arrays) and return the cache."""
    check_scale(scale)
    train = load_cifar10_arrays()["train"]
    return decoded_cache_path(train.sha256)


BUILDERS: dict[str, Callable[[str], Path]] = {
    "cifar10": build_cifar10,
    "cifar-det": build_cifar_det,
}
