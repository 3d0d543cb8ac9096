"""CIFAR-10 readers, decoded cache, fetch, smoke data and `gradpath data` (all on tiny files)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gradpath_lib.cli import main
from gradpath_lib.data import (
    CIFAR10_CLASSES,
    ImageDataset,
    cache_dir,
    data_dir,
    dataset_for_scale,
    load_classification,
    make_smoke,
)
from gradpath_lib.data import cifar10
from gradpath_lib.data.fetch import fetch_cifar10
from gradpath_lib.errors import GradpathError

TINY_SIZES = {"train": 20, "test": 10}  # two train and one test image per class
SMOKE_EPOCHS = 4  # enough for the tiny convnet below to pass 60% on smoke data in ~1 s
JPEG_TOLERANCE = 3  # a flat JPEG block decodes within a few levels of its value
SHARED_ARCHIVE = "cifar10-jpeg.tar.xz"
SHARED_SHA256 = "40018c4988ba5c3d6dc7ffa3770d18459599d3c5ce27fa139a8dcff040451741"
REAL_DATA_DIR = os.environ.get("GRADPATH_DATA")  # read before any test changes it


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the data and cache directories into tmp_path and shrink CIFAR-10 to TINY_SIZES."""
    monkeypatch.setenv("GRADPATH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GRADPATH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10, "SPLIT_SIZES", TINY_SIZES)
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def tiny_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat images, each a distinct grey level, with labels in class-major order."""
    n = TINY_SIZES[split]
    labels = np.repeat(np.arange(10), n // 10).astype(np.int64)
    levels = 5 + 12 * np.arange(n) + (0 if split == "train" else 3)
    images = np.broadcast_to(levels[:, None, None, None], (n, 32, 32, 3)).astype(np.uint8)
    return images, labels


def add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file named `name` holding `data` to an open tar archive."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_binary_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A cifar-10-binary.tar.gz with the official byte layout; train split over 5 batches."""
    arrays = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, names in cifar10.BINARY_BATCHES.items():
            images, labels = tiny_split(split)
            rng = np.random.default_rng(0)
            images = images.copy()
            images[:, 0, :, 0] = rng.integers(0, 256, (len(images), 32))  # make channels differ
            perm = rng.permutation(len(labels))  # the official files interleave classes
            images, labels = images[perm], labels[perm]
            chw = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
            records = np.concatenate([labels[:, None].astype(np.uint8), chw], axis=1)
            for name, chunk in zip(names, np.array_split(records, len(names))):
                add_to_tar(tar, f"cifar-10-batches-bin/{name}", chunk.tobytes())
            arrays[split] = (images, labels)
    return arrays


STEMS = ("9", "10")  # numeric order differs from string order


def image_files(ext: str, size: int = 32) -> dict[str, bytes]:
    """{relative path: encoded bytes} of a train|test/<class>/<n>.<ext> tree of tiny_split images."""
    files = {}
    for split in ("train", "test"):
        images, labels = tiny_split(split)
        per_class = TINY_SIZES[split] // 10
        for i, (image, label) in enumerate(zip(images, labels)):
            buffer = io.BytesIO()
            Image.fromarray(image[:size, :size]).save(buffer, format="JPEG" if ext == "jpg" else "PNG")
            files[f"{split}/{CIFAR10_CLASSES[label]}/{STEMS[i % per_class]}.{ext}"] = buffer.getvalue()
    return files


def write_tree(path: Path, files: dict[str, bytes]) -> None:
    """Write `files` as a folder, a .zip or a tar archive, chosen by the name of `path`."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    elif ".tar" in path.name:
        with tarfile.open(path, "w:" + path.name.split(".tar")[1].lstrip(".")) as tar:
            for name, data in files.items():
                add_to_tar(tar, name, data)
    else:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)


def test_binary_archive_is_parsed_in_file_order(env: Path) -> None:
    expected = write_binary_archive(env / "cifar-10-binary.tar.gz")
    for split in ("train", "test"):
        data = load_classification("cifar10", split)
        np.testing.assert_array_equal(data.images, expected[split][0])
        np.testing.assert_array_equal(data.labels, expected[split][1])
        assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
        assert data.classes == CIFAR10_CLASSES
        assert data.source == "cifar-10-binary.tar.gz (official binary)"
        assert data.sha256 == hashlib.sha256((env / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name, ext",
    [("cifar10-png", "png"), ("cifar10-jpeg", "jpg"), ("cifar10-png.tar.xz", "png"),
     ("cifar10-jpeg.tar.xz", "jpg"), ("cifar10.zip", "png"), ("cifar10.tar.gz", "jpg")],
)
def test_image_tree_readers(env: Path, name: str, ext: str) -> None:
    path = env / name
    if "." not in name:
        path.mkdir()
    write_tree(path, image_files(ext))
    for split in ("train", "test"):
        data = load_classification("cifar10", split)
        images, labels = tiny_split(split)
        np.testing.assert_array_equal(data.labels, labels)  # standard class order
        tolerance = JPEG_TOLERANCE if ext == "jpg" else 0
        # flat grey levels identify each image: numeric stem order (9 before 10) is kept
        assert np.abs(data.images.astype(int) - images).max() <= tolerance
        assert data.source == f"{name} (images)"


def test_first_source_in_preference_order_wins(env: Path) -> None:
    write_tree(env / "cifar10-png.zip", image_files("png"))
    write_binary_archive(env / "cifar-10-binary.tar.gz")
    assert [s.path.name for s in cifar10.find_sources()] == ["cifar-10-binary.tar.gz", "cifar10-png.zip"]
    assert load_classification("cifar10", "test").source.startswith("cifar-10-binary.tar.gz")


def test_second_load_reads_the_cache(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(env / "cifar10-png.tar.xz", image_files("png"))
    first = load_classification("cifar10", "train")
    cache = cifar10.decoded_cache_path(first.sha256)
    assert cache.parent == env.parent / "cache" and cache.is_file()

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again although the cache exists")

    monkeypatch.setattr(cifar10, "_decode_source", no_decoding)
    second = load_classification("cifar10", "train")
    np.testing.assert_array_equal(first.images, second.images)
    assert second.sha256 == first.sha256


def test_damaged_cache_is_rebuilt_with_a_warning(env: Path) -> None:
    write_tree(env / "cifar10-png.zip", image_files("png"))
    first = load_classification("cifar10", "test")
    cifar10.decoded_cache_path(first.sha256).write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unusable"):
        again = load_classification("cifar10", "test")
    np.testing.assert_array_equal(first.images, again.images)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
@pytest.mark.parametrize(
    "name, ext", [("cifar10-jpeg.tar.xz", "jpg"), ("cifar10-png.zip", "png"), ("cifar-10-binary.tar.gz", None)]
)
def test_damaged_archive_names_the_file(env: Path, name: str, ext: str | None, damage: str) -> None:
    path = env / name
    if ext is None:
        write_binary_archive(path)
    else:
        write_tree(path, image_files(ext))
    data = path.read_bytes()
    half = len(data) // 2
    damaged = data[:half] if damage == "truncate" else data[:half] + bytes(64) + data[half + 64 :]
    path.write_bytes(damaged)
    with pytest.raises(GradpathError, match=f"{name}.*truncated or corrupted"):
        load_classification("cifar10", "train")


def test_wrong_image_size_and_count_are_reported(env: Path) -> None:
    files = image_files("png")
    files["train/cat/9.png"] = image_files("png", size=16)["train/cat/9.png"]
    write_tree(env / "cifar10-png.zip", files)
    with pytest.raises(GradpathError, match=r"cifar10-png.zip member train/cat/9.png is 16x16"):
        load_classification("cifar10", "train")
    del files["train/cat/9.png"]
    write_tree(env / "cifar10-png.zip", files)
    with pytest.raises(GradpathError, match=r"cifar10-png.zip: train should hold 2 images per class.*cat=1"):
        load_classification("cifar10", "train")


def test_binary_archive_with_too_few_images_is_reported(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_binary_archive(env / "cifar-10-binary.tar.gz")
    monkeypatch.setattr(cifar10, "SPLIT_SIZES", {"train": 30, "test": 10})
    with pytest.raises(GradpathError, match=r"cifar-10-binary.tar.gz: train images .*\(20, 32, 32, 3\), expected"):
        load_classification("cifar10", "test")


def test_unknown_class_folder_is_reported(env: Path) -> None:
    files = image_files("png")
    files["train/unicorn/1.png"] = files.pop("train/cat/9.png")
    write_tree(env / "cifar10-png.zip", files)
    with pytest.raises(GradpathError, match="unknown CIFAR-10 class folder.*'unicorn'.*airplane"):
        load_classification("cifar10", "train")


def test_missing_data_lists_what_was_searched(env: Path) -> None:
    with pytest.raises(GradpathError) as err:
        load_classification("cifar10", "train")
    message = str(err.value)
    for part in (str(env), "cifar-10-binary.tar.gz", "cifar10-jpeg.tar.xz", "gradpath data fetch cifar10"):
        assert part in message


def test_bad_names_are_rejected() -> None:
    with pytest.raises(GradpathError, match="valid choices: smoke, cifar10, imagenet"):
        load_classification("mnist", "train")
    with pytest.raises(GradpathError, match="valid choices: train, test"):
        load_classification("smoke", "val")
    with pytest.raises(GradpathError, match="paper-scale"):
        load_classification("imagenet", "train")
    assert [dataset_for_scale(s) for s in ("smoke", "mini", "paper")] == ["smoke", "cifar10", "imagenet"]
    with pytest.raises(GradpathError, match="valid choices: smoke, mini, paper"):
        dataset_for_scale("huge")


def test_cache_dir_falls_back_when_the_data_dir_is_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GRADPATH_CACHE", raising=False)
    monkeypatch.delenv("GRADPATH_DATA", raising=False)
    assert data_dir() == tmp_path / "home" / ".cache" / "gradpath"
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("GRADPATH_DATA", str(shared))
    assert cache_dir() == shared / "cache"
    shared.chmod(0o555)
    try:
        assert cache_dir() == tmp_path / "home" / ".cache" / "gradpath" / "cache"
    finally:
        shared.chmod(0o755)
    monkeypatch.setenv("GRADPATH_CACHE", "relative/cache")
    assert cache_dir() == Path("relative/cache")


def test_fetch_verifies_md5_and_leaves_nothing_on_mismatch(tmp_path: Path) -> None:
    source = tmp_path / "download.bin"
    source.write_bytes(b"pretend archive")
    target_dir = tmp_path / "data"
    with pytest.raises(GradpathError, match="md5 .* expected 0+"):
        fetch_cifar10(source.as_uri(), md5="0" * 32, directory=target_dir, progress=False)
    assert list(target_dir.iterdir()) == []  # no partial file, no target
    good_md5 = hashlib.md5(b"pretend archive").hexdigest()
    path = fetch_cifar10(source.as_uri(), md5=good_md5, directory=target_dir, progress=False)
    assert path == target_dir / "cifar-10-binary.tar.gz" and path.read_bytes() == b"pretend archive"
    with pytest.raises(GradpathError, match="could not download .*offline"):
        fetch_cifar10((tmp_path / "absent").as_uri(), directory=tmp_path / "other", progress=False)


def test_fetch_command_reports_a_bad_download_in_one_line(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "download.bin"
    source.write_bytes(b"not the CIFAR-10 archive")
    assert main(["data", "fetch", "cifar10", "--url", source.as_uri()]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # above the error line is only the download's progress bar
    assert err.splitlines()[-1].startswith("gradpath: error: download of")
    assert "expected c32a1d4ab5d03f1284b67883e8d87530" in err
    assert list(env.iterdir()) == []



def test_a_malformed_url_is_one_error_line_and_nothing_is_written(env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "fetch", "cifar10", "--url", "notaurl"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "gradpath: error: cannot download 'notaurl': unknown url type: 'notaurl'; give a full URL such as "
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    ]
    assert list(env.iterdir()) == []


def test_the_fetched_archive_honours_the_umask(tmp_path: Path) -> None:
    source = tmp_path / "download.bin"
    source.write_bytes(b"pretend archive")
    old = os.umask(0o022)
    try:
        path = fetch_cifar10(source.as_uri(), md5=hashlib.md5(b"pretend archive").hexdigest(),
                             directory=tmp_path / "data", progress=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_gradpath_data_naming_a_file_or_a_missing_folder_is_said_so(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    archive = env / SHARED_ARCHIVE
    archive.write_bytes(b"an archive")
    monkeypatch.setenv("GRADPATH_DATA", str(archive))
    assert main(["data", "check"]) == 2
    assert capsys.readouterr().err == (
        f"gradpath: error: GRADPATH_DATA names a file ({archive}); set it to the folder holding it ({env})\n"
    )
    missing = tmp_path / "missing"
    monkeypatch.setenv("GRADPATH_DATA", str(missing))
    assert main(["data", "check"]) == 1
    assert f"data dir:  {missing} (does not exist; `gradpath data fetch cifar10` creates it)" in capsys.readouterr().out

def test_smoke_data_is_deterministic_by_seed() -> None:
    a, b, other = make_smoke("train"), make_smoke("train"), make_smoke("train", seed=1)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.sha256 == b.sha256 != other.sha256
    assert not np.array_equal(a.images, other.images)
    assert a.images.shape == (512, 32, 32, 3) and a.images.dtype == np.uint8
    assert make_smoke("test").images.shape == (256, 32, 32, 3)
    assert np.bincount(a.labels).tolist() == [512 // 10 + (i < 512 % 10) for i in range(10)]
    assert not np.array_equal(make_smoke("test").images[:8], a.images[:8])




def test_smoke_data_is_learnable(one_thread: None) -> None:
    torch.manual_seed(0)
    train, test = load_classification("smoke", "train"), load_classification("smoke", "test")

    def tensors(data: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(data.labels)

    x, y = tensors(train)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(SMOKE_EPOCHS):
        for batch in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    tx, ty = tensors(test)
    accuracy = (model(tx).argmax(1) == ty).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


def test_data_check_and_build_commands(env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check"]) == 1
    assert "CIFAR-10: not found" in capsys.readouterr().out
    write_tree(env / "cifar10-png.zip", image_files("png"))
    sha256 = hashlib.sha256((env / "cifar10-png.zip").read_bytes()).hexdigest()
    assert main(["data", "check"]) == 0
    out = capsys.readouterr().out
    assert f"data dir:  {env} (writable)" in out and f"cifar10-png.zip: sha256 {sha256}" in out
    assert "decoded cache: none yet" in out
    assert main(["data", "build", "cifar10", "--scale", "mini"]) == 0
    cache = cifar10.decoded_cache_path(sha256)
    assert f"cifar10 (mini): {cache}" in capsys.readouterr().out and cache.is_file()
    assert main(["data", "check"]) == 0
    assert f"decoded cache: {cache} (train 20, test 10)" in capsys.readouterr().out


def test_binary_archive_md5_is_reported(env: Path, capsys: pytest.CaptureFixture) -> None:
    write_binary_archive(env / "cifar-10-binary.tar.gz")
    assert main(["data", "check"]) == 0
    assert "md5 DIFFERS from the published c32a1d4ab5d03f1284b67883e8d87530" in capsys.readouterr().out


@pytest.mark.skipif(
    not REAL_DATA_DIR or not (Path(REAL_DATA_DIR) / SHARED_ARCHIVE).is_file(),
    reason="GRADPATH_DATA does not hold the shared cifar10-jpeg.tar.xz",
)
def test_shared_archive_has_its_known_checksum() -> None:
    source = cifar10.find_sources(Path(REAL_DATA_DIR))[-1]
    assert source.path.name == SHARED_ARCHIVE
    assert source.sha256 == SHARED_SHA256
