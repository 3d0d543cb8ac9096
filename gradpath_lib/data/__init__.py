"""Datasets: CIFAR-10 (binary archive or image tree, decoded once), generated smoke data, and
ImageNet (class folders, streamed from disk by the classification trainer: `load_imagenet`).

    >>> from gradpath_lib.data import load_classification, dataset_for_scale
    >>> train = load_classification(dataset_for_scale("smoke"), "train")
    >>> train.images.shape, train.labels.dtype
    ((512, 32, 32, 3), dtype('int64'))
"""

from __future__ import annotations

from ..errors import GradpathError, check_choice
from ..scales import check_scale
from .cifar10 import CIFAR10_CLASSES, load_cifar10_arrays
from .dataset import SPLITS, ImageDataset
from .imagenet import load_imagenet
from .paths import cache_dir, data_dir
from .smoke import make_smoke

CLASSIFICATION_DATASETS = ("smoke", "cifar10", "imagenet")
SCALE_DATASETS = {"smoke": "smoke", "mini": "cifar10", "paper": "imagenet"}
# Too large for memory: the trainer streams these from their folders (name -> loader).
STREAMED_DATASETS = {"imagenet": load_imagenet}

__all__ = [
    "CIFAR10_CLASSES", "ImageDataset", "SPLITS", "cache_dir", "data_dir", "dataset_for_scale",
    "STREAMED_DATASETS", "load_cifar10_arrays", "load_classification", "load_imagenet", "make_smoke",
]


def dataset_for_scale(scale: str) -> str:
    """The classification dataset of a scale: smoke -> smoke, mini -> cifar10, paper -> imagenet."""
    return SCALE_DATASETS[check_scale(scale)]


def load_classification(name: str, split: str) -> ImageDataset:
    """One split ("train" or "test") of an in-memory classification dataset ("smoke" or "cifar10")."""
    check_choice("classification dataset", name, CLASSIFICATION_DATASETS)
    check_choice("split", split, SPLITS)
    if name in STREAMED_DATASETS:
        raise GradpathError(
            f"{name!r} is a paper-scale dataset, streamed from its folders rather than loaded into memory: "
            f"read it with gradpath_lib.data.{STREAMED_DATASETS[name].__name__} (the classification trainer does)"
        )
    if name == "smoke":
        return make_smoke(split)
    return load_cifar10_arrays()[split]
