"""Every call of a weighted layer while a model runs, named as the traced graph names its positions.

A weighted layer is called as a module (an `nn.Linear`'s forward), or functionally on a weighted
module's own weight outside that module's forward: BEiT and EVA-02 run `F.linear(x, qkv.weight,
bias)` with a bias of their own, and a language model's output layer is often `F.linear(x,
embedding.weight)`. Both are positions of that module, counted in call order: (module name, call).
Module calls are seen by hooks, functional ones by a `TorchFunctionMode`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .op_tables import FUNCTIONAL_LAYERS, WEIGHTED_MODULES

Position = tuple[str, int]  # (module name, call index)
InputFn = Callable[[Any], Any]  # the input a layer reads -> the input it reads instead
OutputFn = Callable[[Position, torch.Tensor], torch.Tensor | None]  # None, or the output the model goes on with


def weight_owners(model: nn.Module) -> dict[int, str]:
    """id of each weighted module's own weight Parameter -> the name of the first module holding it."""
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, WEIGHTED_MODULES) and isinstance(weight, nn.Parameter):
            owners.setdefault(id(weight), name)
    return owners


def functional_weight(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The weight argument of an `F.linear` / `F.conv*d` / `F.embedding` call."""
    return args[1] if len(args) > 1 else kwargs.get("weight")


class _FunctionalCalls(TorchFunctionMode):
    """Hands each functional call on a weighted module's weight, made outside the forward of every
    module holding that weight, to `call`."""

    def __init__(self, owners: dict[int, str], inside: Counter[int],
                 call: Callable[[str, Any, tuple, dict], Any]) -> None:
        super().__init__()
        self.owners, self.inside, self.call = owners, inside, call

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in FUNCTIONAL_LAYERS and args:
            weight = id(functional_weight(args, kwargs))
            name = self.owners.get(weight)
            if name is not None and not self.inside[weight]:
                return self.call(name, func, args, kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def weighted_calls(model: nn.Module, on_output: OutputFn, on_input: InputFn | None = None) -> Iterator[None]:
    """While open, every weighted-layer call of `model` (see the module doc) reads `on_input(x)`
    instead of its input x (when given) and hands its output to `on_output((name, call), output)`,
    which may return a tensor for the model to go on with instead."""
    calls: Counter[str] = Counter()
    inside: Counter[int] = Counter()  # weights whose module's forward runs: its own F.linear is no other call

    def done(name: str, output: torch.Tensor) -> torch.Tensor | None:
        instead = on_output((name, calls[name]), output)
        calls[name] += 1
        return instead

    def functional(name: str, func: Any, args: tuple, kwargs: dict) -> Any:
        x = on_input(args[0]) if on_input else args[0]
        output = func(x, *args[1:], **kwargs)
        instead = done(name, output)
        return output if instead is None else instead

    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHTED_MODULES):
            continue

        def enter(module: nn.Module, args: tuple) -> tuple | None:
            inside[id(module.weight)] += 1
            return (on_input(args[0]), *args[1:]) if on_input and args else None

        def leave(module: nn.Module, _args: tuple, output: torch.Tensor, name: str = name) -> torch.Tensor | None:
            inside[id(module.weight)] -= 1
            return done(name, output)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with _FunctionalCalls(weight_owners(model), inside, functional):
            yield
    finally:
        for h in handles:
            h.remove()
