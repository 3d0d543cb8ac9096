"""The YOLOR-mini detector skeleton: one network for every variant of the paper's Tables 3, 5-8.

    backbone: stem (3x3, stride 2) -> 4 stages, each a 3x3 stride-2 conv + a stage of the
              variant's block family; stages 2-4 give C3, C4, C5 at strides 8, 16, 32
    neck:     FPN top-down + PAN bottom-up (YOLOv5's layout), every merge followed by a stage
              of the SAME block family as the backbone
    head:     per level, anchor-free: a 3x3 stem, then a class branch (per-class logits) and a
              regression branch (4 box distances l, t, r, b from the cell centre, in strides
              after softplus, plus k mask coefficients); no objectness (the class score is
              trained to predict IoU quality, see `gradpath_lib.train.det_loss`)
    protos:   YOLACT-style: k prototype masks at stride 4 from the finest neck output;
              an instance mask is sigmoid(coefficients @ prototypes) cropped to its box

The variant only picks the block family (`block`), so widths, depths, neck and head are the same
for every variant (the paper's fairness rule):

- "dark": Darknet residual blocks (1x1 to half width -> 3x3), YOLOR-v3 / YOLOv3
- "prn": the same with PRN's masked residual: the shortcut reaches the first half of the channels
- "csp": a CSP stage (`CSPStage`, split by two 1x1 convs as in CSPDarknet / YOLOR-CSP, 50/50)
  around Darknet residual blocks, with `fusion` full | first | last and an optional stop
  gradient `sg` identity | block inside its residual blocks (Table 3)
- "c3": YOLOv5's C3: fusion-first CSP around bottlenecks that keep the width (1x1 -> 3x3, e=1)
- "elan": one ELAN block per stage (2 computational blocks of stacked 3x3 convs), with the stack
  setting `elan_stacks` (see `parse_elan_stacks`)

Neck stages whose input is a concat first reduce it with a 1x1 conv to the stage width (ELAN's two
1x1 splits read the concat directly). Every channel manipulation is a slice, cat or `+`, so
`torch.fx.symbolic_trace` traces the whole detector, and `model.backbone` alone maps an image to
(C3, C4, C5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import GradpathError, check_choice
from .blocks import ConvBNAct, CSPStage, ELANBlock, ResidualBlock, Stack, darknet_body

BLOCKS = ("dark", "prn", "csp", "c3", "elan")
STRIDES = (8, 16, 32)  # of the three detection levels P3, P4, P5
PROTO_STRIDE = 4  # prototypes are the P3 features upsampled twice
AUTOCAST_DEVICES = ("cuda", "cpu")  # where `predict_float32` looks for an active autocast
PRIOR_PROB = 0.01  # initial class probability (RetinaNet's focal-loss prior), keeps early loss sane
PRN_MASK_RATIO = 0.5  # the paper's YOLOR-PRN masks half the channels
CSP_SPLIT_RATIO = 0.5  # the paper's 50/50 gradient split
ELAN_BLOCKS = 2  # computational blocks per ELAN (yolov7's backbone ELAN)
ELAN_BACKBONE_SPLIT = 4  # yolov7 backbone ELAN: splits a, b of c_out / 4, so the concat has c_out channels
ELAN_NECK_SPLIT = 2  # neck ELANs read a concat of two levels: splits of c_out / 2 (yolov7's head keeps more)


def parse_elan_stacks(setting: str) -> tuple[int, int, bool]:
    """"b,n" or "b,ns" -> (3x3 convs per computational block in backbone, in neck, neck slim).

    Our reading of the paper's Table 7 stack settings (the table itself is not available in
    text): b and n are how many 3x3 convs are stacked in each computational block of the
    backbone and of the neck ELANs; a trailing 's' makes the neck's stacks slim (half width),
    as yolov7's neck ELAN is. "2,1s" is therefore the yolov7-like setting.
    """
    parts = setting.replace(" ", "").split(",")
    valid = len(parts) == 2 and parts[0].isdigit() and parts[1].rstrip("s").isdigit()
    if not valid or int(parts[0]) < 1 or int(parts[1].rstrip("s")) < 1:
        raise GradpathError(f"invalid ELAN stack setting {setting!r}; use 'b,n' or 'b,ns' with b, n >= 1, e.g. '2,1s'")
    return int(parts[0]), int(parts[1].rstrip("s")), parts[1].endswith("s")


class StageFactory:
    """Builds the stages of one block family: `stage(c_in, c_out, depth, neck)`."""

    def __init__(self, block: str, fusion: str, sg: str, elan_stacks: str, act: str) -> None:
        check_choice("detector block", block, BLOCKS)
        if sg != "none" and block != "csp":
            raise GradpathError(f"a stop gradient (sg={sg!r}) is defined for block 'csp' only, not {block!r}")
        self.block, self.fusion, self.sg, self.act = block, fusion, sg, act
        self.elan = parse_elan_stacks(elan_stacks)

    def residuals(self, width: int, depth: int) -> Stack:
        """`depth` residual blocks of the family at `width` channels."""
        shortcut = "masked" if self.block == "prn" else "identity"
        hidden = width if self.block == "c3" else width // 2
        return Stack(*(
            ResidualBlock(darknet_body(width, width, hidden, act=self.act), width, width, shortcut=shortcut,
                          mask_ratio=PRN_MASK_RATIO, sg=self.sg)
            for _ in range(depth)
        ))

    def stage(self, c_in: int, c_out: int, depth: int, neck: bool) -> nn.Module:
        """One stage from c_in to c_out channels (`depth` residual blocks; ELAN ignores depth)."""
        if self.block == "elan":
            backbone_depth, neck_depth, slim = self.elan
            hidden = c_out // (ELAN_NECK_SPLIT if neck else ELAN_BACKBONE_SPLIT)
            width = hidden // 2 if neck and slim else hidden
            return ELANBlock(c_in, c_out, hidden, blocks=ELAN_BLOCKS, depth=neck_depth if neck else backbone_depth,
                             stack_width=width, act=self.act)
        if self.block in ("csp", "c3"):
            fusion = "first" if self.block == "c3" else self.fusion
            body: nn.Module = CSPStage(c_out, c_out, lambda c2: self.residuals(c2, depth), CSP_SPLIT_RATIO,
                                       fusion=fusion, split="conv", act=self.act)
        else:
            body = self.residuals(c_out, depth)
        return body if c_in == c_out else Stack(ConvBNAct(c_in, c_out, 1, act=self.act), body)


class Backbone(nn.Module):
    """Stem + 4 stages (strides 4, 8, 16, 32); returns the last three stage outputs (C3, C4, C5)."""

    def __init__(self, stages: StageFactory, stem_width: int, widths: tuple[int, ...], depths: tuple[int, ...], act: str) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise GradpathError(f"the detector backbone needs 4 widths and 4 depths, got {widths} and {depths}")
        self.stem = ConvBNAct(3, stem_width, 3, 2, act=act)
        layers, c_in = [], stem_width
        for width, depth in zip(widths, depths):
            layers.append(Stack(ConvBNAct(c_in, width, 3, 2, act=act), stages.stage(width, width, depth, neck=False)))
            c_in = width
        self.stage1, self.stage2, self.stage3, self.stage4 = layers
        self.out_channels = tuple(widths[1:])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.stage2(self.stage1(self.stem(x)))
        c4 = self.stage3(c3)
        return c3, c4, self.stage4(c4)


class PANNeck(nn.Module):
    """YOLOv5's FPN + PAN over (C3, C4, C5) with widths (w3, w4, w5); outputs the same widths."""

    def __init__(self, stages: StageFactory, widths: tuple[int, int, int], depth: int, act: str) -> None:
        super().__init__()
        w3, w4, w5 = widths
        self.lateral5 = ConvBNAct(w5, w4, 1, act=act)
        self.top_down4 = stages.stage(2 * w4, w4, depth, neck=True)
        self.lateral4 = ConvBNAct(w4, w3, 1, act=act)
        self.top_down3 = stages.stage(2 * w3, w3, depth, neck=True)
        self.down3 = ConvBNAct(w3, w3, 3, 2, act=act)
        self.bottom_up4 = stages.stage(2 * w3, w4, depth, neck=True)
        self.down4 = ConvBNAct(w4, w4, 3, 2, act=act)
        self.bottom_up5 = stages.stage(2 * w4, w5, depth, neck=True)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, features: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        c3, c4, c5 = features
        p5 = self.lateral5(c5)
        p4 = self.lateral4(self.top_down4(torch.cat([self.upsample(p5), c4], 1)))
        out3 = self.top_down3(torch.cat([self.upsample(p4), c3], 1))
        out4 = self.bottom_up4(torch.cat([self.down3(out3), p4], 1))
        out5 = self.bottom_up5(torch.cat([self.down4(out4), p5], 1))
        return out3, out4, out5


