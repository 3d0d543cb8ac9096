"""One-shot aggregation classifiers: VoVNet, deep VoVNet with and without gradient path planning
(Table 4), and ELAN.

A VoVNet stage is [MaxPool2d(3, 2, 1) except the first] -> `modules` OSA modules. Every OSA
transition lies on the shortest gradient path of every earlier layer, so stacking modules
(`vovnet-deep`) lengthens it by one per module. Gradient path planning (`planned=True`) removes
every transition except the last module's in each stage; with `csp` the planned stack runs on half
the stage input inside a `CSPStage`, whose T_b (and T) take the place of that last transition.
Fairness rule: the deep variants share widths, layers per module and module counts.

An ELAN stage is a strided 3x3 ConvBNAct to the stage width, then `depth` ELAN blocks with two
1x1 splits of half the width, `blocks` stacks of `stack_depth` 3x3 convs and a 1x1 transition.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import GradpathError
from .blocks import ConvBNAct, CSPStage, ELANBlock, OSAModule, Stack
from .classifier import Classifier, make_stem, with_extra
from .registry import register

ELAN_HIDDEN_RATIO = 0.5  # yolov7's ELAN: each 1x1 split has half the block's width


def _osa_stack(c_in: int, c_out: int | None, modules: int, layers: int, growth: int, planned: bool, act: str) -> Stack:
    """`modules` OSA modules; planned: no transition but on the last (none at all when c_out is None)."""
    stack, c = [], c_in
    for j in range(modules):
        keep = not planned or (j == modules - 1 and c_out is not None)
        module = OSAModule(c, layers, growth, c_out if keep else None, transition=keep, act=act)
        stack.append(module)
        c = module.out_channels
    return Stack(*stack)


def vovnet(
    growths: Sequence[int] = (32, 48, 64),
    widths: Sequence[int] = (128, 256, 384),
    modules: Sequence[int] = (1, 1, 1),
    layers: int = 5,
    planned: bool = False,
    csp: str | None = None,
    stem_width: int = 64,
    stem: str = "cifar",
    num_classes: int = 10,
    act: str = "relu",
) -> Classifier:
    """VoVNet classifier; `planned` removes the inner OSA transitions, `csp` wraps each stage in CSP."""
    if csp is not None and not planned:
        raise GradpathError("the CSP VoVNet variant is defined on the planned stack; set planned=True")
    stages, c_in = [], stem_width
    for i, (growth, width, n_modules) in enumerate(zip(growths, widths, modules)):
        pool = [nn.MaxPool2d(3, 2, 1)] if i > 0 else []
        if csp is None:
            body = _osa_stack(c_in, width, n_modules, layers, growth, planned, act)
        else:
            def make_block(c: int, n: int = n_modules, g: int = growth) -> Stack:
                return _osa_stack(c, None, n, layers, g, True, act)

            body = CSPStage(c_in, width, make_block, fusion=csp, act=act)
        stages.append(Stack(*pool, body))
        c_in = width
    return Classifier(make_stem(stem_width, stem, act), stages, num_classes)


def elan_net(
    widths: Sequence[int] = (64, 128, 256),
    depths: Sequence[int] = (1, 1, 1),
    blocks: int = 2,
    stack_depth: int = 2,
    stem_width: int = 32,
    stem: str = "cifar",
    num_classes: int = 10,
    act: str = "relu",
) -> Classifier:
    """ELAN classifier: per stage a strided 3x3 conv, then `depths[i]` ELAN blocks."""
    stages, c_in = [], stem_width
    for i, (width, depth) in enumerate(zip(widths, depths)):
        hidden = round(width * ELAN_HIDDEN_RATIO)
        elans = (ELANBlock(width, width, hidden, blocks, stack_depth, act=act) for _ in range(depth))
        stages.append(Stack(ConvBNAct(c_in, width, 3, 1 if i == 0 else 2, act=act), *elans))
        c_in = width
    return Classifier(make_stem(stem_width, stem, act), stages, num_classes)


VOVNET = {
    "smoke": {"growths": (4, 4, 8), "widths": (8, 16, 16), "layers": 2, "stem_width": 8},
    "mini": {},
    # VoVNet-39 (ImageNet): 4 stages, OSA modules (1, 1, 2, 2) of 5 layers.
    "paper": {"growths": (128, 160, 192, 224), "widths": (256, 512, 768, 1024), "modules": (1, 1, 2, 2),
              "stem": "imagenet"},
}
DEEP_MODULES = {"smoke": (1, 2, 3), "mini": (1, 3, 9), "paper": (1, 3, 9, 3)}  # paper: VoVNet-99
VOVNET_DEEP = {scale: {**kw, "modules": DEEP_MODULES[scale]} for scale, kw in VOVNET.items()}
ELAN = {
    "smoke": {"widths": (8, 16, 16), "stem_width": 8},
    "mini": {},
    "paper": {"widths": (128, 256, 512, 1024), "depths": (1, 1, 1, 1), "stem_width": 64, "stem": "imagenet"},
}


register("vovnet", vovnet, family="vovnet", presets=VOVNET, description="VoVNet: one OSA module per stage")
register("vovnet-deep", vovnet, family="vovnet", presets=VOVNET_DEEP, base="vovnet",
         description="deep VoVNet: stacked OSA modules, every transition kept")
register("vovnet-deep-planned", vovnet, family="vovnet", presets=with_extra(VOVNET_DEEP, planned=True),
         base="vovnet-deep",
         description="deep VoVNet with gradient path planning: one transition per stage")
register("vovnet-deep-planned-csp", vovnet, family="vovnet", presets=with_extra(VOVNET_DEEP, planned=True, csp="full"),
         base="vovnet-deep-planned", description="planned deep VoVNet with CSP stages")
register("elan", elan_net, family="elan", presets=ELAN, description="ELAN: stacks in computational block, 2 x 2 3x3")
