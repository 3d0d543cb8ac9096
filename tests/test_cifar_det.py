"""CIFAR-Det generator: determinism, masks and boxes, occlusion bookkeeping, size ranges, caching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradpath_lib.data import load_classification
from gradpath_lib.data import cifar_det
from gradpath_lib.data.builders import BUILDERS
from gradpath_lib.data.cifar_det import (
    SETTINGS,
    PlacedObject,
    cifar_det_stats,
    composite,
    generate_cifar_det,
    load_cifar_det,
)
from gradpath_lib.data.dataset import ImageDataset
from gradpath_lib.data.detection import AREA_RANGES, area_range
from gradpath_lib.errors import GradpathError

SMOKE = SETTINGS["smoke"]


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    """A fresh cache directory for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cache")
        mp.setenv("GRADPATH_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def smoke_train(smoke_cache):
    return load_cifar_det("smoke", "train")


@pytest.fixture(scope="module")
def smoke_source():
    return load_classification("smoke", "train")


def _extent(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_same_seed_same_data_other_seed_differs(smoke_source):
    images, coco = generate_cifar_det(smoke_source, SMOKE, 6, seed=3, split="train")
    again_images, again_coco = generate_cifar_det(smoke_source, SMOKE, 6, seed=3, split="train")
    other_images, other_coco = generate_cifar_det(smoke_source, SMOKE, 6, seed=4, split="train")
    assert np.array_equal(images, again_images)
    assert json.dumps(coco) == json.dumps(again_coco)
    assert not np.array_equal(images, other_images)
    assert json.dumps(coco["annotations"]) != json.dumps(other_coco["annotations"])


def test_cache_reproduces_the_generator(smoke_train, smoke_source):
    images, coco = generate_cifar_det(smoke_source, SMOKE, dict(SMOKE.canvases)["train"], seed=0, split="train")
    assert np.array_equal(smoke_train.images, images)
    assert json.loads(smoke_train.annotation_file.read_text()) == coco
    reloaded = load_cifar_det("smoke", "train")
    assert np.array_equal(reloaded.images, smoke_train.images) and reloaded.sha256 == smoke_train.sha256


def test_dataset_shape_and_categories(smoke_train):
    count, canvas = dict(SMOKE.canvases)["train"], SMOKE.canvas
    assert smoke_train.images.shape == (count, canvas, canvas, 3) and smoke_train.images.dtype == np.uint8
    assert smoke_train.image_ids == list(range(1, count + 1))
    assert [c["id"] for c in smoke_train.categories] == list(range(1, 11))
    assert smoke_train.class_names == list(load_classification("smoke", "train").classes)
    assert load_cifar_det("smoke", "val").sha256 != smoke_train.sha256


def test_masks_boxes_and_areas_agree(smoke_train):
    annotations = json.loads(smoke_train.annotation_file.read_text())["annotations"]
    areas = [a["area"] for a in annotations]
    masks_seen = []
    for target in smoke_train.targets:
        masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
        assert 1 <= len(labels) <= SMOKE.max_objects and labels.dtype == np.int64
        assert masks.dtype == np.uint8 and boxes.dtype == np.float32
        assert masks.sum(0).max() <= 1, "visible masks of one canvas must not overlap"
        for mask, box in zip(masks, boxes):
            assert mask.sum() >= SMOKE.min_visible_area
            assert _extent(mask) == box.tolist(), "box must equal the mask's extent"
            x0, y0, x1, y1 = box.astype(int)
            assert mask[y0:y1, x0:x1].sum() == mask.sum(), "mask must lie inside its box"
            masks_seen.append(int(mask.sum()))
    assert masks_seen == areas, "annotation area must equal its mask's pixel count"


def _rect(top: int, left: int, height: int, width: int, label: int, value: int) -> PlacedObject:
    patch = np.full((height, width, 3), value, np.uint8)
    return PlacedObject(patch, np.ones((height, width), bool), top, left, label)


def test_occlusion_keeps_visible_parts_only():
    canvas = np.zeros((40, 40, 3), np.uint8)
    hidden = _rect(12, 12, 6, 6, label=0, value=10)  # later covered completely
    partial = _rect(0, 0, 10, 10, label=1, value=20)  # a quarter covered
    sliver = _rect(30, 30, 10, 10, label=2, value=30)  # only a 10x2 strip stays visible: dropped
    top = _rect(5, 5, 25, 25, label=3, value=40)
    bottom = _rect(30, 30, 10, 8, label=4, value=50)
    image, masks, labels = composite(canvas, [hidden, partial, sliver, top, bottom], min_visible_area=25)
    assert labels.tolist() == [1, 3, 4]
    assert masks.sum((1, 2)).tolist() == [100 - 25, 25 * 25, 80]
    assert not image[30:40, 38:40].any(), "a dropped object is not drawn"
    assert (image[masks[0]] == 20).all() and (image[masks[1]] == 40).all() and (image[masks[2]] == 50).all()
    assert not image[~masks.any(0)].any(), "pixels outside the visible masks stay background"
    _, _, kept_all = composite(canvas, [hidden, partial, sliver, top, bottom], min_visible_area=1)
    assert kept_all.tolist() == [1, 2, 3, 4], "only the fully covered object disappears at threshold 1"


def test_mini_settings_give_small_medium_and_large():
    rng = np.random.default_rng(0)
    noise = ImageDataset(rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), np.arange(50) % 10,
                         tuple(f"class{k}" for k in range(10)), "random noise", "0" * 64)
    images, coco = generate_cifar_det(noise, SETTINGS["mini"], 60, seed=0, split="val")
    assert images.shape == (60, 192, 192, 3)
    sizes = {area_range(a["area"]) for a in coco["annotations"]}
    assert sizes == set(AREA_RANGES)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools vs numpy 2
def test_json_loads_in_pycocotools(smoke_train):
    from pycocotools.coco import COCO

    coco = COCO(str(smoke_train.annotation_file))
    assert len(coco.getAnnIds()) == sum(len(t["labels"]) for t in smoke_train.targets)
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert np.array_equal(np.stack([coco.annToMask(a) for a in first]), smoke_train.targets[0]["masks"])


def test_stats_count_every_object(smoke_train):
    stats = cifar_det_stats(smoke_train)
    total = sum(len(t["labels"]) for t in smoke_train.targets)
    assert list(stats.index) == smoke_train.class_names + ["all"]
    assert list(stats.columns) == [*AREA_RANGES, "all"]
    assert stats.loc["all", "all"] == total
    labels = np.concatenate([t["labels"] for t in smoke_train.targets])
    assert stats["all"].iloc[:-1].tolist() == np.bincount(labels, minlength=10).tolist()


def test_sample_figure_has_one_panel_per_canvas(smoke_train):
    import matplotlib

    matplotlib.use("Agg")
    from gradpath_lib.data.detection_plots import plot_detection_samples

    fig = plot_detection_samples(smoke_train, count=6, columns=4)
    assert sum(bool(ax.images) for ax in fig.axes) == 6
    assert len(fig.axes[0].patches) == len(smoke_train.targets[0]["labels"])


def test_builder_and_bad_input(smoke_train):
    assert BUILDERS["cifar-det"]("smoke") == smoke_train.annotation_file
    with pytest.raises(GradpathError, match="COCO"):
        load_cifar_det("paper", "train")
    with pytest.raises(GradpathError, match="valid choices: train, val"):
        load_cifar_det("smoke", "test")


def test_damaged_cache_is_regenerated(tmp_path, monkeypatch, smoke_train):
    monkeypatch.setenv("GRADPATH_CACHE", str(tmp_path))
    first = load_cifar_det("smoke", "train", progress=False)
    first.annotation_file.write_text('{"images": [')
    with pytest.warns(UserWarning, match="damaged"):
        again = load_cifar_det("smoke", "train", progress=False)
    assert np.array_equal(again.images, smoke_train.images)
    assert json.loads(again.annotation_file.read_text()) == json.loads(smoke_train.annotation_file.read_text())


def _flat_source(split: str) -> ImageDataset:
    """A classification split of one flat colour and one class, different for "train" and "test"."""
    label = {"train": 2, "test": 7}[split]
    images = np.full((20, 32, 32, 3), 30 * label, np.uint8)
    return ImageDataset(images, np.full(20, label, np.int64), tuple(f"class{k}" for k in range(10)),
                        f"flat {split} images", f"{label:064d}")


def test_train_canvases_hold_cifar_train_objects_and_val_canvases_cifar_test(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADPATH_CACHE", str(tmp_path))
    requested = []

    def load_source(name: str, split: str) -> ImageDataset:
        requested.append((name, split))
        return _flat_source(split)

    monkeypatch.setattr(cifar_det, "load_classification", load_source)
    for split, source_split in (("train", "train"), ("val", "test")):
        data = load_cifar_det("smoke", split, progress=False)
        source = _flat_source(source_split)
        labels = np.concatenate([t["labels"] for t in data.targets])
        assert set(labels.tolist()) == {int(source.labels[0])}, f"{split} objects must come from CIFAR {source_split}"
        shown = np.concatenate([image[target["masks"].any(0).astype(bool)]
                                for image, target in zip(data.images, data.targets)])
        assert len(shown) and (shown == source.images[0, 0, 0]).all(), "object pixels are the source's"
    assert requested == [(SMOKE.source, "train"), (SMOKE.source, "test")]


def test_generation_does_not_depend_on_the_number_of_worker_processes(smoke_source, monkeypatch):
    monkeypatch.setattr(cifar_det, "GENERATION_CHUNK", 4)  # 10 canvases: 3 chunks over 2 processes
    one = generate_cifar_det(smoke_source, SMOKE, 10, seed=5, split="val", workers=1)
    two = generate_cifar_det(smoke_source, SMOKE, 10, seed=5, split="val", workers=2)
    assert np.array_equal(one[0], two[0]) and one[1] == two[1]
    assert [a["id"] for a in two[1]["annotations"]] == list(range(1, len(two[1]["annotations"]) + 1))


def test_size_range_sentence_counts_the_ranges_and_names_the_missing_ones():
    from gradpath_lib.experiments.detection import size_range_sentence

    def stats(val_large: int, train_large: int) -> "pd.DataFrame":
        import pandas as pd

        rows = [("train", "a", 5, 2, train_large), ("train", "all", 5, 2, train_large),
                ("val", "a", 3, 1, val_large), ("val", "all", 3, 1, val_large)]
        return pd.DataFrame(rows, columns=["split", "class", "small", "medium", "large"]).assign(all=0)

    every = size_range_sentence(stats(val_large=4, train_large=6))
    assert every == ("At this scale, train: 5 small, 2 medium and 6 large objects; val: 3 small, 1 medium and "
                     "4 large objects: every COCO size range occurs in every split.")
    none_in_val = size_range_sentence(stats(val_large=0, train_large=6))
    assert "val: 3 small, 1 medium and 0 large objects. Not every size range occurs" in none_in_val
    assert "the val split has no large objects, so APl cannot be measured" in none_in_val
    assert "train split has no" not in none_in_val
    none_in_train = size_range_sentence(stats(val_large=4, train_large=0))
    assert "the train split has no large objects, so the detectors never train on such objects" in none_in_train
    assert "APl" not in none_in_train
    neither = size_range_sentence(stats(val_large=0, train_large=0))
    assert neither.endswith("Not every size range occurs: neither split has large objects, so the detectors never "
                            "train on such objects and APl cannot be measured (the detection tables show — for it).")
    assert neither.count("no large") == 0


def test_label_position_stays_in_the_canvas_and_off_placed_labels():
    from gradpath_lib.data.detection_plots import label_position

    canvas = (0.0, 0.0, 100.0, 100.0)
    assert label_position((10, 30, 40, 60), (20, 5), canvas, []) == (10, 25)  # just above the box
    assert label_position((10, 2, 40, 60), (20, 5), canvas, []) == (10, 0)  # no room above: shifted down into it
    assert label_position((90, 30, 99, 60), (20, 5), canvas, []) == (80, 25)  # shifted left into the canvas
    x, y = label_position((10, 30, 40, 60), (20, 5), canvas, [(0, 20, 50, 35)])  # above and inside taken
    assert (x, y) == (10, 60)  # just below the box
    crowded = [(0, 0, 100, 50), (0, 50, 100, 100)]  # no free place: the first candidate inside the canvas
    assert label_position((10, 30, 40, 60), (20, 5), canvas, crowded) == (10, 25)


def test_drawn_labels_stay_inside_their_canvas_and_do_not_overprint(smoke_train):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradpath_lib.data.detection_plots import plot_detection_samples

    fig = plot_detection_samples(smoke_train, count=8, columns=4)
    fig.canvas.draw()
    checked = 0
    for ax in fig.axes:
        for artist in [a for a in ax.artists if hasattr(a, "placed")]:
            (x0, y0), (x1, y1) = ax.transData.transform([(-0.5, -0.5), (63.5, 63.5)])
            flip = fig.bbox.height
            left, top, right, bottom = min(x0, x1), flip - max(y0, y1), max(x0, x1), flip - min(y0, y1)
            assert len(artist.placed) == len(artist.specs)
            for k, (a0, b0, a1, b1) in enumerate(artist.placed):
                assert left - 1e-6 <= a0 and a1 <= right + 1e-6 and top - 1e-6 <= b0 and b1 <= bottom + 1e-6
                for c0, d0, c1, d1 in artist.placed[:k]:
                    assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0, "two labels overprint"
                checked += 1
    assert checked == sum(len(t["labels"]) for t in smoke_train.targets[:8])
    plt.close(fig)