def predict_float32(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """`conv(x)` computed in float32 even under autocast: the final 1x1 convs of the heads, so that box
    distances (decoded to pixels), class logits (ranked by NMS) and mask coefficients keep float32
    precision instead of bf16's 8 significant bits. Their cost is a few % of the detector's."""
    device = next((d for d in AUTOCAST_DEVICES if torch.is_autocast_enabled(d)), None)
    if device is None:
        return conv(x)
    with torch.autocast(device, enabled=False):
        return conv(x.float())


class LevelHead(nn.Module):
    """Anchor-free head of one level: class logits (C) and box distances (4) + mask coefficients (k),
    each predicted in float32 (`predict_float32`)."""

    def __init__(self, c_in: int, width: int, num_classes: int, num_protos: int, act: str) -> None:
        super().__init__()
        self.stem = ConvBNAct(c_in, width, 3, act=act)
        self.cls_tower, self.cls_pred = ConvBNAct(width, width, 3, act=act), nn.Conv2d(width, num_classes, 1)
        self.reg_tower, self.reg_pred = ConvBNAct(width, width, 3, act=act), nn.Conv2d(width, 4 + num_protos, 1)
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        cls = predict_float32(self.cls_pred, self.cls_tower(x))
        reg = predict_float32(self.reg_pred, self.reg_tower(x))
        return cls.flatten(2), reg.flatten(2)


class Protonet(nn.Module):
    """k prototype masks at stride 4 from the stride-8 neck output (YOLACT), the last conv in float32."""

    def __init__(self, c_in: int, width: int, num_protos: int, act: str) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ConvBNAct(c_in, width, 3, act=act),
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvBNAct(width, width, 3, act=act),
        )
        self.pred = nn.Conv2d(width, num_protos, 1)

    def forward(self, x: Tensor) -> Tensor:
        return predict_float32(self.pred, self.net(x))


