"""Paper-scale configs: complete runs; the dry run names missing data and passes on a tiny generated layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.paper_configs import (
    PAPER_TABLES,
    check_paper,
    paper_configs,
)
from gradpath_lib.runs import normalize_config
from gradpath_lib.models.registry import PAPER_NUM_CLASSES, model_kwargs

COCO_CATEGORIES = 80
RESNET50_PARAMS = 25_557_032  # ResNet-50 with a 1000-class head (torchvision's count)
IMAGE_SIDE = 8


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((IMAGE_SIDE, IMAGE_SIDE, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_imagenet(root: Path, classes: int = PAPER_NUM_CLASSES["classify"]) -> None:
    """`imagenet/{train,val}/<wnid>/<one image>` with `classes` class folders."""
    data = jpeg_bytes()
    for split in ("train", "val"):
        for index in range(classes):
            folder = root / "imagenet" / split / f"n{index:08d}"
            folder.mkdir(parents=True)
            (folder / f"{split}_{index}.JPEG").write_bytes(data)


def write_coco(root: Path) -> None:
    """`coco/annotations/instances_{train,val}2017.json` (80 categories, one image, one box) and the images."""
    categories = [{"id": index + 1, "name": f"class{index}"} for index in range(COCO_CATEGORIES)]
    for split in ("train", "val"):
        image = {"id": 1, "width": IMAGE_SIDE, "height": IMAGE_SIDE, "file_name": f"{split}.jpg"}
        annotation = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16.0, "iscrowd": 0,
                      "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}
        (root / "coco" / f"{split}2017").mkdir(parents=True)
        (root / "coco" / f"{split}2017" / image["file_name"]).write_bytes(jpeg_bytes())
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "coco" / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": [image], "annotations": [annotation], "categories": categories}))


def test_every_paper_table_is_a_list_of_complete_runs():
    for table, spec in PAPER_TABLES.items():
        configs = paper_configs(table, seeds=(0, 1))
        assert [c["model"] for c in configs] == [m for m in spec.models for _ in (0, 1)]
        for config in configs:
            normalize_config(config)
            assert config["scale"] == "paper" and config["data"] == spec.dataset
            if spec.dataset == "imagenet":
                assert model_kwargs(config["model"], "paper", **config["model_kwargs"])["num_classes"] == 1000
                assert config["recipe"]["epochs"] == 100 and config["recipe"]["schedule"] == "cosine"
            else:
                assert config["task"] == "detect" and config["recipe"]["epochs"] == 300
    with pytest.raises(GradpathError, match="unknown paper table 'table9'; valid choices: table2"):
        paper_configs("table9")


def test_dry_run_names_the_missing_data(tmp_path, capsys):
    with pytest.raises(GradpathError) as error:
        check_paper(["table2", "table5"], models=["resnet", "yolor-v3"], root=tmp_path)
    message = str(error.value)
    for missing in ("imagenet/train", "imagenet/val", "instances_train2017.json", "instances_val2017.json",
                    "coco/train2017", "coco/val2017"):
        assert missing in message
    assert main(["check-paper", "--tables", "table5", "--data-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "missing annotation file" in err and "imagenet/train" not in err, "only the data a table needs is checked"
    assert "yolor-prn" in out and "yolor-v3" in out, "the models are built and listed without the data"


def test_models_not_in_the_tables_are_named_with_the_valid_ones(tmp_path, capsys):
    assert main(["check-paper", "--tables", "table5", "--models", "yolor-prn", "nosuch", "resnet"]) == 2
    err = capsys.readouterr().err
    assert "model(s) nosuch, resnet not in tables table5; their models: yolor-v3, yolor-prn" in err


def test_dry_run_names_wrong_and_incomplete_layouts(tmp_path):
    write_imagenet(tmp_path, classes=3)
    write_coco(tmp_path)
    (tmp_path / "coco" / "val2017" / "val.jpg").unlink()
    (tmp_path / "imagenet" / "val" / "n00000002" / "val_2.JPEG").unlink()
    with pytest.raises(GradpathError) as error:
        check_paper(["table2", "table5"], models=["resnet", "yolor-v3"], root=tmp_path)
    message = str(error.value)
    assert "imagenet/train has 3 class folders, the models expect 1000" in message
    assert "1 class folder(s) of " in message and "n00000002" in message
    assert "1 image(s) listed in instances_val2017.json are not in" in message and "val.jpg" in message


def test_dry_run_passes_on_a_tiny_generated_layout(tmp_path, capsys):
    write_imagenet(tmp_path)
    write_coco(tmp_path)
    rows = check_paper(["table2", "table5"], models=["resnet", "yolor-prn"], root=tmp_path)
    assert [(r["table"], r["model"], r["dataset"]) for r in rows] == [("table2", "resnet", "imagenet"),
                                                                      ("table5", "yolor-prn", "coco")]
    assert rows[0]["params"] == RESNET50_PARAMS and rows[0]["flops"] is None
    assert main(["check-paper", "--tables", "table5", "--models", "yolor-prn", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "yolor-prn" in out and "nothing trained" in out
