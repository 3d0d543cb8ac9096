"""Checksums of data files and folders, streamed in chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

CHUNK_BYTES = 1 << 20


def _hash_stream(chunks: Iterator[bytes], algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


@lru_cache(maxsize=16)
def _cached_file_checksum(path: Path, algorithm: str, size: int, mtime_ns: int) -> str:
    return _hash_stream(_file_chunks(path), algorithm)


def file_checksum(path: Path, algorithm: str = "sha256") -> str:
    """The checksum of a file (remembered while the file's size and mtime stay the same)."""
    stat = path.stat()
    return _cached_file_checksum(path.resolve(), algorithm, stat.st_size, stat.st_mtime_ns)


def tree_sha256(folder: Path) -> str:
    """The sha256 of a folder: each file's relative path and contents, in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    def chunks() -> Iterator[bytes]:
        for path in files:
            yield path.relative_to(folder).as_posix().encode() + b"\0"
            yield from _file_chunks(path)

    return _hash_stream(chunks(), "sha256")
