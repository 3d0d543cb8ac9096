"""Residual-family classifiers: plain, ResNet, ResNeXt, PRN (masked / asymmetric), Darknet,
the stop-gradient ablation (Table 3) and their CSP variants (full / fusion first / fusion last).

Fairness rule: a base and its PRN / CSP / stop-gradient variant share stem, stage widths and
depths and the residual branch; only the shortcut (PRN, sg) or the stage wrapper (CSP) differs.
A CSP stage is `stage_conv` to the stage width, then `CSPStage` (split by slicing, ratio 1/2)
around the same number of blocks at half the width, so it costs clearly less than its base
(`gradpath models` prints the ratios: at mini about 0.5x FLOPs for ResNet, 0.6x for Darknet).

Stage entries: "block" (ResNet: the first block is strided, with the `entry_shortcut` when its
shape changes) or "conv" (Darknet, and every CSP stage: `stage_conv`, then blocks that keep the shape).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import GradpathError, check_choice
from .blocks import (
    ConvBNAct,
    CSPStage,
    ResidualBlock,
    Stack,
    basic_body,
    bottleneck_body,
    darknet_body,
)
from .classifier import Classifier, make_stem, register_with_csp, with_extra
from .registry import register

BODIES = ("basic", "bottleneck", "darknet")
STAGE_ENTRIES = ("block", "conv")


def residual_block(
    c_in: int,
    c_out: int,
    stride: int = 1,
    body: str = "basic",
    shortcut: str = "identity",
    entry_shortcut: str | None = None,
    mask_ratio: float = 0.5,
    sg: str = "none",
    groups: int = 1,
    bottleneck_ratio: float = 0.25,
    act: str = "relu",
) -> ResidualBlock:
    """One residual block of a family; `entry_shortcut` (default `shortcut`) is used when the shape changes."""
    check_choice("residual body", body, BODIES)
    if body == "basic":
        branch = basic_body(c_in, c_out, stride, act)
    elif body == "bottleneck":
        branch = bottleneck_body(c_in, c_out, stride, round(c_out * bottleneck_ratio), groups, act)
    else:
        if stride != 1:
            raise GradpathError("a darknet residual body keeps the resolution; downsample with a stage conv")
        branch = darknet_body(c_in, c_out, round(c_out * bottleneck_ratio), act)
    changes_shape = stride != 1 or c_in != c_out
    kind = (entry_shortcut or shortcut) if changes_shape else shortcut
    out_act = "none" if body == "darknet" else act  # Darknet adds linearly; ResNet activates after the add
    return ResidualBlock(branch, c_in, c_out, stride, kind, mask_ratio, sg, out_act)


def stage_conv(c_in: int, c_out: int, stride: int, body: str, act: str = "relu") -> Stack:
    """A "conv" stage entry: a strided 3x3 ConvBNAct, or for bottleneck bodies (whose 3x3 convs are
    narrow) ResNet-D's cheap down path, AvgPool2d(stride) then a 1x1 ConvBNAct."""
    if body != "bottleneck":
        return Stack(ConvBNAct(c_in, c_out, 3, stride, act=act))
    pool = [nn.AvgPool2d(stride, stride, ceil_mode=True)] if stride > 1 else []
    return Stack(*pool, ConvBNAct(c_in, c_out, 1, act=act))


def residual_net(
    widths: Sequence[int] = (64, 128, 256),
    depths: Sequence[int] = (2, 2, 2),
    stem_width: int = 64,
    stem: str = "cifar",
    stage_entry: str = "block",
    first_stride: int = 1,
    csp: str | None = None,
    num_classes: int = 10,
    act: str = "relu",
    **block: object,
) -> Classifier:
    """A residual-family classifier; `block` keywords go to `residual_block`; `csp` is a CSP fusion or None."""
    check_choice("stage entry", stage_entry, STAGE_ENTRIES)
    if len(widths) != len(depths):
        raise GradpathError(f"widths {tuple(widths)} and depths {tuple(depths)} differ in length")
    if csp is not None and stage_entry != "conv":
        raise GradpathError("a CSP stage starts with a stage conv; use stage_entry='conv'")
    stages, c_in = [], stem_width
    for i, (width, depth) in enumerate(zip(widths, depths)):
        stride = first_stride if i == 0 else 2
        if stage_entry == "conv":
            def make_blocks(c: int, depth: int = depth) -> Stack:
                return Stack(*(residual_block(c, c, act=act, **block) for _ in range(depth)))

            body = make_blocks(width) if csp is None else CSPStage(width, width, make_blocks, fusion=csp, act=act)
            stages.append(Stack(stage_conv(c_in, width, stride, str(block.get("body", "basic")), act), body))
        else:
            blocks = [residual_block(c_in if j == 0 else width, width, stride if j == 0 else 1, act=act, **block)
                      for j in range(depth)]
            stages.append(Stack(*blocks))
        c_in = width
    return Classifier(make_stem(stem_width, stem, act), stages, num_classes)


