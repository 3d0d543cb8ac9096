"""`gradpath data fetch cifar10`: download the official binary archive and verify its md5."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import GradpathError
from ..store import atomic_target
from .checksums import CHUNK_BYTES, file_checksum
from .cifar10 import BINARY_ARCHIVE
from .paths import data_dir, is_writable

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on the CIFAR-10 page
DOWNLOAD_TIMEOUT_S = 60


def _download(url: str, dest: Path, progress: bool) -> None:
    """Stream `url` into `dest`, with a progress bar."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {url}", disable=not progress) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))


def check_url(url: str) -> None:
    """Raise a GradpathError unless urllib can parse `url` (it needs a scheme such as https://)."""
    try:
        urllib.request.Request(url)
    except ValueError as err:
        raise GradpathError(f"cannot download {url!r}: {err}; give a full URL such as {CIFAR10_URL}") from err


def fetch_cifar10(
    url: str = CIFAR10_URL, md5: str = CIFAR10_MD5, directory: Path | None = None, progress: bool = True
) -> Path:
    """Download `url` to `<data dir>/cifar-10-binary.tar.gz` unless a verified copy is there.

    The file appears only once complete and verified (temporary file + rename); a checksum
    mismatch or a network failure raises a GradpathError and leaves nothing behind.
    """
    check_url(url)
    directory = data_dir() if directory is None else directory
    target = directory / BINARY_ARCHIVE
    if target.is_file() and file_checksum(target, "md5") == md5:
        return target
    if not is_writable(directory):
        raise GradpathError(f"data directory {directory} is not writable; set GRADPATH_DATA to a writable one")
    with atomic_target(target, suffix=".part") as tmp:
        try:
            _download(url, tmp, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise GradpathError(
                f"could not download {url} ({reason}); are you offline? You can also download it "
                f"by hand and put it in {directory} as {BINARY_ARCHIVE}"
            ) from err
        got = file_checksum(tmp, "md5")
        if got != md5:
            raise GradpathError(f"download of {url} has md5 {got}, expected {md5}; nothing was saved, try again")
    return target
