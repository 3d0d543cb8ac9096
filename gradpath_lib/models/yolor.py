"""The YOLOR-mini registry entries (task "detect") and their cost at a given input size.

Every variant is the `YOLORDetector` skeleton with one block family (see `detector.py`); the size
presets are shared by all variants, so widths, depths, neck and head match (the fairness rule).

Sizes per scale:
- smoke: 64x64 canvases, a few thousand parameters per stage; trains in seconds on a CPU.
- mini: 192x192 CIFAR-Det canvases; Darknet depths (1, 3, 3, 2) so the stage blocks, not the
  shared head, dominate the cost, as in the paper's models.
- paper: COCO at 640x640 with Darknet-53's backbone widths and depths (128..1024; 2, 8, 8, 4)
  after a stride-2 stem (Darknet-53's full-resolution stem and 64-wide stage are left out), a
  1-deep PAN neck, 256-wide heads and 32 prototypes of width 128 (documentation scale). Our CSP
  stages halve the width once more than yolor-csp.yaml's `BottleneckCSP` (e=1.0), as at the mini
  scale, so at Darknet-53's depths they cut more FLOPs than the official config does; the block is
  kept so that the paper scale builds the same networks as the mini scale.

`gradpath models --task detect --scale <scale>` prints the costs;
`gradpath_lib.detection_tables.paper_preset_comparison` puts the paper preset beside the official
configs (shown in the book's scale-out section).
"""

from __future__ import annotations

from typing import Any

from .cost import count_flops, count_params
from .detector import YOLORDetector
from .registry import create_model, register

SIZES: dict[str, dict[str, Any]] = {
    "smoke": dict(stem_width=8, widths=(16, 32, 32, 64), depths=(1, 1, 1, 1), neck_depth=1, head_width=32,
                  num_protos=8, proto_width=16, num_classes=10),
    "mini": dict(stem_width=16, widths=(32, 64, 128, 256), depths=(1, 3, 3, 2), neck_depth=1, head_width=48,
                 num_protos=16, proto_width=48, num_classes=10),
    "paper": dict(stem_width=32, widths=(128, 256, 512, 1024), depths=(2, 8, 8, 4), neck_depth=1, head_width=256,
                  num_protos=32, proto_width=128, num_classes=80),
}
# The canvas (input) side of each scale: CIFAR-Det's canvases, COCO's 640 training size.
INPUT_SIZES = {"smoke": 64, "mini": 192, "paper": 640}
PAPER_INPUT = 640  # the input side of the paper's cost numbers
BASELINE = "yolor-v3"  # the base of every other variant: costs are reported relative to it

VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "yolor-v3": (dict(block="dark"), "YOLOR-v3: Darknet residual blocks (the baseline)"),
    "yolor-prn": (dict(block="prn"), "YOLOR-PRN: Darknet blocks whose shortcut reaches half the channels"),
    "yolor-csp": (dict(block="csp", fusion="full"), "YOLOR-CSP: full CSP stages over Darknet blocks"),
    "yolor-csp-first": (dict(block="csp", fusion="first"), "YOLOR-CSP with CSP fusion first"),
    "yolor-csp-last": (dict(block="csp", fusion="last"), "YOLOR-CSP with CSP fusion last"),
    "yolor-csp-sg-identity": (dict(block="csp", sg="identity"),
                              "YOLOR-CSP with stop gradient on every residual identity: sg(x) + F(x)"),
    "yolor-csp-sg-block": (dict(block="csp", sg="block"),
                           "YOLOR-CSP with stop gradient into every residual block: x + F(sg(x))"),
    "yolor-elan": (dict(block="elan", elan_stacks="2,1s"), "YOLOR-ELAN, stack setting '2,1s' (yolov7-like)"),
    "yolor-elan-b1n1s": (dict(block="elan", elan_stacks="1,1s"), "YOLOR-ELAN, stack setting '1,1s' (lighter)"),
    "yolor-elan-b2n2": (dict(block="elan", elan_stacks="2,2"), "YOLOR-ELAN, stack setting '2,2' (heavier neck)"),
    "yolov5": (dict(block="c3"), "YOLOv5 (r6.2-like): C3 = fusion-first CSP over width-keeping bottlenecks"),
}


def detector_cost(name: str, scale: str = "mini", input_size: int | None = None) -> dict[str, int]:
    """{"params", "flops"} of detector `name` at `scale`'s preset on one square input (FLOPs = 2 x MACs)."""
    model = create_model(name, scale)
    side = input_size or INPUT_SIZES[scale]
    return {"params": count_params(model), "flops": count_flops(model, (3, side, side))}


for _name, (_variant, _description) in VARIANTS.items():
    register(
        _name,
        YOLORDetector,
        family="yolor",
        task="detect",
        presets={scale: {**size, **_variant} for scale, size in SIZES.items()},
        description=_description,
        base=None if _name == BASELINE else BASELINE,
    )
