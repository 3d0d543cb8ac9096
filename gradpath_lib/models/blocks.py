"""The paper's building blocks, shared by the classifiers and the detector backbones and necks.

Every block is written so that `torch.fx.symbolic_trace` sees exactly which channels each
layer reads and writes: channel manipulation uses only slicing `x[:, a:b]`, `torch.cat(..., 1)`,
`+` and `.detach()` (stop gradient); shapes are fixed at construction, never read in `forward`.
Every block has an `out_channels` attribute, so blocks compose (e.g. inside `CSPStage`).

Conventions:
- `ConvBNAct` is Conv2d (no bias, "same" padding) -> BatchNorm2d -> activation (post-activation,
  as in Darknet/CSPNet/YOLO; the DenseNet and SparseNet layers use it too).
- Partial shortcuts always reach the FIRST k channels of the output (`add_to_first`): PRN's
  masked residual with ratio r adds the shortcut to channels [0, round(r * C_out)); the
  asymmetric residual (Darknet semantics) adds the source's first min(C_out, C_src) channels
  to the output's first min(C_out, C_src) channels and copies the rest unchanged.
- CSP splits by slicing by default (`split="slice"`: x1 = x[:, :c1] crosses the stage,
  x2 = x[:, c1:] enters the block), so the block really sees part of the stage input as in the
  CSPNet paper; `split="conv"` uses two 1x1 convs instead (CSPDarknet / YOLOv5 C3 style).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import GradpathError, check_choice

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "leaky": lambda: nn.LeakyReLU(0.1),  # Darknet's leaky slope
    "mish": nn.Mish,
    "none": nn.Identity,
}
SHORTCUTS = ("identity", "masked", "asymmetric", "none")
STOP_GRADIENTS = ("none", "identity", "block")
CSP_FUSIONS = ("full", "first", "last")
CSP_SPLITS = ("slice", "conv")
CONNECTIVITIES = ("dense", "sparse")
CSP_SPLIT_RATIO = 0.5  # CSPNet's 50/50 split (the paper's Table 6)


def make_act(name: str) -> nn.Module:
    """A fresh activation module by name ("relu", "silu", "leaky", "mish" or "none")."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def out_channels(module: nn.Module) -> int:
    """The number of output channels a block declares (its `out_channels` attribute)."""
    channels = getattr(module, "out_channels", None)
    if not isinstance(channels, int):
        raise GradpathError(f"{type(module).__name__} does not declare an int `out_channels`")
    return channels


def add_to_first(y: Tensor, src: Tensor, k: int, y_channels: int, src_channels: int) -> Tensor:
    """`y` with `src[:, :k]` added to its first `k` channels; its other channels copied unchanged."""
    shortcut = src if src_channels == k else src[:, :k]
    if k == y_channels:
        return y + shortcut
    return torch.cat([y[:, :k] + shortcut, y[:, k:]], 1)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, same padding) -> BatchNorm2d -> activation."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str = "relu",
    ) -> None:
        conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        super().__init__(
            OrderedDict(conv=conv, bn=nn.BatchNorm2d(c_out), act=make_act(act))
        )
        self.in_channels, self.out_channels = c_in, c_out


class Stack(nn.Sequential):
    """Blocks applied in sequence; `out_channels` is the last block's."""

    def __init__(self, *blocks: nn.Module) -> None:
        if not blocks:
            raise GradpathError("a Stack needs at least one block")
        super().__init__(*blocks)
        self.out_channels = out_channels(blocks[-1])


def basic_body(c_in: int, c_out: int, stride: int = 1, act: str = "relu") -> Stack:
    """ResNet basic residual branch: 3x3 (stride) -> 3x3, no activation after the last BN."""
    return Stack(ConvBNAct(c_in, c_out, 3, stride, act=act), ConvBNAct(c_out, c_out, 3, act="none"))


def bottleneck_body(
    c_in: int, c_out: int, stride: int = 1, width: int | None = None, groups: int = 1, act: str = "relu"
) -> Stack:
    """ResNet/ResNeXt bottleneck branch: 1x1 -> grouped 3x3 (stride) -> 1x1; width defaults to c_out/4."""
    width = width or c_out // 4
    return Stack(
        ConvBNAct(c_in, width, 1, act=act),
        ConvBNAct(width, width, 3, stride, groups=groups, act=act),
        ConvBNAct(width, c_out, 1, act="none"),
    )


def darknet_body(c_in: int, c_out: int, hidden: int | None = None, act: str = "leaky") -> Stack:
    """Darknet residual branch: 1x1 to `hidden` (default c_out/2) -> 3x3 back to c_out, both activated."""
    hidden = hidden or c_out // 2
    return Stack(ConvBNAct(c_in, hidden, 1, act=act), ConvBNAct(hidden, c_out, 3, act=act))