class YOLORDetector(nn.Module):
    """Backbone + PAN neck + anchor-free heads + prototype masks; see the module docstring.

    forward(images (B, 3, H, W), H and W multiples of 32) returns a dict:
    "cls" (B, A, C) class logits, "box" (B, A, 4) raw distances (decode with
    `gradpath_lib.train.boxes.decode_ltrb`), "coef" (B, A, k) mask coefficients and "protos"
    (B, k, H/4, W/4), where the A points run over P3, P4, P5 row-major (`anchor_points`).
    """

    strides = STRIDES
    proto_stride = PROTO_STRIDE

    def __init__(
        self,
        block: str = "dark",
        fusion: str = "full",
        sg: str = "none",
        elan_stacks: str = "2,1s",
        stem_width: int = 16,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        depths: tuple[int, ...] = (1, 2, 2, 1),
        neck_depth: int = 1,
        head_width: int = 64,
        num_protos: int = 16,
        proto_width: int = 64,
        num_classes: int = 10,
        act: str = "silu",
    ) -> None:
        super().__init__()
        stages = StageFactory(block, fusion, sg, elan_stacks, act)
        self.num_classes, self.num_protos = num_classes, num_protos
        self.backbone = Backbone(stages, stem_width, tuple(widths), tuple(depths), act)
        levels = self.backbone.out_channels
        self.neck = PANNeck(stages, levels, neck_depth, act)
        self.heads = nn.ModuleList(LevelHead(c, head_width, num_classes, num_protos, act) for c in levels)
        self.protonet = Protonet(levels[0], proto_width, num_protos, act)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.neck(self.backbone(images))
        cls_levels, reg_levels = zip(*(head(f) for head, f in zip(self.heads, features)))
        cls = torch.cat(cls_levels, 2).permute(0, 2, 1)
        reg = torch.cat(reg_levels, 2).permute(0, 2, 1)
        return {"cls": cls, "box": reg[..., :4], "coef": reg[..., 4:], "protos": self.protonet(features[0])}

