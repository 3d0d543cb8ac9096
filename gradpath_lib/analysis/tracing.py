"""The model's `torch.fx` graph, for the gradient path analysis (`graph.trace_layers`).

`torch.fx.symbolic_trace` first: its proxies carry no values, so Python control flow on them
(`if H % window:`, `for blk in zip(...)`, `len(x)`) stops it. Then, for such a model, a trace that
runs the model on the example input while it records: every proxy carries the value it stands for,
so shapes, `len` and iteration are plain Python values, a branch on them is the one this input
shape takes, and the graph is the model as run at that shape (the only one the analysis reads it
at). A branch on the data itself is still refused. Weighted modules and their subclasses (a
weight-standardized conv, a conv with "same" padding) stay whole in both: each call of one is a
position. torch.nn's Transformer modules, which fx would keep whole as it keeps all of torch.nn's,
are traced through. Attributes a module sets while traced (a cache) are put back afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx._symbolic_trace import _maybe_revert_all_patches  # run the op itself, not its trace


from ..errors import GradpathError
from .op_tables import WEIGHTED_MODULES

# Read from a traced tensor's value, never recorded: what control flow and sizes are made of.
_CONCRETE_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "size", "dim", "numel", "is_cuda",
                             "is_floating_point", "is_complex", "is_contiguous", "stride", "element_size",
                             "requires_grad", "layout", "is_nested", "is_sparse", "is_quantized"})


# torch.nn's modules made of other modules: traced through, not kept whole as fx keeps torch.nn's.
_COMPOSITES = (nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
               nn.TransformerDecoderLayer)


_MADE_IN_FORWARD = "<made in forward>"  # the qualified name of a module that is no submodule of the model


class _Tracer(fx.Tracer):
    """fx's tracer, with the weighted modules kept whole, torch.nn's Transformer modules traced
    through, and so is a module without parameters or buffers that `forward` makes as it runs
    (DistilBERT's `nn.ReLU()(x)`): it is no submodule, so fx could not name it."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _COMPOSITES) or module_qualified_name == _MADE_IN_FORWARD:
            return False
        return isinstance(m, WEIGHTED_MODULES) or super().is_leaf_module(m, module_qualified_name)

    def path_of_module(self, mod: nn.Module) -> str:
        try:
            return super().path_of_module(mod)
        except NameError:
            if next(mod.parameters(), None) is not None or next(mod.buffers(), None) is not None:
                raise NameError(f"a {type(mod).__name__} with parameters or buffers made in forward, "
                                "not a submodule of the model (its weights would be new at each call)") from None
            return _MADE_IN_FORWARD


class _ValueProxy(fx.Proxy):
    """A proxy that also holds the value its node computes on the example input."""

    def __getattr__(self, k: str) -> Any:
        if k in _CONCRETE_ATTRS:
            return getattr(self.tracer.values[self.node], k)
        return super().__getattr__(k)

    def __len__(self) -> int:
        return len(self.tracer.values[self.node])

    def __setitem__(self, key: Any, value: Any) -> None:
        """x[key] = value, recorded as `operator.setitem` (run on the values, so it changes x's value too)."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class _ValueTracer(_Tracer):
    """`_Tracer` that runs each op it records on the values of its arguments (see the module doc)."""

    def __init__(self, inputs: tuple[Any, ...]) -> None:
        super().__init__()
        self.values: dict[fx.Node, Any] = {}
        self._inputs = iter(inputs)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def _value(self, arg: Any) -> Any:
        return fx.node.map_aggregate(arg, lambda a: self.values[a.node] if isinstance(a, fx.Proxy) else a)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any | None = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        values, kw = self._value(args), self._value(kwargs)
        with _maybe_revert_all_patches():
            self.values[proxy.node] = self._run(kind, target, values, kw)
        return proxy

    def _run(self, kind: str, target: Any, values: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if kind == "placeholder":
            return next(self._inputs, values[0] if values else None)
        if kind == "get_attr":
            value = self.root
            for part in target.split("."):
                value = getattr(value, part)
            return value
        if kind == "call_module":
            return self.root.get_submodule(target)(*values, **kw)
        if kind == "call_method":
            return getattr(values[0], target)(*values[1:], **kw)
        return target(*values, **kw)

    def to_bool(self, obj: fx.Proxy) -> bool:
        """Shapes are plain values here, so a condition on a proxy depends on the data: refused."""
        raise fx.proxy.TraceError(f"control flow depends on the data (the value of {obj.node.name!r}), "
                                  "not only on shapes: the branch taken would hold for this input alone")

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        return iter([obj[i] for i in range(len(self.values[obj.node]))])

    def keys(self, obj: fx.Proxy) -> Any:
        return self.values[obj.node].keys()


def _defaults(model: nn.Module) -> dict[str, Any]:
    """The forward's parameters after the first that have defaults (a mask=None): constants, so that
    `if mask is None` takes the branch the analysed call (the input alone) takes."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


_REGISTRIES = frozenset({"_parameters", "_buffers", "_modules"})


@contextlib.contextmanager
def _attributes_kept(model: nn.Module) -> Iterator[None]:
    """Put back every module's plain attributes after tracing: a model that caches a tensor on its
    first eval call (timm's attention biases) would otherwise keep a proxy of the trace."""
    saved = {m: {k: copy.copy(v) if isinstance(v, (dict, list, set)) else v
                 for k, v in vars(m).items() if k not in _REGISTRIES} for m in model.modules()}
    try:
        yield
    finally:
        for m, attrs in saved.items():
            for k in set(vars(m)) - _REGISTRIES - set(attrs):
                delattr(m, k)
            vars(m).update(attrs)


def _recorded_outputs(value: Any) -> Any:
    """The traced tensors of a model's output, kept in plain tuples and dicts; other objects (a
    language model's key-value cache, a None) dropped: torch.fx records tensors only, and they
    are the outputs a loss reads (as `graph.tensors_in` takes them from the model's own output)."""
    if isinstance(value, (torch.Tensor, fx.Proxy)):
        return value
    if isinstance(value, (tuple, list)):
        kept = (_recorded_outputs(v) for v in value)
        return tuple(v for v in kept if v is not None) or None
    if isinstance(value, dict):
        kept = {k: _recorded_outputs(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None} or None
    return None


@contextlib.contextmanager
def _plain_forward(model: nn.Module) -> Iterator[None]:
    """While tracing, give a model whose `forward` is wrapped by a decorator taking `*args,
    **kwargs` (Hugging Face's `can_return_tuple`, `check_model_inputs`), which hides its parameters
    from torch.fx, a one-input `forward` that calls it; the model is its class again afterwards."""
    cls = type(model)
    if not hasattr(cls.forward, "__wrapped__"):
        yield
        return

    def forward(self: nn.Module, x: torch.Tensor) -> Any:
        return _recorded_outputs(cls.forward(self, x))

    model.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                  "__qualname__": cls.__qualname__})
    try:
        yield
    finally:
        model.__class__ = cls


def symbolic_trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The fx graph of `model` (in eval mode, as the analysis runs it) called on `example`."""
    name = type(model).__name__
    try:
        with _attributes_kept(model), _plain_forward(model):
            return fx.GraphModule(model, _Tracer().trace(model, _defaults(model)), name)
    except Exception as err:  # fx raises many types; all mean "cannot be traced statically"
        symbolic_error = err
    try:
        with torch.no_grad(), _attributes_kept(model), _plain_forward(model):
            return fx.GraphModule(model, _ValueTracer((example,)).trace(model, _defaults(model)), name)
    except Exception as err:
        raise GradpathError(
            f"torch.fx cannot trace {name} ({type(symbolic_error).__name__}: {symbolic_error}), nor can a "
            f"trace that runs it on the example input ({type(err).__name__}: {err})"
        ) from err
