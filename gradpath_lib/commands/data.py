"""`gradpath data fetch|check|build`: get, inspect and decode the datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.builders import BUILDERS
from ..data.cifar10 import (
    BINARY_ARCHIVE,
    CifarSource,
    KNOWN_SOURCES,
    cached_split_sizes,
    decoded_cache_path,
    find_sources,
)
from ..data.checksums import file_checksum
from ..data.fetch import CIFAR10_MD5, CIFAR10_URL, fetch_cifar10
from ..data.paths import cache_dir, data_dir, is_writable
from ..data.smoke import SMOKE_SIZES
from ..scales import SCALES

FETCHABLE = ("cifar10",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath data` and its three actions."""
    parser = subparsers.add_parser("data", help="fetch, check and decode datasets")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download the official CIFAR-10 archive into the data dir")
    fetch.add_argument("name", choices=FETCHABLE, help="the dataset")
    fetch.add_argument("--url", default=CIFAR10_URL, help="where to download from (default: the official site)")
    fetch.set_defaults(func=run_fetch)
    check = actions.add_parser("check", help="say which data is present, its checksums and decoded caches")
    check.set_defaults(func=run_check)
    build = actions.add_parser("build", help="decode or generate a dataset into the cache")
    build.add_argument("name", choices=sorted(BUILDERS), help="the dataset")
    build.add_argument("--scale", choices=SCALES, default="mini",
                       help="the scale whose version of it to build (default: %(default)s)")
    build.set_defaults(func=run_build)


def run_fetch(args: argparse.Namespace) -> int:
    """Download and verify the CIFAR-10 binary archive."""
    path = fetch_cifar10(args.url, CIFAR10_MD5)
    print(f"{path}: md5 {CIFAR10_MD5} verified")
    return 0


def _describe_source(source: CifarSource) -> list[str]:
    sha256 = source.sha256
    lines = [f"  {source.path.name}{'/' if source.path.is_dir() else ''}: sha256 {sha256}"]
    if sha256 in KNOWN_SOURCES:
        lines.append(f"    known source ({KNOWN_SOURCES[sha256]})")
    if source.path.name == BINARY_ARCHIVE:
        ok = file_checksum(source.path, "md5") == CIFAR10_MD5
        lines.append(f"    md5 {'matches' if ok else 'DIFFERS from'} the published {CIFAR10_MD5}")
    sizes = cached_split_sizes(sha256)
    if sizes is None:
        lines.append("    decoded cache: none yet (`gradpath data build cifar10` makes it)")
    else:
        counts = ", ".join(f"{split} {n}" for split, n in sizes.items())
        lines.append(f"    decoded cache: {decoded_cache_path(sha256)} ({counts})")
    return lines


def _folder_state(directory: Path) -> str:
    """Whether the data dir is missing (and whether `data fetch` can create it), writable or read-only."""
    writable = is_writable(directory)
    if not directory.exists():
        return "does not exist; `gradpath data fetch cifar10` creates it" if writable else "does not exist"
    return "writable" if writable else "read-only"


def run_check(args: argparse.Namespace) -> int:
    """Print what data is available; exit 1 if no CIFAR-10 source is found."""
    directory = data_dir()
    print(f"data dir:  {directory} ({_folder_state(directory)})")
    print(f"cache dir: {cache_dir()}")
    sources = find_sources(directory)
    print("smoke: generated on the fly (" + ", ".join(f"{s} {n}" for s, n in SMOKE_SIZES.items()) + ")")
    if not sources:
        print("CIFAR-10: not found; run `gradpath data fetch cifar10` or set GRADPATH_DATA")
        return 1
    print("CIFAR-10 sources (the first is used):")
    for source in sources:
        print("\n".join(_describe_source(source)))
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Build one dataset for a scale and print where it is."""
    path = BUILDERS[args.name](args.scale)
    print(f"{args.name} ({args.scale}): {path}")
    return 0
