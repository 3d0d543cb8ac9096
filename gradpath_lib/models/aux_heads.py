"""An auxiliary classification head at a shallow stage (the test of the paper's Fig. 1).

`WithAuxiliaryHead` wraps a stem -> stages -> head classifier (`Classifier`) and adds a second
head (global average pool + linear) on the output of one stage. In training mode every forward
keeps that head's logits and the trainer's `extra_loss(targets)` hook adds
`AUX_LOSS_WEIGHT x cross_entropy(aux_logits, targets)` to the main loss, so the loss reaches the
shallow stage through one linear layer instead of through every deeper stage. In eval mode the
auxiliary head is not computed: inference (and the counted FLOPs) is the wrapped network's.

Registered: `resnet-aux1` = `resnet` (same presets, so the same widths, depths and recipe) with
the head after stage 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GradpathError
from .blocks import out_channels
from .classifier import Classifier
from .registry import register
from .residual_nets import RESNET, residual_net

# Weight of the auxiliary cross-entropy: GoogLeNet's value for its auxiliary classifiers
# (Szegedy et al. 2015), strong enough to shape the shallow stage without replacing the main loss.
AUX_LOSS_WEIGHT = 0.3


class WithAuxiliaryHead(nn.Module):
    """`net` plus a pooled linear head on the output of stage `aux_stage` (1-based), trained via `extra_loss`."""

    def __init__(self, net: Classifier, aux_stage: int = 1, aux_weight: float = AUX_LOSS_WEIGHT,
                 num_classes: int = 10) -> None:
        super().__init__()
        if not 1 <= aux_stage < len(net.stages):
            raise GradpathError(f"aux_stage must be a stage before the last, 1..{len(net.stages) - 1}; got {aux_stage}")
        self.net = net
        self.aux_stage = aux_stage
        self.aux_weight = aux_weight
        self.aux_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(out_channels(net.stages[aux_stage - 1]), num_classes))
        self.aux_logits: torch.Tensor | None = None  # of the last training forward, until extra_loss reads it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net.stem(x)
        for index, stage in enumerate(self.net.stages, start=1):
            h = stage(h)
            if index == self.aux_stage and self.training:
                self.aux_logits = self.aux_head(h)
        return self.net.head(h)

    def extra_loss(self, targets: torch.Tensor) -> torch.Tensor | None:
        """aux_weight x cross-entropy of the auxiliary logits of the last training forward (None if none)."""
        if self.aux_logits is None:
            return None
        logits, self.aux_logits = self.aux_logits, None
        return self.aux_weight * F.cross_entropy(logits.float(), targets)


def residual_net_with_aux(aux_stage: int = 1, aux_weight: float = AUX_LOSS_WEIGHT, num_classes: int = 10,
                          **net: object) -> WithAuxiliaryHead:
    """`residual_net(**net)` with an auxiliary head after stage `aux_stage`."""
    return WithAuxiliaryHead(residual_net(num_classes=num_classes, **net), aux_stage, aux_weight, num_classes)


register("resnet-aux1", residual_net_with_aux, family="resnet", presets=RESNET, base="resnet",
         description=f"resnet with an auxiliary pooled linear head after stage 1 (loss weight {AUX_LOSS_WEIGHT})")
