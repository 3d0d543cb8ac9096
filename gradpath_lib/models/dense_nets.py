"""Aggregation-family classifiers: DenseNet-BC, SparseNet and CSPDenseNet.

Each stage is [AvgPool2d(2) except the first] -> dense/sparse block -> 1x1 transition that
compresses to `compression` x the block's output width. Fairness rule: a CSP variant keeps the
base's stage input and output widths, growth rate and layers; its block sees half of the stage
input (`CSPStage`, split by slicing) and its transitions T_b / T replace the base's transition.
SparseNet (Zhu et al., ECCV 2018) is registered with twice DenseNet's growth rate, as its
README compares DenseNet-40-12 with SparseNet-40-24; layer n aggregates outputs n-1, n-2, n-4, ...
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .blocks import AggregationBlock, ConvBNAct, CSPStage, Stack, aggregation_out_channels
from .classifier import Classifier, make_stem, register_with_csp
from .registry import register

DOWNSAMPLE = 2  # DenseNet's 2x2 average pool between blocks


def dense_net(
    growth: int = 12,
    layers: Sequence[int] = (6, 12, 24),
    stem_width: int | None = None,
    compression: float = 0.5,
    connectivity: str = "dense",
    csp: str | None = None,
    bottleneck: int = 4,
    stem: str = "cifar",
    num_classes: int = 10,
    act: str = "relu",
) -> Classifier:
    """DenseNet-BC / SparseNet classifier (`connectivity`), optionally with CSP stages (`csp` fusion)."""
    stem_channels = stem_width or 2 * growth
    stages, c_in = [], stem_channels
    for i, n_layers in enumerate(layers):
        pool = [nn.AvgPool2d(DOWNSAMPLE)] if i > 0 else []

        def make_block(c: int, n_layers: int = n_layers) -> AggregationBlock:
            return AggregationBlock(c, n_layers, growth, connectivity, bottleneck, act)

        c_out = round(compression * aggregation_out_channels(c_in, n_layers, growth, connectivity))
        if csp is None:
            block = make_block(c_in)
            stages.append(Stack(*pool, block, ConvBNAct(block.out_channels, c_out, 1, act=act)))
        else:
            stages.append(Stack(*pool, CSPStage(c_in, c_out, make_block, fusion=csp, act=act)))
        c_in = c_out
    return Classifier(make_stem(stem_channels, stem, act), stages, num_classes)


DENSENET = {
    "smoke": {"growth": 4, "layers": (2, 2, 2)},
    "mini": {"growth": 12, "layers": (8, 8, 8)},
    "paper": {"growth": 32, "layers": (6, 12, 24, 16), "stem": "imagenet"},  # DenseNet-121
}
SPARSENET = {scale: {**kw, "growth": 2 * kw["growth"], "connectivity": "sparse"} for scale, kw in DENSENET.items()}

register_with_csp("densenet", dense_net, family="densenet", presets=DENSENET, description="DenseNet-BC")
register("sparsenet", dense_net, family="densenet", presets=SPARSENET, base="densenet",
         description="SparseNet: layer n aggregates outputs n-1, n-2, n-4, ... (twice DenseNet's growth)")
