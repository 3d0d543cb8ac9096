"""Datasets: CIFAR-10 (binary archive or image tree, decoded once) and generated smoke data.

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
from .paths import cache_dir, data_dir
from .smoke import make_smoke

CLASSIFICATION_DATASETS = ("smoke", "cifar10", "imagenet")
SCALE_DATASETS = {"smoke": "smoke", "mini": "cifar10", "paper": "imagenet"}
PAPER_SCALE_DOCS = "the paper-scale section of the book's 'Reproducing' chapter"

__all__ = [
    "CIFAR10_CLASSES", "ImageDataset", "SPLITS", "cache_dir", "data_dir", "dataset_for_scale",
    "load_cifar10_arrays", "load_classification", "make_smoke",
]


def dataset_for_scale(scale: str) -> str:
    """The classification dataset of a scale: smoke -> smoke, mini -> cifar10, paper -> imagenet."""
    return SCALE_DATASETS[check_scale(scale)]


def load_classification(name: str, split: str) -> ImageDataset:
    """One split ("train" or "test") of the classification dataset `name` ("cifar10" or "smoke")."""
    check_choice("classification dataset", name, CLASSIFICATION_DATASETS)
    check_choice("split", split, SPLITS)
    if name == "smoke":
        return make_smoke(split)
    if name == "cifar10":
        return load_cifar10_arrays()[split]
    raise GradpathError(
        "ImageNet is the paper-scale dataset and is not bundled or loaded by gradpath; "
        f"see {PAPER_SCALE_DOCS} for how to run those configs with your own copy"
    )
