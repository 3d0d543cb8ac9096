"""Model cost: parameter count and FLOPs of one input (FLOPs = 2 x multiply-accumulates)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (every `p.numel()`; a parameter shared by several layers counts once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass in eval mode on one zero input of `input_shape` (C, H, W), as
    counted by torch's FlopCounterMode (2 FLOPs per multiply-accumulate of convs and linears).

    The input goes on the model's device: a model built under `torch.device("meta")` is counted
    without computing anything.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def cost_table(
    scale: str = "mini", input_size: int = 32, task: str | None = None, names: Sequence[str] = ()
) -> "pandas.DataFrame":
    """One row per registered model (or per name in `names`, plus their bases): family, task, params,
    FLOPs on one RGB `input_size`^2 image, and for variants (entries with a `base`) their FLOPs and
    params relative to that base."""
    import pandas

    from .registry import create_model, get_entry, model_names

    wanted = set(names) | {get_entry(n).base for n in names} - {None}
    rows = []
    for name in [n for n in model_names(task) if not names or n in wanted]:
        entry = get_entry(name)
        with torch.device("meta"):  # shapes only: counting costs no compute or memory
            model = create_model(name, scale)
        rows.append(
            {
                "model": name,
                "family": entry.family,
                "task": entry.task,
                "params": count_params(model),
                "flops": count_flops(model, (3, input_size, input_size)),
                "base": entry.base,
            }
        )
    table = pandas.DataFrame(rows).set_index("model")
    bases = table.reindex(table["base"])
    table["flops_vs_base"] = (table["flops"] / bases["flops"].to_numpy()).round(3)
    table["params_vs_base"] = (table["params"] / bases["params"].to_numpy()).round(3)
    return table