class ResidualBlock(nn.Module):
    """out = out_act(body(x) (+) shortcut(x)), with the shortcut kind and stop gradient as options.

    shortcut: "identity" adds to every channel (1x1 projection when shape changes); "masked" (PRN)
    adds to the first round(mask_ratio * c_out) channels (a 1x1 projection to that many channels
    when shape changes); "asymmetric" (Darknet) adds the first min(c_in, c_out) input channels to
    the first min(c_in, c_out) output channels, parameter-free (AvgPool2d when strided, where darknet's
    shortcut layer picks every stride-th pixel: averaging keeps all pixels in the gradient); "none" is
    a plain block. sg: "identity" is `sg(x) + F(x)`, "block" is `x + F(sg(x))`.
    """

    def __init__(
        self,
        body: nn.Module,
        c_in: int,
        c_out: int,
        stride: int = 1,
        shortcut: str = "identity",
        mask_ratio: float = 0.5,
        sg: str = "none",
        out_act: str = "none",
    ) -> None:
        super().__init__()
        check_choice("shortcut", shortcut, SHORTCUTS)
        check_choice("stop gradient", sg, STOP_GRADIENTS)
        if out_channels(body) != c_out:
            raise GradpathError(f"residual body gives {out_channels(body)} channels, expected {c_out}")
        if shortcut == "none" and sg != "none":
            raise GradpathError("a stop gradient needs a shortcut; got shortcut='none'")
        self.body, self.sg, self.out_act = body, sg, make_act(out_act)
        self.in_channels, self.out_channels = c_in, c_out
        self.shortcut_channels = self._shortcut_channels(shortcut, c_in, c_out, mask_ratio)
        self.proj, self.src_channels = self._projection(shortcut, c_in, stride)

    def _shortcut_channels(self, shortcut: str, c_in: int, c_out: int, mask_ratio: float) -> int:
        if shortcut == "none":
            return 0
        if shortcut == "identity":
            return c_out
        if shortcut == "asymmetric":
            return min(c_in, c_out)
        k = round(mask_ratio * c_out)
        if not 0 < k <= c_out:
            raise GradpathError(f"mask_ratio {mask_ratio} masks no channel of {c_out}; use (0, 1]")
        return k

    def _projection(self, shortcut: str, c_in: int, stride: int) -> tuple[nn.Module, int]:
        k = self.shortcut_channels
        if shortcut == "none" or (stride == 1 and shortcut == "asymmetric"):
            return nn.Identity(), c_in
        if shortcut == "asymmetric":
            return nn.AvgPool2d(stride, stride, ceil_mode=True), c_in
        if stride == 1 and c_in == self.out_channels:
            return nn.Identity(), c_in
        return ConvBNAct(c_in, k, 1, stride, act="none"), k

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x.detach() if self.sg == "block" else x)
        if self.shortcut_channels == 0:
            return self.out_act(y)
        src = self.proj(x.detach() if self.sg == "identity" else x)
        y = add_to_first(y, src, self.shortcut_channels, self.out_channels, self.src_channels)
        return self.out_act(y)