def _sizes(widths: Sequence[int], depths: Sequence[int], stem_width: int, **extra: object) -> dict[str, object]:
    return {"widths": tuple(widths), "depths": tuple(depths), "stem_width": stem_width, **extra}


# Presets. smoke: tiny; mini: CIFAR-10 on one GPU (ResNet-18-class, 3 stages); paper: ImageNet
# sizes of the CSPNet README's ResNet-50 / ResNeXt-50 (32x4d) / DarkNet-53 rows.
RESNET = {
    "smoke": _sizes((8, 16, 32), (1, 1, 1), 8),
    "mini": _sizes((64, 128, 256), (2, 2, 2), 64),
    "paper": _sizes((256, 512, 1024, 2048), (3, 4, 6, 3), 64, stem="imagenet", body="bottleneck"),
}
RESNEXT_BLOCK = {"body": "bottleneck", "bottleneck_ratio": 0.5}  # ResNeXt: wide grouped 3x3
RESNEXT = {
    "smoke": _sizes((16, 32, 64), (1, 1, 1), 16, groups=4, **RESNEXT_BLOCK),
    "mini": _sizes((128, 256, 512), (2, 2, 2), 64, groups=8, **RESNEXT_BLOCK),
    "paper": _sizes((256, 512, 1024, 2048), (3, 4, 6, 3), 64, stem="imagenet", groups=32, **RESNEXT_BLOCK),
}
DARKNET_BLOCK = {"body": "darknet", "bottleneck_ratio": 0.5, "act": "leaky", "stage_entry": "conv"}
DARKNET = {
    "smoke": _sizes((8, 16, 32), (1, 1, 1), 8, **DARKNET_BLOCK),
    "mini": _sizes((64, 128, 256), (2, 2, 2), 32, **DARKNET_BLOCK),
    "paper": _sizes((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4), 32, first_stride=2, **DARKNET_BLOCK),
}
# Table 3's deep residual ablation: a CIFAR ResNet-56 (3 x 9 basic blocks), shared by the sg
# variants and its plain counterpart.
RESNET_DEEP = {
    "smoke": _sizes((4, 8, 8), (3, 3, 3), 4),
    "mini": _sizes((16, 32, 64), (9, 9, 9), 16),
}

CSP_EXTRA = {"stage_entry": "conv"}  # a CSP stage starts with `stage_conv` to the stage width
register_with_csp("resnet", residual_net, family="resnet", presets=RESNET, csp_extra=CSP_EXTRA,
                  description="ResNet with basic blocks (bottlenecks at paper scale)")
register_with_csp("resnext", residual_net, family="resnet", presets=RESNEXT, csp_extra=CSP_EXTRA,
                  description="ResNeXt: bottlenecks with grouped 3x3 convs")
register_with_csp("darknet", residual_net, family="darknet", presets=DARKNET,
                  description="Darknet-53 style: strided conv + 1x1/3x3 residual blocks")
register("plain", residual_net, family="resnet", presets=with_extra(RESNET, shortcut="none", entry_shortcut="none"),
         base="resnet", description="resnet without any shortcut")
register("prn", residual_net, family="prn", presets=with_extra(RESNET, shortcut="masked"), base="resnet",
         description="PRN: the identity reaches only the first half of each block's channels")
register("prn-asym", residual_net, family="prn",
         presets=with_extra(RESNET, shortcut="masked", entry_shortcut="asymmetric"), base="resnet",
         description="PRN with parameter-free asymmetric shortcuts where the width changes (Darknet semantics)")
register("resnet-deep", residual_net, family="resnet", presets=RESNET_DEEP,
         description="deep CIFAR ResNet (Table 3's stop-gradient ablation)")
register("plain-deep", residual_net, family="resnet",
         presets=with_extra(RESNET_DEEP, shortcut="none", entry_shortcut="none"), base="resnet-deep",
         description="resnet-deep without any shortcut")
for _sg in ("identity", "block"):
    register(f"resnet-sg-{_sg}", residual_net, family="resnet", presets=with_extra(RESNET_DEEP, sg=_sg),
             base="resnet-deep",
             description=f"resnet-deep with stop gradient on the {_sg} path")
