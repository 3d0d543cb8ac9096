"""Every call of a weighted layer while a model runs, named as the traced graph names its positions.

A weighted layer is called as a module (an `nn.Linear`'s forward), or functionally on a weight
Parameter outside the forward of a module holding it: BEiT and EVA-02 run `F.linear(x, qkv.weight,
bias)` with a bias of their own, a language model's output layer is often `F.linear(x,
embedding.weight)`, and custom layers keep a bare `nn.Parameter` and multiply by it (`x @ self.W`,
`torch.einsum("...d,de->...e", x, self.W)`, Hugging Face's GPT-2 `Conv1D`: `torch.addmm(bias, x,
weight)`). All are positions of the layer that
owns the weight (`weight_owners`), counted in call order: (name, call). Module calls are seen by
hooks, functional ones by a `TorchFunctionMode`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .op_tables import FUNCTIONAL_LAYERS, PARAMETER_PRODUCTS, WEIGHTED_MODULES

Position = tuple[str, int]  # (module name, call index)
InputFn = Callable[[Any], Any]  # the input a layer reads -> the input it reads instead
OutputFn = Callable[[Position, torch.Tensor], torch.Tensor | None]  # None, or the output the model goes on with


def weight_owners(model: nn.Module) -> dict[int, str]:
    """id of each weight Parameter -> the name of the weighted layer it makes: a weighted module's
    own weight is named by the first module holding it; any other Parameter of two or more dims
    (used by `F.linear` / `F.conv*d` / `F.embedding`, or as the right operand of a matmul) by the
    module holding it when it is that module's `weight`, else by its own qualified name."""
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, WEIGHTED_MODULES) and isinstance(weight, nn.Parameter):
            owners.setdefault(id(weight), name)
    for name, param in model.named_parameters():
        if param.ndim >= 2 and id(param) not in owners:
            module, _, attribute = name.rpartition(".")
            owners[id(param)] = module if attribute == "weight" and module else name
    return owners


def functional_weight(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The weight argument of an `F.linear` / `F.conv*d` / `F.embedding` call."""
    return args[1] if len(args) > 1 else kwargs.get("weight")


def einsum_subscripts(equation: str, ndims: list[int]) -> tuple[list[str], str]:
    """The subscripts of each operand and of the output of einsum `equation` on operands of
    `ndims` dims, with '...' spelled out in letters of its own (aligned from the right, as they
    broadcast) and an implicit output made explicit (the '...' dims, then the letters used once,
    sorted: torch's rule)."""
    inputs, arrow, output = equation.replace(" ", "").partition("->")
    subs = inputs.split(",")
    if not arrow:
        letters = "".join(subs).replace("...", "")
        output = ("..." if "..." in inputs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in equation]
    spans = [ndim - len(sub.replace("...", "")) if "..." in sub else 0 for sub, ndim in zip(subs, ndims)]
    ellipsis = "".join(spare[:max(spans, default=0)])
    subs = [sub.replace("...", ellipsis[len(ellipsis) - span:]) for sub, span in zip(subs, spans)]
    return subs, output.replace("...", ellipsis)


def einsum_form(x: str, w: str) -> str | None:
    """The output subscripts of einsum(x, W) as a product x @ W or x @ W.T (W's subscripts `w` two
    letters, one of them x's last, replaced by W's other), else None."""
    if len(w) != 2 or w[0] == w[1] or not x or x[-1] not in w or set(w) - {x[-1]} & set(x):
        return None
    return x[:-1] + w.replace(x[-1], "")


def weight_argument(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, int] | None:
    """(the weight, the index of the input it multiplies) of a call of `FUNCTIONAL_LAYERS` or of a
    product by a Parameter (`PARAMETER_PRODUCTS`, the weight on the right; an einsum of two
    operands read as x @ W, W a 2-d Parameter), else None."""
    if func in FUNCTIONAL_LAYERS:
        return functional_weight(args, kwargs), 0
    if func in PARAMETER_PRODUCTS and not kwargs:
        weight, inp = PARAMETER_PRODUCTS[func]
        if len(args) > weight and isinstance(args[weight], nn.Parameter) and args[weight].ndim == 2:
            return args[weight], inp
    if func is torch.einsum and not kwargs and len(args) == 3:  # einsum(equation, x, W) or (equation, W, x)
        for weight, inp in ((2, 1), (1, 2)):
            w, x = args[weight], args[inp]
            if isinstance(w, nn.Parameter) and w.ndim == 2 and not isinstance(x, nn.Parameter):
                subs, output = einsum_subscripts(args[0], [a.ndim for a in args[1:]])
                x_sub, w_sub = subs[inp - 1], subs[weight - 1]
                if einsum_form(x_sub, w_sub) == output and w_sub[0] == x_sub[-1]:
                    return w, inp
    return None


class _FunctionalCalls(TorchFunctionMode):
    """Hands each functional call on a weight (`weight_argument`), made outside the forward of every
    module holding that weight, to `call` with the index of the argument it reads as its input."""

    def __init__(self, owners: dict[int, str], inside: Counter[int],
                 call: Callable[[str, Any, tuple, dict, int], Any]) -> None:
        super().__init__()
        self.owners, self.inside, self.call = owners, inside, call

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.einsum and len(args) == 2 and isinstance(args[1], (tuple, list)):
            args = (args[0], *args[1])  # einsum(equation, [operands]) as einsum(equation, *operands)
        if args and (found := weight_argument(func, args, kwargs)) is not None:
            weight, inp = id(found[0]), found[1]
            name = self.owners.get(weight)
            if name is not None and not self.inside[weight]:
                return self.call(name, func, args, kwargs, inp)
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

    def functional(name: str, func: Any, args: tuple, kwargs: dict, inp: int) -> Any:
        if on_input:
            args = (*args[:inp], on_input(args[inp]), *args[inp + 1:])
        output = func(*args, **kwargs)
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