class CSPStage(nn.Module):
    """Cross Stage Partial wrapper around any block `make_block(c2)` applied to part of the input.

    x1 crosses the stage, x2 goes through the block B; fusion "full" is T(cat[T_b(B(x2)), x1]),
    "first" is T(cat[B(x2), x1]), "last" is cat[T_b(B(x2)), x1] (T, T_b: 1x1 ConvBNAct). Split
    "slice": x1 = x[:, :c1], x2 = x[:, c1:] with c2 = round(split_ratio * c_in); "conv": two 1x1
    convs from x to c1 and c2 channels. T_b maps to c_out - c1 channels so "last" ends at c_out.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        make_block: Callable[[int], nn.Module],
        split_ratio: float = CSP_SPLIT_RATIO,
        fusion: str = "full",
        split: str = "slice",
        act: str = "relu",
    ) -> None:
        super().__init__()
        check_choice("CSP fusion", fusion, CSP_FUSIONS)
        check_choice("CSP split", split, CSP_SPLITS)
        c2 = round(split_ratio * c_in)
        c1 = c_in - c2
        if not (0 < c2 < c_in and c1 < c_out):
            raise GradpathError(f"CSP split_ratio {split_ratio} of {c_in} -> {c_out} channels leaves a part empty")
        self.split, self.fusion, self.c1 = split, fusion, c1
        self.in_channels, self.out_channels = c_in, c_out
        self.part1 = ConvBNAct(c_in, c1, 1, act=act) if split == "conv" else nn.Identity()
        self.part2 = ConvBNAct(c_in, c2, 1, act=act) if split == "conv" else nn.Identity()
        self.block = make_block(c2)
        c_block = out_channels(self.block)
        has_tb = fusion in ("full", "last")
        self.transition_block = ConvBNAct(c_block, c_out - c1, 1, act=act) if has_tb else nn.Identity()
        c_cat = (c_out - c1 if has_tb else c_block) + c1
        self.transition = ConvBNAct(c_cat, c_out, 1, act=act) if fusion != "last" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.split == "slice":
            x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        else:
            x1, x2 = self.part1(x), self.part2(x)
        y = self.transition_block(self.block(x2))
        return self.transition(torch.cat([y, x1], 1))


class ELANBlock(nn.Module):
    """ELAN: 1x1 splits a, b; `blocks` stacks of `depth` 3x3 convs in sequence from b;
    transition 1x1 over cat[a, b, output of every stack]."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        hidden: int,
        blocks: int = 2,
        depth: int = 2,
        stack_width: int | None = None,
        act: str = "silu",
    ) -> None:
        super().__init__()
        width = stack_width or hidden
        self.in_channels, self.out_channels = c_in, c_out
        self.split_a = ConvBNAct(c_in, hidden, 1, act=act)
        self.split_b = ConvBNAct(c_in, hidden, 1, act=act)
        stacks, c = [], hidden
        for _ in range(blocks):
            stacks.append(Stack(*(ConvBNAct(c if i == 0 else width, width, 3, act=act) for i in range(depth))))
            c = width
        self.stacks = nn.ModuleList(stacks)
        self.transition = ConvBNAct(2 * hidden + blocks * width, c_out, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        a, y = self.split_a(x), self.split_b(x)
        outputs = [a, y]
        for stack in self.stacks:
            y = stack(y)
            outputs.append(y)
        return self.transition(torch.cat(outputs, 1))


class OSAModule(nn.Module):
    """VoVNet one-shot aggregation: `layers` 3x3 convs in sequence; cat[input, every output],
    then a 1x1 transition to c_out (or, with transition=False, the concat is the output)."""

    def __init__(
        self,
        c_in: int,
        layers: int,
        growth: int,
        c_out: int | None = None,
        transition: bool = True,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if transition == (c_out is None):
            raise GradpathError("an OSA module takes c_out exactly when it has a transition")
        self.convs = nn.ModuleList(ConvBNAct(c_in if i == 0 else growth, growth, 3, act=act) for i in range(layers))
        c_cat = c_in + layers * growth
        self.transition = ConvBNAct(c_cat, c_out, 1, act=act) if transition else nn.Identity()
        self.in_channels, self.out_channels = c_in, c_out if c_out is not None else c_cat

    def forward(self, x: Tensor) -> Tensor:
        outputs, y = [x], x
        for conv in self.convs:
            y = conv(y)
            outputs.append(y)
        return self.transition(torch.cat(outputs, 1))


def aggregated_inputs(n: int, connectivity: str) -> list[int]:
    """Indices of the outputs that layer n aggregates (output 0 is the block input), ascending.

    Dense: 0..n-1. Sparse (SparseNet, Zhu et al. 2018): n-1, n-2, n-4, n-8, ... that are >= 0.
    The block output uses the same rule with n = layers + 1.
    """
    check_choice("connectivity", connectivity, CONNECTIVITIES)
    if connectivity == "dense":
        return list(range(n))
    inputs, offset = [], 1
    while offset <= n:
        inputs.append(n - offset)
        offset *= 2
    return sorted(inputs)


def _aggregated_width(sources: list[int], c_in: int, growth: int) -> int:
    return sum(c_in if i == 0 else growth for i in sources)


def aggregation_out_channels(c_in: int, layers: int, growth: int, connectivity: str) -> int:
    """Output width of an `AggregationBlock` (the width of what output layers + 1 aggregates)."""
    return _aggregated_width(aggregated_inputs(layers + 1, connectivity), c_in, growth)


def dense_layer(c_in: int, growth: int, bottleneck: int = 4, act: str = "relu") -> Stack:
    """DenseNet-BC layer: 1x1 to bottleneck * growth channels -> 3x3 to growth channels."""
    return Stack(ConvBNAct(c_in, bottleneck * growth, 1, act=act), ConvBNAct(bottleneck * growth, growth, 3, act=act))


class AggregationBlock(nn.Module):
    """DenseNet-BC (connectivity="dense") or SparseNet ("sparse") block of `layers` dense layers;
    layer n takes cat of the outputs `aggregated_inputs(n)`; the block returns that of n = layers+1."""

    def __init__(
        self, c_in: int, layers: int, growth: int, connectivity: str = "dense", bottleneck: int = 4, act: str = "relu"
    ) -> None:
        super().__init__()
        self.connectivity = connectivity
        self.sources = [aggregated_inputs(n, connectivity) for n in range(1, layers + 2)]
        self.layers = nn.ModuleList(
            dense_layer(_aggregated_width(src, c_in, growth), growth, bottleneck, act) for src in self.sources[:-1]
        )
        self.in_channels = c_in
        self.out_channels = aggregation_out_channels(c_in, layers, growth, connectivity)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        for layer, src in zip(self.layers, self.sources):
            outputs.append(layer(_cat([outputs[i] for i in src])))
        return _cat([outputs[i] for i in self.sources[-1]])


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)
