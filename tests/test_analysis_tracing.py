"""Models that `torch.fx.symbolic_trace` cannot trace because Python control flow reads their
shapes are traced while they run on the example input (`analysis.tracing`); a branch on the data
is still refused, and nothing a model caches while traced stays behind."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from gradpath_lib.analysis import analyze_model
from gradpath_lib.errors import GradpathError

from conftest import assert_structure_is_measured

C = 4


def conv(c_in: int = C, c_out: int = C) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class Windowed(nn.Module):
    """Pads to a multiple of its window only when needed, and runs one conv per channel half, both
    decided by Python on the input's shape (as Swin-like and two-branch models do)."""

    def __init__(self, window: int = 4):
        super().__init__()
        self.window = window
        self.stem = conv(3, C)
        self.halves = nn.ModuleList([conv(C // 2, C // 2), conv(C // 2, C // 2)])
        self.head = conv()

    def forward(self, x):
        x = self.stem(x)
        _, _, h, w = x.shape
        if h % self.window or w % self.window:
            x = F.pad(x, (0, -w % self.window, 0, -h % self.window))
        parts = x.chunk(len(self.halves), dim=1)
        outs = [block(part) for block, part in zip(self.halves, parts)]
        if len(outs) > 1:
            x = x + torch.cat(outs, dim=1)
        return self.head(x)


class Cached(nn.Module):
    """Caches a tensor on its first call in eval mode (timm's attention-bias cache)."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = conv(3, C), conv()
        self.scale = nn.Parameter(torch.ones(C, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        if not self.training:
            if "scale" not in self.cache:
                self.cache["scale"] = self.scale * 2
            scale = self.cache["scale"]
        else:
            scale = self.scale * 2
        return self.conv(self.stem(x) * scale)


class Masked(nn.Module):
    """An optional argument that defaults to None: the analysed call passes the input alone."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, C), conv()

    def forward(self, x, mask=None):
        y = self.a(x)
        if mask is not None:
            y = y * mask
        return self.b(y)


class DataBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv = conv(3, C), conv()

    def forward(self, x):
        y = self.stem(x)
        for _ in range(y.shape[1] // C):  # a loop over a shape: fine
            y = y + 0
        return self.conv(y) if y.mean() > 0 else y  # a branch on the data: refused


def timestamps(report, layer: str) -> list[tuple[int, ...]]:
    return [g.timestamps for g in report.groups if g.position.name == layer]


def test_shape_control_flow_is_traced_on_the_example_input():
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(Windowed())  # what plain fx makes of it
    for shape in [(3, 8, 8), (3, 6, 6)]:  # without and with the pad
        report = analyze_model(Windowed(), shape)
        assert {p.name for p in report.graph.positions} == {"stem", "halves.0", "halves.1", "head"}
        assert timestamps(report, "stem") == [(2, 3)] * 2  # through the identity, or its half's conv
        assert_structure_is_measured(Windowed(), shape, report)


def test_a_branch_on_the_data_is_refused():
    with pytest.raises(GradpathError, match="control flow depends on the data"):
        analyze_model(DataBranch(), (3, 4, 4))


class Assigned(nn.Module):
    """MViTv2's `attn[:, :, 1:, 1:] = ...` in miniature: item assignments into traced tensors, one
    into some rows (which then differ from the first), one of a constant into one channel."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.head = conv(3, C), conv(), conv()

    def forward(self, x):
        y = self.stem(x)
        y[:, :, 1:] = self.conv(y)[:, :, 1:]
        z = self.head(y)
        z[:, 0] = 0.5
        return z


class AssignedView(Assigned):
    def forward(self, x):
        y = self.stem(x)
        y[:, :2][:, 0] = 0.0  # the view y[:, :2] is written: y changes too
        return self.head(y)


def test_item_assignment_is_followed_region_by_region():
    report = analyze_model(Assigned(), (3, 4, 4))
    stem, conv_ = timestamps(report, "stem"), timestamps(report, "conv")
    assert stem == [(2, 3)] and conv_ == [(2,)]  # the first row skips the conv; z's channel 0 is constant
    head = {(g.start, g.timestamps) for g in report.groups if g.position.name == "head"}
    assert head == {(0, ()), (1, (1,))}
    assert_structure_is_measured(Assigned(), (3, 4, 4), report)


class AssignedChannel(Assigned):
    def forward(self, x):
        y = self.stem(x)
        y[:, 1] = self.conv(y)[:, 2]  # a lower-rank value into one channel
        return self.head(y)


def test_item_assignment_into_one_channel_replaces_its_paths():
    report = analyze_model(AssignedChannel(), (3, 4, 4))
    stem = {(g.start, g.timestamps) for g in report.groups if g.position.name == "stem"}
    assert stem == {(0, (2, 3)), (1, (3,)), (2, (2, 3))}  # channel 1 reaches the head only through the conv
    assert_structure_is_measured(AssignedChannel(), (3, 4, 4), report)


def test_item_assignment_into_a_view_is_refused_by_name():
    with pytest.raises(GradpathError, match="item assignment into a tensor that .stem., still to be used, views"):
        analyze_model(AssignedView(), (3, 4, 4))


def test_an_optional_none_argument_takes_the_branch_of_the_call_without_it():
    report = analyze_model(Masked(), (3, 4, 4))
    assert timestamps(report, "a") == [(2,)]
    assert_structure_is_measured(Masked(), (3, 4, 4), report)


def test_what_the_model_caches_while_traced_is_put_back():
    model = Cached().eval()
    report = analyze_model(model, (3, 4, 4))
    assert timestamps(report, "stem") == [(2,)]
    assert all(isinstance(v, torch.Tensor) for v in model.cache.values())  # no proxy of the trace left
    assert not model.training
    assert isinstance(model(torch.randn(1, 3, 4, 4)), torch.Tensor)


class MadeInForward(nn.Module):
    """Makes an activation module as it runs (DistilBERT's `nn.ReLU()(x)`), or a Linear, whose
    weights would be new at each call."""

    def __init__(self, make: type[nn.Module]):
        super().__init__()
        self.make, self.a, self.head = make, conv(3, C), nn.Linear(C, 3)

    def forward(self, x):
        y = self.a(x).mean((2, 3))
        return self.head(self.make()(y) if self.make is nn.ReLU else self.make(C, C)(y))


def test_a_module_made_in_forward_is_traced_through_when_it_holds_no_weights():
    model = MadeInForward(nn.ReLU)
    report = analyze_model(model, (3, 8, 8))
    assert report.network["n_weighted_layers"] == 2
    assert_structure_is_measured(model, (3, 8, 8), report=report)
    with pytest.raises(GradpathError, match="a Linear with parameters or buffers made in forward"):
        analyze_model(MadeInForward(nn.Linear), (3, 8, 8))


def _takes_any_arguments(forward):
    """A decorator as Hugging Face's (`can_return_tuple`): `*args, **kwargs` hide forward's own."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        return tuple(output.values()) if kwargs.get("return_dict") is False else output

    return wrapper


class KeyCache:
    """A language model's key cache: starts as a 1-d empty tensor that `torch.cat` skips."""

    def __init__(self) -> None:
        self.keys = torch.tensor([])

    def update(self, keys: torch.Tensor) -> torch.Tensor:
        self.keys = torch.cat([self.keys, keys], dim=-2)
        return self.keys


class Decorated(nn.Module):
    """Tokens × features in, a dict out holding the logits and a cache (not a tensor)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(C, C), nn.Linear(C, 3)

    @_takes_any_arguments
    def forward(self, x, mask=None, use_cache=True):
        cache = KeyCache() if use_cache else None
        keys = self.a(x) if cache is None else cache.update(self.a(x))
        return {"logits": self.b(keys), "cache": cache}


def test_a_forward_behind_a_decorator_taking_any_arguments_is_traced_as_it_runs():
    model = Decorated().eval()
    report = analyze_model(model, (5, C))
    assert timestamps(report, "a") == [(2,)] and timestamps(report, "b") == [(1,)]
    assert type(model) is Decorated and isinstance(model(torch.randn(1, 5, C))["cache"], KeyCache)
    assert_structure_is_measured(model, (5, C), report=report)
