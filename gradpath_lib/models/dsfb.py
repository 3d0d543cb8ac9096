"""Deeply Shared Filter Bases (Kang & Kim, NeurIPS 2021) on CIFAR ResNets, and their plain counterparts.

Every 3x3 conv of a block after the first of a stage is `coeff(BN(cat[unique_basis(x),
shared_basis(x)]))`: the shared basis (3x3, C -> s) is ONE module object used by both convs of
every such block of the stage, the unique basis (3x3, C -> u) and the coefficients (1x1,
(s + u) -> C) belong to the layer. With `bases_per_stage=2` (the official code's double-shared
network, whose parameter count the paper prints) each stage has two shared bases instead: one
used by the first conv of every such block, one by the second. The first block of each stage
changes width/resolution and is an ordinary basic block. Shared bases start orthogonal and may be
kept so by the penalty mean((B B^T - I)^2) per basis (B: its filters flattened as rows), added to
the loss as lambda * sum over the shared bases through the model's `extra_loss(targets)`.

With `shared_rank=None` the same network has plain 3x3 convs everywhere: that is the plain ResNet
counterpart, so the comparison changes nothing but the convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import sum_across_ranks, world
from ..errors import check_choice
from .registry import register

ORTHOGONALITY_LAMBDA = 10.0  # the paper's weight of the orthogonality penalty
PAPER_STAGE_WIDTHS = (16, 32, 64)  # CIFAR ResNet stage widths (He et al. 2016)
PAPER_BLOCKS = 9  # ResNet-56: 3 stages x 9 basic blocks x 2 convs + stem + classifier
PAPER_SHARED_RANK, PAPER_UNIQUE_RANK = 16, 1  # the paper's "S16U1" for CIFAR ResNet-56


def orthogonality_penalty(basis: nn.Conv2d) -> torch.Tensor:
    """mean((B B^T - I)^2) with B the basis' filters flattened as rows; 0 iff they are orthonormal."""
    rows = basis.weight.flatten(1)
    gram = rows @ rows.t()
    return (gram - torch.eye(len(rows), device=rows.device, dtype=rows.dtype)).pow(2).mean()


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 convolution with 'same' padding."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class SharedBasisConv(nn.Module):
    """coeff(BN(cat[unique_basis(x), shared_basis(x)])): a C -> C 3x3 conv built on a shared basis."""

    def __init__(self, channels: int, shared_basis: nn.Conv2d, unique_rank: int):
        super().__init__()
        rank = shared_basis.out_channels + unique_rank
        self.unique_basis = conv3x3(channels, unique_rank)
        self.shared_basis = shared_basis  # the same object in every sharing layer of the stage
        self.bn = nn.BatchNorm2d(rank)
        self.coeff = nn.Conv2d(rank, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.coeff(self.bn(torch.cat([self.unique_basis(x), self.shared_basis(x)], dim=1)))


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)) with either conv given by the caller."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module, channels: int, shortcut: nn.Module):
        super().__init__()
        self.conv1, self.bn1 = conv1, nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = conv2, nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def plain_block(in_channels: int, out_channels: int, stride: int) -> BasicBlock:
    """An ordinary basic block; a 1x1 projection shortcut where the shape changes."""
    shortcut: nn.Module = nn.Identity()
    if stride != 1 or in_channels != out_channels:
        shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    return BasicBlock(conv3x3(in_channels, out_channels, stride), conv3x3(out_channels, out_channels),
                      out_channels, shortcut)


class Stage(nn.Module):
    """One resolution of the network: a plain first block, then blocks that may share a basis."""

    def __init__(self, in_channels: int, channels: int, blocks: int, stride: int,
                 shared_rank: int | None, unique_rank: int, bases_per_stage: int = 1):
        super().__init__()
        self.shared_bases = nn.ModuleList()
        if shared_rank is not None:
            self.shared_bases.extend(conv3x3(channels, shared_rank) for _ in range(bases_per_stage))
            for basis in self.shared_bases:
                nn.init.orthogonal_(basis.weight)
        # the basis of a block's first and of its second conv: one basis for both, or one each
        per_conv = [self.shared_bases[i % bases_per_stage] for i in range(2)] if shared_rank is not None else []
        layers = [plain_block(in_channels, channels, stride)]
        for _ in range(blocks - 1):
            if not per_conv:
                layers.append(plain_block(channels, channels, 1))
            else:
                convs = [SharedBasisConv(channels, basis, unique_rank) for basis in per_conv]
                layers.append(BasicBlock(*convs, channels, nn.Identity()))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class GradientNormMonitor:
    """Mean L2 norm of the loss gradient at each watched module's output, over the training steps
    since the last `read_and_reset`, as one process on the whole global batch would measure it.

    Per-step squared norms stay on the device (no synchronization per step). Under data
    parallelism each rank sees only its shard's gradient, of a loss averaged over the shard (ranks x
    the global batch's per-image gradient): `read_and_reset` sums the squares over the ranks and
    divides the norm by the number of ranks."""

    def __init__(self, modules: list[nn.Module]):
        self.squares: list[torch.Tensor] = []  # row k: squared norm at each module's k-th call
        self.steps = [0] * len(modules)
        for i, module in enumerate(modules):
            module.register_forward_hook(self._hook_for(i))

    def _hook_for(self, index: int):
        def forward_hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if module.training and isinstance(output, torch.Tensor) and output.requires_grad:  # not fx
                output.register_hook(lambda grad: self._add(index, grad))
        return forward_hook

    def _add(self, index: int, grad: torch.Tensor) -> None:
        call = self.steps[index]
        if call == len(self.squares):
            self.squares.append(torch.zeros(len(self.steps), device=grad.device))
        self.squares[call][index] = grad.float().pow(2).sum()
        self.steps[index] += 1

    def read_and_reset(self) -> list[float] | None:
        """The mean gradient norm per module since the last call (None if no step ran); every rank calls it."""
        if not any(self.steps):
            return None
        norms = sum_across_ranks(torch.stack(self.squares)).sqrt().sum(0) / world().size
        means = [total / max(1, n) for total, n in zip(norms.tolist(), self.steps)]
        self.squares, self.steps = [], [0] * len(self.steps)
        return means


