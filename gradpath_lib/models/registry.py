"""One registry for every network: paper names map to a factory plus per-scale size presets.

Adding a variant is adding an entry (see `register`). Classification models take 32x32 inputs;
detection models (task "detect") take the detector's canvas size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import GradpathError, check_choice
from ..scales import check_scale


@dataclass(frozen=True)
class ModelEntry:
    """A registered network: its factory, family, task and the keyword presets of each scale."""

    name: str
    factory: Callable[..., nn.Module]
    family: str
    task: str = "classify"
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    base: str | None = None  # the network this variant is compared with (e.g. csp-resnet -> resnet)


_REGISTRY: dict[str, ModelEntry] = {}

# The paper scale's datasets: ImageNet for classifiers, MS COCO 2017 for detectors.
PAPER_NUM_CLASSES = {"classify": 1000, "detect": 80}


def register(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    family: str,
    task: str = "classify",
    presets: dict[str, dict[str, Any]] | None = None,
    description: str = "",
    base: str | None = None,
) -> None:
    """Register `factory` under `name`; `presets[scale]` are its keyword arguments at that scale.

    `base` names the registered network this one is a variant of (its cost is reported relative to it).
    """
    if name in _REGISTRY:
        raise GradpathError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, factory, family, task, dict(presets or {}), description, base)


def _load_all() -> None:
    # Importing the package registers every built-in family.
    from . import zoo  # noqa: F401


def model_names(task: str | None = None) -> list[str]:
    """All registered names (optionally only those of one task), in registration order."""
    _load_all()
    return [n for n, e in _REGISTRY.items() if task is None or e.task == task]


def get_entry(name: str) -> ModelEntry:
    """The registry entry for `name`, or an error listing every valid name."""
    _load_all()
    check_choice("model", name, _REGISTRY)
    return _REGISTRY[name]


def model_kwargs(name: str, scale: str = "mini", **overrides: Any) -> dict[str, Any]:
    """The keyword arguments `create_model` passes to the factory at `scale`."""
    check_scale(scale)
    entry = get_entry(name)
    kwargs = dict(entry.presets.get(scale, entry.presets.get("mini", {})))
    if scale == "paper":
        kwargs.setdefault("num_classes", PAPER_NUM_CLASSES[entry.task])
    kwargs.update(overrides)
    return kwargs


def create_model(name: str, scale: str = "mini", **overrides: Any) -> nn.Module:
    """Build the registered network `name` at `scale`; keyword overrides replace preset values."""
    entry = get_entry(name)
    return entry.factory(**model_kwargs(name, scale, **overrides))
