"""The shape every classification network shares: stem -> stages -> global pool -> linear."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import check_choice
from .blocks import ConvBNAct, out_channels
from .registry import register

STEMS = ("cifar", "imagenet")
CSP_SUFFIXES = {"full": "", "first": "-first", "last": "-last"}  # registry name suffix per CSP fusion
IMAGENET_STEM_KERNEL = 7  # ResNet's ImageNet stem: 7x7 stride-2 conv, then 3x3 stride-2 max pool


def make_stem(width: int, stem: str = "cifar", act: str = "relu") -> nn.Sequential:
    """Input stem from RGB: "cifar" is one 3x3 conv (stride 1); "imagenet" is 7x7/2 conv + 3x3/2 max pool."""
    check_choice("stem", stem, STEMS)
    if stem == "cifar":
        return nn.Sequential(ConvBNAct(3, width, 3, act=act))
    return nn.Sequential(ConvBNAct(3, width, IMAGENET_STEM_KERNEL, 2, act=act), nn.MaxPool2d(3, 2, 1))


class Classifier(nn.Module):
    """stem -> stages (each declares `out_channels`) -> global average pool -> linear."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], num_classes: int = 10) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out_channels(stages[-1]), num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def with_extra(presets: dict[str, dict[str, Any]], **extra: Any) -> dict[str, dict[str, Any]]:
    """Per-scale presets with `extra` keyword arguments added at every scale."""
    return {scale: {**kwargs, **extra} for scale, kwargs in presets.items()}


def register_with_csp(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    family: str,
    presets: dict[str, dict[str, Any]],
    description: str,
    csp_extra: dict[str, Any] | None = None,
) -> None:
    """Register `name` and `csp-<name>[-first|-last]`: the same presets plus `csp=<fusion>` (and `csp_extra`)."""
    register(name, factory, family=family, presets=presets, description=description)
    for fusion, suffix in CSP_SUFFIXES.items():
        register(
            f"csp-{name}{suffix}",
            factory,
            family=family,
            presets=with_extra(presets, **(csp_extra or {}), csp=fusion),
            base=name,
            description=f"CSP {name} ({fusion} fusion): half the channels cross each stage's block",
        )