class DSFBResNet(nn.Module):
    """A CIFAR ResNet (3x3 stem, stages of basic blocks, pooled linear classifier) with DSFB stages."""

    def __init__(
        self,
        blocks: int = PAPER_BLOCKS,
        widths: tuple[int, ...] = PAPER_STAGE_WIDTHS,
        shared_rank: int | None = PAPER_SHARED_RANK,
        unique_rank: int = PAPER_UNIQUE_RANK,
        orthogonality_lambda: float = ORTHOGONALITY_LAMBDA,
        num_classes: int = 10,
        bases_per_stage: int = 1,
    ):
        super().__init__()
        check_choice("DSFB bases_per_stage", bases_per_stage, (1, 2))
        self.orthogonality_lambda = orthogonality_lambda
        self.stem = nn.Sequential(conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, in_channels = [], widths[0]
        for i, width in enumerate(widths):
            scale = width // widths[0]  # ranks grow with the stage width, as in the paper's CIFAR nets
            stages.append(Stage(in_channels, width, blocks, 1 if i == 0 else 2,
                                None if shared_rank is None else shared_rank * scale, unique_rank * scale,
                                bases_per_stage))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.gradient_monitor = GradientNormMonitor(self.blocks())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))

    def shared_bases(self) -> list[nn.Conv2d]:
        """The shared bases of every stage, stage by stage (empty for the plain counterpart)."""
        return [basis for stage in self.stages for basis in stage.shared_bases]

    def blocks(self) -> list[nn.Module]:
        """Every residual block in data-path order (for per-block gradient monitoring)."""
        return [b for s in self.stages for b in s.blocks]

    def epoch_metrics(self) -> dict[str, list[float]]:
        """The trainer's per-epoch hook: mean |dL/d(block output)| of every block over the epoch."""
        norms = self.gradient_monitor.read_and_reset()
        return {} if norms is None else {"block_grad_norm": norms}

    def orthogonality_penalty(self) -> torch.Tensor:
        """The sum over every shared basis of its orthogonality penalty."""
        return sum((orthogonality_penalty(b) for b in self.shared_bases()), torch.zeros(()))

    def extra_loss(self, targets: torch.Tensor) -> torch.Tensor | None:
        """lambda * orthogonality penalty, or None without shared bases or with lambda = 0."""
        if not self.shared_bases() or self.orthogonality_lambda == 0:
            return None
        return self.orthogonality_lambda * self.orthogonality_penalty().to(targets.device)


# smoke: seconds on a CPU; mini and paper: the paper's CIFAR-10 ResNet-56 S16U1 (CIFAR is the
# paper's own setting, at the paper scale too: `experiments.extensions.dsfb_runs`). The parameter-matched plain net keeps the widths and has the number of
# blocks per stage that brings its parameter count closest to resnet-dsfb's (a test checks it): at
# mini ResNet-20, 0.272 M vs 0.274 M (the depth-matched ResNet-56 has 0.856 M); at smoke only
# 11.4 k vs 13.4 k, since one block per stage more (the depth-matched net) has 17.5 k.
SMOKE = {"blocks": 3, "widths": (4, 8, 16), "shared_rank": 4, "unique_rank": 1}
PAPER_SIZE = {"blocks": PAPER_BLOCKS, "widths": PAPER_STAGE_WIDTHS,
              "shared_rank": PAPER_SHARED_RANK, "unique_rank": PAPER_UNIQUE_RANK}
PARAM_MATCHED_BLOCKS = {"smoke": 2, "mini": 3, "paper": 3}
# at the paper scale too the network is the paper's CIFAR-10 one (10 classes, not ImageNet's 1000)
PRESETS = {"smoke": SMOKE, "mini": PAPER_SIZE, "paper": {**PAPER_SIZE, "num_classes": 10}}

register(
    "resnet-dsfb", DSFBResNet, family="dsfb",
    presets=PRESETS,
    description="CIFAR ResNet with deeply shared filter bases per stage, orthogonality penalty lambda=10",
)
register(
    "resnet-dsfb-double", DSFBResNet, family="dsfb",
    presets={s: {**p, "bases_per_stage": 2}
             for s, p in PRESETS.items()},
    description="resnet-dsfb with two shared bases per stage, one per conv of a block (the official "
                "double-shared network the paper prints)",
)
register(
    "resnet-dsfb-noreg", DSFBResNet, family="dsfb",
    presets={s: {**p, "orthogonality_lambda": 0.0}
             for s, p in PRESETS.items()},
    description="resnet-dsfb without the orthogonality penalty (ablation)",
)
register(
    "resnet-dsfb-depth-ref", DSFBResNet, family="dsfb",
    presets={s: {**p, "shared_rank": None}
             for s, p in PRESETS.items()},
    description="plain CIFAR ResNet of the same depth and widths as resnet-dsfb (ResNet-56 at mini)",
)
register(
    "resnet-dsfb-param-ref", DSFBResNet, family="dsfb",
    presets={s: {**p, "shared_rank": None, "blocks": PARAM_MATCHED_BLOCKS[s]}
             for s, p in PRESETS.items()},
    description="plain CIFAR ResNet of the same widths whose number of blocks per stage brings its parameter "
                "count closest to resnet-dsfb's",
)
