"""CIFAR-10 from the official binary archive or from an archive/folder of images, decoded once.

Sources are looked up in the data directory (`paths.data_dir`) in the order of
`accepted_names()`. The first one found is decoded with Pillow (or parsed, for the binary
archive; nothing is ever unpickled) into uint8 arrays (N, 32, 32, 3) plus int64 labels, and
cached as `<cache dir>/cifar10-<sha256 prefix>.npz`, so later loads read the cache.
"""

from __future__ import annotations

import io
import lzma
import re
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import GradpathError, check_choice
from ..store import atomic_write_bytes
from .checksums import CHUNK_BYTES, file_checksum, tree_sha256
from .dataset import SPLITS, ImageDataset
from .paths import DATA_ENV, cache_dir, data_dir

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE = (32, 32, 3)
SPLIT_SIZES = {"train": 50_000, "test": 10_000}  # images per split (equal per class)

BINARY_ARCHIVE = "cifar-10-binary.tar.gz"
BINARY_BATCHES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
BINARY_RECORD_BYTES = 1 + 32 * 32 * 3  # one label byte, then the image as CHW
IMAGE_SOURCE_STEMS = ("cifar10-jpeg", "cifar10-png", "cifar10")
IMAGE_SOURCE_SUFFIXES = (".tar.xz", ".tar.gz", ".tar", ".zip", "")  # "" = a plain folder
IMAGE_MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)\.(jpe?g|png)$", re.IGNORECASE)
# Sources whose content is known: sha256 -> what it is (shown in `source` strings and records).
KNOWN_SOURCES = {
    "40018c4988ba5c3d6dc7ffa3770d18459599d3c5ce27fa139a8dcff040451741": "JPEG q75",
}
# What a damaged archive or image raises while being read.
READ_ERRORS = (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error, ValueError)


@dataclass(frozen=True)
class CifarSource:
    """A CIFAR-10 source file or folder in the data directory."""

    path: Path
    kind: str  # "binary" or "images"

    @property
    def sha256(self) -> str:
        """The sha256 of the archive (of every relative path and file, for a folder)."""
        return tree_sha256(self.path) if self.path.is_dir() else file_checksum(self.path)


def accepted_names() -> list[str]:
    """The source names looked for in the data directory, in order of preference."""
    images = [stem + (suffix or "/") for stem in IMAGE_SOURCE_STEMS for suffix in IMAGE_SOURCE_SUFFIXES]
    return [BINARY_ARCHIVE, *images]


def find_sources(directory: Path | None = None) -> list[CifarSource]:
    """Every CIFAR-10 source present in `directory` (default: the data dir), preferred first."""
    directory = data_dir() if directory is None else directory
    found = []
    for name in accepted_names():
        path = directory / name.rstrip("/")
        if path.is_dir() if name.endswith("/") else path.is_file():
            found.append(CifarSource(path, "binary" if name == BINARY_ARCHIVE else "images"))
    return found


def missing_data_error(directory: Path) -> GradpathError:
    """The error for a data directory without any CIFAR-10 source."""
    return GradpathError(
        f"no CIFAR-10 data in {directory} (set {DATA_ENV} to change it); looked for: "
        f"{', '.join(accepted_names())}. Run `gradpath data fetch cifar10` to download the "
        "official binary archive there"
    )


def _as_dataset_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64)


def _tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file in a (compressed) tar archive, read front to back.

    The compressed stream is then read to its end, so that a truncated archive or one whose
    checksum fails raises (tarfile alone stops quietly at the first unreadable header).
    """
    with tarfile.open(path, "r:*") as tar:
        for member in tar:  # members in order: only forward seeks, which .xz needs to be fast
            if member.isfile():
                yield member.name, tar.extractfile(member).read()
        while tar.fileobj.read(CHUNK_BYTES):
            pass


def read_binary_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse the official `cifar-10-binary.tar.gz` into {split: (images NHWC, labels)}."""
    batches: dict[str, bytes] = {}
    wanted = {name for names in BINARY_BATCHES.values() for name in names}
    for member_name, data in _tar_members(path):
        name = Path(member_name).name
        if name in wanted:
            batches[name] = data
    missing = sorted(wanted - set(batches))
    if missing:
        raise GradpathError(f"{path} lacks {', '.join(missing)}; is it the official {BINARY_ARCHIVE}?")
    arrays = {}
    for split, names in BINARY_BATCHES.items():
        raw = b"".join(batches[name] for name in names)
        if len(raw) % BINARY_RECORD_BYTES:
            raise GradpathError(f"{path}: {split} batches are not whole {BINARY_RECORD_BYTES}-byte records")
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, BINARY_RECORD_BYTES)
        images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        arrays[split] = _as_dataset_arrays(images, records[:, 0])
    return arrays


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(relative name, bytes) of every file in a tar/zip archive or folder, read in one pass."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield file.relative_to(path).as_posix(), file.read_bytes()
    elif path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, archive.read(info)
    else:
        yield from _tar_members(path)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"))
    if array.shape != IMAGE_SHAPE:
        raise GradpathError(f"{where} is {array.shape[1]}x{array.shape[0]}, expected 32x32")
    return array


