"""Which channels of a network must be kept or dropped together, and the surgery that keeps a subset.

`trace_channels` traces a model with torch.fx and splits its channels into *groups*: the output
channels of a conv form a group, and groups joined by a residual add become ONE group (a channel
dropped from one summand must be dropped from all). Concatenations are tracked as lists of
groups ("segments"). The network input and output are fixed groups that are never shrunk.

Given a boolean keep-mask per group, `masked` zeroes the dropped channels of the wide network in
place (forward hooks on every conv and BatchNorm output), and `slice_network` copies the kept
weights into a smaller dense network that computes the same function (activations must map 0 to
0, as ReLU/SiLU/LeakyReLU/Mish do). `flops` counts FLOPs (2 x MACs of convs and linears, the
convention of torch's FlopCounterMode) for any channel counts without building the network.

Supported: Conv2d (groups=1, or depthwise: one filter per channel, whose output channels are
its input channels, kept or dropped with them), BatchNorm2d and the SyncBatchNorm that data
parallelism makes of it (any `_BatchNorm`), Linear, parameter-free activations/pooling/identity,
`+`, `torch.cat(..., 1)`, `.detach()`, flatten, means over the spatial dims; anything that reads a channel range (`x[:, a:b]`)
or other grouped convs (their groups would have to shrink evenly) raise a GradpathError naming
the operation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import GradpathError

PASS_THROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.LeakyReLU, nn.Mish, nn.Hardswish, nn.Identity, nn.Dropout, nn.Flatten,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
)
PASS_THROUGH_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.silu, F.leaky_relu, F.mish, torch.flatten, F.adaptive_avg_pool2d,
    F.max_pool2d, F.avg_pool2d, F.interpolate, operator.mul, operator.truediv,
}
PASS_THROUGH_METHODS = {"detach", "flatten", "contiguous", "relu", "mul", "div"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
NON_TENSOR_METHODS = {"size", "dim"}
# _BatchNorm: BatchNorm2d, and the SyncBatchNorm that `distributed.data_parallel` makes of it on CUDA
WEIGHTED = (nn.Conv2d, _BatchNorm, nn.Linear)


@dataclass
class LayerChannels:
    """The channel groups one weighted layer reads (`inputs`, in order) and writes (`output`)."""

    inputs: list[int]
    output: int | None  # conv/linear: its own output group; BatchNorm, depthwise conv: None (it keeps `inputs`)
    depthwise: bool = False  # a depthwise conv: output channel c is input channel c filtered


@dataclass
class ChannelGraph:
    """Channel groups of a traced network and the weighted layers that use them."""

    sizes: list[int]  # channels per group
    fixed: list[bool]  # network input/output groups, never shrunk
    layers: dict[str, LayerChannels]  # module name -> channels it reads/writes, in data-path order
    flop_terms: list[tuple[list[int], int | None, int]] = field(default_factory=list)
    # one per conv/linear call: (input groups, output group, FLOPs per (input, output) channel pair);
    # a depthwise conv's output group is None: (input groups, None, FLOPs per channel)

    def flops(self, counts: list[int]) -> int:
        """FLOPs for one input (2 x MACs of convs and linears) with `counts[g]` channels in group g."""
        return sum(unit * sum(counts[g] for g in ins) * (1 if out is None else counts[out])
                   for ins, out, unit in self.flop_terms)

    def prunable(self) -> list[int]:
        """The groups that may be shrunk."""
        return [g for g, fixed in enumerate(self.fixed) if not fixed]

    def conv_widths(self, counts: list[int]) -> dict[str, int]:
        """Output width of every conv layer (data-path order) under `counts`."""
        return {name: counts[layer.output] for name, layer in self.layers.items() if layer.output is not None
                and not self.fixed[layer.output]}


class _Tracer:
    """Walks an fx graph once, assigning channel groups with union-find for residual ties."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.fixed: list[bool] = []
        self.layers: dict[str, LayerChannels] = {}
        self.flop_terms: list[tuple[list[int], int, int]] = []

    def new_group(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.sizes.append(size)
        self.fixed.append(fixed)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def tie(self, a: list[int], b: list[int], where: str) -> None:
        """Make the segments `a` and `b` (added elementwise) one set of groups."""
        if [self.sizes[self.find(g)] for g in a] != [self.sizes[self.find(g)] for g in b]:
            raise GradpathError(f"{where}: adds feature maps split into different channel groups; "
                                "LW-DNA cannot tie their channels")
        for x, y in zip(a, b):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                self.fixed[rx] = self.fixed[rx] or self.fixed[ry]

    def width(self, segments: list[int]) -> int:
        return sum(self.sizes[self.find(g)] for g in segments)

    def weighted(self, node: fx.Node, module: nn.Module, segments: list[int]) -> list[int]:
        """Record a conv/BN/linear call and return the segments of its output."""
        name = str(node.target)
        seen = self.layers.get(name)
        expected = (module.num_features if isinstance(module, _BatchNorm) else
                    module.in_channels if isinstance(module, nn.Conv2d) else module.weight.shape[1])
        if self.width(segments) != expected:
            raise GradpathError(f"{name}: reads {self.width(segments)} traced channels, expected {expected}")
        depthwise = isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels
        if isinstance(module, nn.Conv2d) and module.groups != 1 and not depthwise:
            raise GradpathError(f"{name}: grouped convolutions other than depthwise (groups={module.groups} of "
                                f"{module.in_channels} input channels) are not supported: their groups would "
                                "have to shrink evenly")
        if seen is not None:  # a shared module called again: its channels are the same channels
            self.tie(seen.inputs, segments, name)
        if isinstance(module, _BatchNorm) or depthwise:
            if seen is None:
                self.layers[name] = LayerChannels(segments, None, depthwise)
            if depthwise:
                self.flop_terms.append((segments, None, 2 * _positions(node) * math.prod(module.kernel_size)))
            return segments
        out = seen.output if seen is not None else self.new_group(
            module.weight.shape[0], fixed=isinstance(module, nn.Linear))
        if seen is None:
            self.layers[name] = LayerChannels(segments, out)
        kernel = math.prod(module.weight.shape[2:]) if module.weight.dim() > 2 else 1
        self.flop_terms.append((segments, out, 2 * kernel * _positions(node)))
        return [out]

    def run(self, example: torch.Tensor) -> ChannelGraph:
        gm = fx.symbolic_trace(self.model)
        ShapeProp(gm).propagate(example)
        segs: dict[fx.Node, list[int]] = {}
        for node in gm.graph.nodes:
            result = self.visit(node, gm, segs)
            if result is not None:
                segs[node] = result
        return self.finish()

    def visit(self, node: fx.Node, gm: fx.GraphModule, segs: dict[fx.Node, list[int]]) -> list[int] | None:
        tensor_args = [a for a in node.args if isinstance(a, fx.Node) and a in segs]
        if node.op == "placeholder":
            return [self.new_group(node.meta["tensor_meta"].shape[1], fixed=True)]
        if node.op == "output":
            for g in _flat_segments(node.args[0], segs):
                self.fixed[self.find(g)] = True
            return None
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(module, WEIGHTED):
                return self.weighted(node, module, segs[node.args[0]])
            if isinstance(module, PASS_THROUGH_MODULES):
                return segs[node.args[0]]
            raise GradpathError(f"{node.target}: module type {type(module).__name__} is not supported by "
                                "channel tracing")
        if node.op == "call_function" and node.target in ADD_FUNCTIONS and len(tensor_args) == 2:
            self.tie(segs[tensor_args[0]], segs[tensor_args[1]], str(node.name))
            return segs[tensor_args[0]]
        if node.op == "call_function" and node.target is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim != 1:
                raise GradpathError(f"{node.name}: concatenation along dim {dim}; only channels (dim 1) are supported")
            return [g for part in node.args[0] for g in segs[part]]
        passes = (node.op == "call_function" and node.target in PASS_THROUGH_FUNCTIONS | ADD_FUNCTIONS) or (
            node.op == "call_method" and node.target in PASS_THROUGH_METHODS) or _spatial_mean(node)
        if passes and len(tensor_args) == 1:
            return segs[tensor_args[0]]
        if not tensor_args or (node.op == "call_method" and node.target in NON_TENSOR_METHODS):
            return None
        raise GradpathError(f"{node.name}: operation {node.target} on a feature map is not supported by "
                            "channel tracing (channel slicing x[:, a:b] cannot be shrunk)")

    def finish(self) -> ChannelGraph:
        roots = sorted({self.find(g) for g in range(len(self.parent))})
        index = {r: i for i, r in enumerate(roots)}

        def remap(g: int) -> int:
            return index[self.find(g)]

        layers = {name: LayerChannels([remap(g) for g in layer.inputs],
                                      None if layer.output is None else remap(layer.output), layer.depthwise)
                  for name, layer in self.layers.items()}
        terms = [([remap(g) for g in ins], None if out is None else remap(out), unit) for ins, out, unit in self.flop_terms]
        return ChannelGraph([self.sizes[r] for r in roots], [self.fixed[r] for r in roots], layers, terms)


def _spatial_mean(node: fx.Node) -> bool:
    """`x.mean(dims)` / `torch.mean(x, dims)` over dims that leave the channels (dim 1) alone."""
    if not (node.op == "call_method" and node.target == "mean" or node.op == "call_function"
            and node.target is torch.mean):
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    ndim = len(node.args[0].meta["tensor_meta"].shape)
    return dims is not None and 1 not in {d % ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}


def _positions(node: fx.Node) -> int:
    """The spatial positions of a node's output (1 for a Linear's)."""
    shape = node.meta["tensor_meta"].shape
    return math.prod(shape[2:]) if len(shape) > 2 else 1


def _flat_segments(value: object, segs: dict[fx.Node, list[int]]) -> list[int]:
    if isinstance(value, fx.Node):
        return segs.get(value, [])
    if isinstance(value, (list, tuple)):
        return [g for v in value for g in _flat_segments(v, segs)]
    if isinstance(value, dict):
        return [g for v in value.values() for g in _flat_segments(v, segs)]
    return []


def trace_channels(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """The channel groups of `model` for inputs of `input_shape` (N, C, H, W); N = 1 for FLOPs."""
    example = torch.zeros(1, *input_shape[1:])
    was_training = model.training
    model.eval()
    try:
        return _Tracer(model).run(example)
    finally:
        model.train(was_training)


def counts_of(keep: list[torch.Tensor]) -> list[int]:
    """Channel counts per group of boolean keep-masks."""
    return [int(k.sum()) for k in keep]


def _segment_mask(keep: list[torch.Tensor], segments: list[int]) -> torch.Tensor:
    return torch.cat([keep[g] for g in segments])


@contextlib.contextmanager
def masked(model: nn.Module, graph: ChannelGraph, keep: list[torch.Tensor]) -> Iterator[nn.Module]:
    """`model` with the dropped channels zeroed at every conv and BatchNorm output, inside the block."""

    def hook_for(mask: torch.Tensor):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            return output * mask.to(output.device, output.dtype).view(1, -1, *([1] * (output.dim() - 2)))
        return hook

    handles = []
    for name, layer in graph.layers.items():
        segments = layer.inputs if layer.output is None else [layer.output]
        handles.append(model.get_submodule(name).register_forward_hook(hook_for(_segment_mask(keep, segments))))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _sliced(module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor | None) -> nn.Module:
    """A copy of a conv/BN/linear module keeping input channels `in_idx` and outputs `out_idx` (None:
    the module keeps its input channels, a BatchNorm or a depthwise conv)."""
    if isinstance(module, _BatchNorm):  # the same class: a SyncBatchNorm stays one, in its process group
        new = type(module)(len(in_idx), module.eps, module.momentum, module.affine, module.track_running_stats)
        if isinstance(module, nn.SyncBatchNorm):
            new.process_group = module.process_group
        state = {k: (v if v.dim() == 0 else v[in_idx]) for k, v in module.state_dict().items()}
    elif out_idx is None:  # a depthwise conv: one filter per kept channel
        new = nn.Conv2d(len(in_idx), len(in_idx), module.kernel_size, module.stride, module.padding,
                        module.dilation, groups=len(in_idx), bias=module.bias is not None,
                        padding_mode=module.padding_mode)
        state = {"weight": module.weight[in_idx]} | ({"bias": module.bias[in_idx]} if module.bias is not None else {})
    else:
        weight = module.weight[out_idx][:, in_idx]
        if isinstance(module, nn.Linear):
            new = nn.Linear(len(in_idx), len(out_idx), bias=module.bias is not None)
        else:
            new = nn.Conv2d(len(in_idx), len(out_idx), module.kernel_size, module.stride, module.padding,
                            module.dilation, bias=module.bias is not None, padding_mode=module.padding_mode)
        state = {"weight": weight} | ({"bias": module.bias[out_idx]} if module.bias is not None else {})
    new.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return new.to(next(iter(module.state_dict().values())).device).train(module.training)


def slice_network(model: nn.Module, graph: ChannelGraph, keep: list[torch.Tensor]) -> nn.Module:
    """A deep copy of `model` whose conv/BN/linear layers hold only the kept channels' weights."""
    narrow = copy.deepcopy(model)
    kept = [torch.nonzero(k).flatten() for k in keep]
    replacement: dict[int, nn.Module] = {}
    for name, layer in graph.layers.items():
        offsets = [0]
        for g in layer.inputs:
            offsets.append(offsets[-1] + graph.sizes[g])
        in_idx = torch.cat([kept[g] + off for g, off in zip(layer.inputs, offsets)])
        out_idx = None if layer.output is None else kept[layer.output]
        module = narrow.get_submodule(name)
        replacement[id(module)] = _sliced(module, in_idx, out_idx)
    for parent in list(narrow.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacement:
                setattr(parent, child_name, replacement[id(child)])
    return narrow
