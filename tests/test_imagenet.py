"""ImageNet streamed from class folders: listing, views, per-epoch reproducibility, rank shares, a paper-style
run through ensure_run with resume, and clear errors for a bad layout (on a tiny generated folder)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gradpath_lib import distributed
from gradpath_lib.data import load_classification
from gradpath_lib.data.imagenet import (
    CROP_RATIO,
    CROP_SCALE,
    CROP_SIZE,
    load_imagenet,
    random_resized_box,
)
from gradpath_lib.distributed import World
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import registry
from gradpath_lib.runs import ensure_run, normalize_config
from gradpath_lib.store import checkpoint_path, load_checkpoint, record_path
from gradpath_lib.train import classify
from gradpath_lib.train.batches import LOADER_WORKERS_ENV as WORKERS_ENV
from gradpath_lib.train.batches import epoch_generator, loader_workers
from gradpath_lib.train.classify import classify_config, strip_timing

from conftest import fit_interrupted_after

WNIDS = ("n01440764", "n01443537", "n01484850")  # written in this order; classes are their sorted order
# (width, height) of each class's images: smaller and larger than the 224 crop, tall and wide.
TRAIN_SIZES = ((48, 64), (300, 200), (120, 300), (320, 256), (64, 48), (224, 224))
VAL_SIZES = ((320, 256), (90, 150))  # the first already has a 256 shorter side: its eval view is a plain crop
CPU = torch.device("cpu")
MODEL = "tiny-imagenet-net"
BATCH = 6


class TinyImageNetNet(nn.Module):
    """conv-BN-ReLU with stride 4, global pool, linear: a 224 px classifier that trains in milliseconds."""

    def __init__(self, num_classes: int, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=4, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def write_image(path: Path, size: tuple[int, int], colour: int, rng: np.random.Generator) -> None:
    """A noisy image whose dominant channel is `colour` (so the class is learnable)."""
    width, height = size
    pixels = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
    pixels[..., colour] += 150
    Image.fromarray(pixels).save(path)


def write_imagenet(root: Path) -> Path:
    """`root/imagenet/{train,val}/<wnid>/` with JPEG (some `.jpg`) and PNG images and one non-image file."""
    rng = np.random.default_rng(0)
    folder = root / "imagenet"
    for split, sizes in (("train", TRAIN_SIZES), ("val", VAL_SIZES)):
        for colour, wnid in enumerate(WNIDS):
            (folder / split / wnid).mkdir(parents=True)
            for n, size in enumerate(sizes):
                suffix = (".JPEG", ".jpg", ".png")[n % 3] if split == "train" else ".png"
                write_image(folder / split / wnid / f"{wnid}_{n}{suffix}", size, colour, rng)
    (folder / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def imagenet(tmp_path, monkeypatch) -> Path:
    """The tiny layout under a fresh GRADPATH_DATA, decoded in the training process (0 workers)."""
    monkeypatch.setenv("GRADPATH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv(WORKERS_ENV, "0")
    return write_imagenet(tmp_path / "data")


@pytest.fixture
def tiny_model(monkeypatch):
    registry.model_names()
    monkeypatch.setitem(registry._REGISTRY, MODEL, registry.ModelEntry(
        MODEL, TinyImageNetNet, "test", presets={"paper": {"num_classes": len(WNIDS)}}))


def pixels_of(x: torch.Tensor, data) -> np.ndarray:
    """Normalized NCHW batch -> uint8 NHWC pixels."""
    return (x * data.std + data.mean).mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_loader_lists_sorted_classes_labels_and_a_listing_checksum(imagenet):
    train, val, dataset = load_imagenet(CPU)
    assert (len(train), len(val)) == (len(WNIDS) * len(TRAIN_SIZES), len(WNIDS) * len(VAL_SIZES))
    listing = train.images.listing
    assert listing.classes == tuple(sorted(WNIDS))
    for name, label in zip(listing.files.tolist(), listing.labels.tolist()):
        assert name.decode().split("/")[0] == listing.classes[label]
    assert not any(name.endswith(b".txt") for name in listing.files.tolist())
    assert dataset["name"] == "imagenet" and "imagenet/{train,val}" in dataset["source"]
    assert "18 train and 6 val images, 3 classes" in dataset["source"]
    assert load_imagenet(CPU)[2]["sha256"] == dataset["sha256"], "the same folder has the same checksum"
    some = imagenet / "val" / WNIDS[1] / f"{WNIDS[1]}_0.png"
    some.write_bytes(some.read_bytes() + b"\0")
    assert load_imagenet(CPU)[2]["sha256"] != dataset["sha256"], "a file of another size changes it"
    with pytest.raises(GradpathError, match="paper-scale .*streamed.*load_imagenet"):
        load_classification("imagenet", "train")


def test_eval_views_are_a_deterministic_resize_and_center_crop(imagenet):
    _, val, _ = load_imagenet(CPU)
    batches = list(val.rank_eval_batches(4))
    assert [x.shape for x, _ in batches] == [(4, 3, CROP_SIZE, CROP_SIZE), (2, 3, CROP_SIZE, CROP_SIZE)]
    again = list(val.rank_eval_batches(4))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again))
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == val.images.listing.labels.tolist()
    # The first val image is 320x256: resized to itself, its eval view is the central 224 square.
    with Image.open(imagenet / "val" / sorted(WNIDS)[0] / f"{sorted(WNIDS)[0]}_0.png") as image:
        raw = np.array(image.convert("RGB"))
    left, top = (320 - CROP_SIZE) // 2, (256 - CROP_SIZE) // 2
    assert np.array_equal(pixels_of(batches[0][0], val)[0], raw[top:top + CROP_SIZE, left:left + CROP_SIZE])


def test_train_epochs_are_reproducible_differ_across_epochs_and_ignore_the_worker_count(imagenet):
    train, _, _ = load_imagenet(CPU)

    def epoch(n: int, data=train, crop_padding: int = 4, flip: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(data.rank_train_batches(BATCH, epoch_generator(0, n), crop_padding, flip))

    first = epoch(0)
    assert len(first) == len(train) // BATCH and all(x.shape == (BATCH, 3, CROP_SIZE, CROP_SIZE) for x, _ in first)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(train.images.listing.labels.tolist())
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(first, epoch(0)))
    assert not torch.equal(first[0][0], epoch(1)[0][0]), "another epoch draws other crops"
    two_workers, _, _ = load_imagenet(CPU, workers=2)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, epoch(0, two_workers)))
    # crop_padding 0 and no flip: every training view is the image's evaluation view, in the epoch's order
    order = torch.randperm(len(train), generator=epoch_generator(0, 0))
    (plain, _), = epoch(0, crop_padding=0, flip=False)[:1]
    (views, _), = list(train.rank_eval_batches(len(train)))
    assert torch.equal(plain, views[order[:BATCH]])


def test_random_resized_boxes_stay_inside_with_the_recipes_area_and_ratio():
    rng = np.random.default_rng(0)
    for width, height in ((48, 300), (300, 48), (224, 224), (500, 375), (7, 5)):
        for _ in range(200):
            left, top, right, bottom = random_resized_box(width, height, rng)
            w, h = right - left, bottom - top
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            slack = 1 / min(w, h)  # the sides are whole pixels; the central fallback clamps the ratio too
            assert CROP_RATIO[0] - slack <= w / h <= CROP_RATIO[1] + slack
    areas = []
    for _ in range(500):
        left, top, right, bottom = random_resized_box(500, 375, rng)
        areas.append((right - left) * (bottom - top) / (500 * 375))
    assert CROP_SCALE[0] - 0.01 <= min(areas) < 0.2 and 0.8 < max(areas) <= CROP_SCALE[1]


def test_ranks_decode_their_contiguous_share_of_every_global_batch(imagenet, monkeypatch):
    train, val, _ = load_imagenet(CPU)
    whole = list(train.rank_train_batches(BATCH, epoch_generator(3, 1), 4, True))
    whole_eval = torch.cat([y for _, y in val.rank_eval_batches(4)])
    shares, eval_parts = [], []
    for rank in range(2):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: World(rank=rank, size=2))
        shares.append(list(train.rank_train_batches(BATCH, epoch_generator(3, 1), 4, True)))
        eval_parts.append(torch.cat([y for _, y in val.rank_eval_batches(4)]))
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([shares[0][step][0], shares[1][step][0]]), x)
        assert torch.equal(torch.cat([shares[0][step][1], shares[1][step][1]]), y)
    assert torch.equal(torch.cat(eval_parts), whole_eval)


def paper_config(**overrides) -> dict:
    return classify_config(MODEL, "paper", 0, epochs=2, batch_size=BATCH, eval_batch_size=4, **overrides)


def test_a_paper_style_run_trains_records_its_data_and_resumes_to_the_same_record(
        imagenet, tiny_model, tmp_path, monkeypatch):
    config = paper_config()
    assert config["data"] == "imagenet"
    record = ensure_run(config, results_dir=tmp_path / "clean", device="cpu", progress=False)
    assert record["status"] == "ok" and record["metrics"]["epochs_done"] == 2
    assert all(math.isfinite(e["train_loss"]) and 0 <= e["test_acc"] <= 1 for e in record["metrics"]["history"])
    assert record["metrics"]["history"][0]["train_images"] == (len(WNIDS) * len(TRAIN_SIZES) // BATCH) * BATCH
    sha = load_imagenet(CPU)[2]["sha256"]
    assert record["dataset"]["sha256"] == record["provenance"]["dataset_sha256"] == sha
    assert record["dataset"]["name"] == "imagenet" and "imagenet/{train,val}" in record["dataset"]["source"]
    assert str(tmp_path) not in json.dumps(record["dataset"])  # no machine path in a record
    assert record["flops"] > 0 and record["params"] == sum(p.numel() for p in TinyImageNetNet(3).parameters())

    resumed = tmp_path / "resumed"
    real_fit = classify.fit
    monkeypatch.setattr(classify, "fit", fit_interrupted_after(real_fit, 1))
    with pytest.raises(KeyboardInterrupt):
        ensure_run(config, results_dir=resumed, device="cpu", progress=False)
    saved = load_checkpoint(checkpoint_path(resumed, normalize_config(config)))
    assert len(saved["history"]) == 1
    monkeypatch.setattr(classify, "fit", real_fit)
    again = ensure_run(config, results_dir=resumed, device="cpu", progress=False)
    assert again["metrics"]["history"][0] == saved["history"][0], "epoch 1 came from the checkpoint"
    assert strip_timing(again["metrics"]) == strip_timing(record["metrics"])
    assert again["dataset"] == record["dataset"]


def test_missing_or_malformed_layouts_give_errors_naming_the_folder(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("GRADPATH_DATA", str(tmp_path / "empty"))
    config = paper_config()
    with pytest.raises(GradpathError, match=r"(?s)not readable under .*empty/imagenet.*missing folder .*imagenet/val"):
        ensure_run(config, results_dir=tmp_path / "results", device="cpu", progress=False)
    assert not record_path(tmp_path / "results", normalize_config(config)).exists()

    root = write_imagenet(tmp_path / "bad")
    (root / "val" / WNIDS[2]).rename(root / "val" / "n99999999")
    for image in (root / "train" / WNIDS[1]).iterdir():
        image.unlink()
    with pytest.raises(GradpathError) as error:
        load_imagenet(CPU, root)
    message = str(error.value)
    assert "differ" in message and "n99999999" in message
    assert f"1 class folder(s) of {root / 'train'} hold no image" in message and WNIDS[1] in message


def test_an_unreadable_image_and_a_bad_worker_count_are_named(imagenet, monkeypatch):
    broken = imagenet / "train" / WNIDS[0] / "broken.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(GradpathError, match="broken.JPEG is not a readable image"):
        train, _, _ = load_imagenet(CPU)  # the layout check may sample it; else decoding the epoch finds it
        list(train.rank_eval_batches(BATCH))
    monkeypatch.setenv(WORKERS_ENV, "two")
    with pytest.raises(GradpathError, match=f"{WORKERS_ENV} must be a whole number .*'two'"):
        loader_workers()