def read_image_tree(path: Path, progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode a `train|test/<class>/<n>.<jpg|png>` archive or folder into {split: (images, labels)}.

    Classes follow the standard CIFAR-10 order; images within a class are ordered by the
    number in their file stem.
    """
    found: dict[str, dict[tuple[int, int], np.ndarray]] = {split: {} for split in SPLITS}
    total = sum(SPLIT_SIZES.values())
    with tqdm(total=total, desc=f"decoding {path.name}", unit="img", disable=not progress) as bar:
        for name, data in _archive_members(path):
            match = IMAGE_MEMBER.search(name)
            if not match:
                continue
            split, class_name, stem, _ = match.groups()
            where = f"{path} member {name}"
            check_choice(f"CIFAR-10 class folder in {where}:", class_name, CIFAR10_CLASSES)
            if not stem.isdigit():
                raise GradpathError(f"{where}: file stem {stem!r} is not a number")
            key = (CIFAR10_CLASSES.index(class_name), int(stem))
            if key in found[split]:
                raise GradpathError(f"{where}: image number {int(stem)} appears twice")
            found[split][key] = _decode_image(data, where)
            bar.update()
    arrays = {}
    for split, images in found.items():
        keys = sorted(images)
        _check_class_counts(path, split, [k[0] for k in keys])
        stacked = np.stack([images[k] for k in keys]) if keys else np.zeros((0, *IMAGE_SHAPE), np.uint8)
        arrays[split] = _as_dataset_arrays(stacked, np.array([k[0] for k in keys]))
    return arrays


def _check_class_counts(path: Path, split: str, labels: list[int]) -> None:
    per_class = SPLIT_SIZES[split] // len(CIFAR10_CLASSES)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(CIFAR10_CLASSES))
    if (counts != per_class).any():
        listed = ", ".join(f"{c}={n}" for c, n in zip(CIFAR10_CLASSES, counts))
        raise GradpathError(f"{path}: {split} should hold {per_class} images per class, found {listed}")


def _check_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    expected = (SPLIT_SIZES[split], *IMAGE_SHAPE)
    if images.shape != expected or images.dtype != np.uint8:
        raise GradpathError(f"{path}: {split} images are {images.dtype} {images.shape}, expected uint8 {expected}")
    if labels.shape != (expected[0],) or labels.dtype != np.int64 or (labels >= len(CIFAR10_CLASSES)).any():
        raise GradpathError(f"{path}: {split} labels are not {expected[0]} int64 values in 0..9")


def _source_format(source: CifarSource, sha256: str) -> str:
    if sha256 in KNOWN_SOURCES:
        return KNOWN_SOURCES[sha256]
    return "official binary" if source.kind == "binary" else "images"


def _decode_source(source: CifarSource, progress: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every split of `source`, or raise an error naming the damaged file."""
    try:
        if source.kind == "binary":
            arrays = read_binary_archive(source.path)
        else:
            arrays = read_image_tree(source.path, progress)
    except GradpathError:
        raise  # already names the file and what is wrong with it
    except READ_ERRORS as err:
        raise GradpathError(f"cannot read CIFAR-10 source {source.path} (truncated or corrupted?): {err}") from err
    for split, (images, labels) in arrays.items():
        _check_split(source.path, split, images, labels)
    return arrays


def decoded_cache_path(sha256: str) -> Path:
    """Where the decoded arrays of the source with checksum `sha256` are cached."""
    return cache_dir() / f"cifar10-{sha256[:16]}.npz"


def _read_cache(path: Path, sha256: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The cached arrays, or None (with a warning) if the cache is damaged or from another source."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            cached_sha256 = str(cache["sha256"])
            arrays = {s: (cache[f"{s}_images"], cache[f"{s}_labels"]) for s in SPLITS}
        if cached_sha256 != sha256:
            raise GradpathError(f"it was decoded from source {cached_sha256}")
        for split, (images, labels) in arrays.items():
            _check_split(path, split, images, labels)
    except (*READ_ERRORS, KeyError) as err:  # READ_ERRORS include GradpathError (a ValueError)
        warnings.warn(f"decoded CIFAR-10 cache {path} is unusable ({err}); decoding the source again")
        return None
    return arrays


def _write_cache(path: Path, sha256: str, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    buffer = io.BytesIO()
    named = {f"{s}_{k}": a for s, (img, lab) in arrays.items() for k, a in (("images", img), ("labels", lab))}
    np.savez(buffer, sha256=np.array(sha256), **named)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        raise GradpathError(f"cannot write the decoded CIFAR-10 cache {path}: {err}; set GRADPATH_CACHE") from err


def cached_split_sizes(sha256: str) -> dict[str, int] | None:
    """Images per split in the decoded cache of source `sha256`, or None if there is no usable one."""
    path = decoded_cache_path(sha256)
    arrays = _read_cache(path, sha256) if path.exists() else None
    return None if arrays is None else {split: len(labels) for split, (_, labels) in arrays.items()}


def load_cifar10_arrays(progress: bool = True) -> dict[str, ImageDataset]:
    """Both CIFAR-10 splits {"train", "test"} from the preferred source, decoding it once."""
    sources = find_sources()
    if not sources:
        raise missing_data_error(data_dir())
    source = sources[0]
    sha256 = source.sha256
    path = decoded_cache_path(sha256)
    arrays = _read_cache(path, sha256) if path.exists() else None
    if arrays is None:
        arrays = _decode_source(source, progress)
        _write_cache(path, sha256, arrays)
    description = f"{source.path.name} ({_source_format(source, sha256)})"
    return {
        split: ImageDataset(images, labels, CIFAR10_CLASSES, description, sha256)
        for split, (images, labels) in arrays.items()
    }
