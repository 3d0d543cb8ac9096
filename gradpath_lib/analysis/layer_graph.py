"""The weighted-layer DAG the analysis builds (`graph.trace_layers`) and reads (`paths`): positions
(one call of a weighted layer each), the channel ranges each consumer takes from each producer,
and the id of the model's output, the loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

LOSS = -2  # consumer id of the model's output (the loss)


@dataclass(frozen=True)
class Position:
    """One call of a weighted module: its id, module name, call index, output channels, module
    type, the dimension of its output tensor that holds those channels, the name of the module
    whose weight it uses (itself, unless the weight is tied to an earlier module's, as a language
    model ties its output layer to its token embedding), the rank of its output, and how many
    copies of its output channels the analysis tells apart (more than 1 when its input differs
    along token positions or folded heads: copy j's channels are slots
    [j * out_channels, (j + 1) * out_channels) of the edges)."""

    id: int
    module: str
    call: int
    out_channels: int
    kind: str
    axis: int = 1
    parameter: str = ""
    ndim: int = 4
    copies: int = 1

    @property
    def name(self) -> str:
        """`module` for its first call, `module@k` for its (k+1)-th call."""
        return self.module if self.call == 0 else f"{self.module}@{self.call}"


class Edge(NamedTuple):
    """Position `consumer` takes channels [lo, hi) of `producer`, and they reach its output
    channels [out_lo, out_hi): all of them, unless the consumer is a grouped convolution."""

    consumer: int
    producer: int
    lo: int
    hi: int
    out_lo: int
    out_hi: int


@dataclass
class LayerGraph:
    """Weighted-layer positions, the channel ranges each consumer takes from each producer, the
    distinct producers each position aggregates in its input (forward view), and whether the
    model changes a traced tensor in place (x[...] = v, x.add_(y): the measured check then copies)."""

    positions: list[Position] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    aggregated: dict[int, int] = field(default_factory=dict)  # position id -> producers in its input
    assigns: bool = False


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or dict of outputs."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    return []
