"""Model cost: parameter count and FLOPs of one input (FLOPs = 2 x multiply-accumulates)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import GradpathError

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas


def count_params(model: nn.Module) -> int:
    """Number of parameters (every `p.numel()`; a parameter shared by several layers counts once)."""
    return sum(p.numel() for p in model.parameters())


def _attention_flops(query: Sequence[int], key: Sequence[int], value: Sequence[int], *args: object,
                     out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of scaled-dot-product attention from its operands' shapes: Q K^T and (softmax) V, in full."""
    batch, s_q, s_k = math.prod(query[:-2]), query[-2], key[-2]
    return 2 * batch * s_q * s_k * (query[-1] + value[-1])


# torch's FlopCounterMode knows the CUDA attention kernels but not the CPU one (torch 2.13), and
# would count attention as free on the CPU
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}


def count_flops(model: nn.Module, input_shape: Sequence[int], input_dtype: torch.dtype = torch.float32) -> int:
    """FLOPs of one forward pass in eval mode on one zero input of `input_shape` (C, H, W) and
    `input_dtype` (an integer type for token ids), as counted by torch's FlopCounterMode (2 FLOPs
    per multiply-accumulate of convs, linears and attention's matmuls; an embedding lookup counts
    none).

    The input goes on the model's device: a model built under `torch.device("meta")` is counted
    without computing anything.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, dtype=input_dtype, device=param.device if param is not None else "cpu")
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


CLASSIFY_INPUT = 32  # the classifiers' CIFAR-size input side


def default_input(task: str, scale: str) -> int:
    """The square input side a `task` model takes at `scale`: 32 for classifiers, the canvas for detectors."""
    from .yolor import INPUT_SIZES

    return INPUT_SIZES[scale] if task == "detect" else CLASSIFY_INPUT


def check_input(side: int, name: str, task: str) -> int:
    """`side`, or an error naming model `name` when it cannot take a side x side input."""
    from .detector import STRIDES

    multiple = STRIDES[-1] if task == "detect" else 1
    if side < 1 or side % multiple:
        raise GradpathError(f"input size {side} does not fit {name!r}: use a positive multiple of {multiple}"
                            if multiple > 1 else f"input size {side} is not positive; use e.g. {CLASSIFY_INPUT}")
    return side


def cost_table(
    scale: str = "mini", input_size: int | None = None, task: str | None = None, names: Sequence[str] = ()
) -> pandas.DataFrame:
    """One row per registered model (or per name in `names`, plus their bases): family, task, params,
    FLOPs on one RGB `input_size`^2 image (None: each model's `default_input`), and for variants
    (entries with a `base`) their FLOPs and params relative to that base.

    When detectors are listed, columns `input` (the side used), `flops_640` and `flops_640_vs_base`
    add every detector's FLOPs at the paper's 640x640 COCO input (empty for classifiers).
    """
    import pandas

    from .registry import create_model, get_entry, model_names
    from .yolor import PAPER_INPUT

    wanted = set(names) | {get_entry(n).base for n in names} - {None}
    rows = []
    for name in [n for n in model_names(task) if not names or n in wanted]:
        entry = get_entry(name)
        side = check_input(default_input(entry.task, scale) if input_size is None else input_size, name, entry.task)
        with torch.device("meta"):  # shapes only: counting costs no compute or memory
            model = create_model(name, scale)
        rows.append({
            "model": name,
            "family": entry.family,
            "task": entry.task,
            "params": count_params(model),
            "flops": count_flops(model, (3, side, side)),
            "base": entry.base,
            "input": side,
            "flops_paper": count_flops(model, (3, PAPER_INPUT, PAPER_INPUT)) if entry.task == "detect" else None,
        })
    if not rows:
        raise GradpathError(f"none of {', '.join(names)} is a {task!r} model; {task} models: "
                            f"{', '.join(model_names(task))}")
    table = pandas.DataFrame(rows).set_index("model")
    bases = table.reindex(table["base"])
    table["flops_vs_base"] = _ratio(table["flops"], bases["flops"])
    table["params_vs_base"] = _ratio(table["params"], bases["params"])
    columns = ["family", "task", "params", "flops", "base", "flops_vs_base", "params_vs_base"]
    if table["flops_paper"].isna().all():
        return table[columns]
    paper = f"flops_{PAPER_INPUT}"
    table[paper] = table["flops_paper"].astype("Int64")  # <NA> for classifiers
    table[f"{paper}_vs_base"] = _ratio(table["flops_paper"], bases["flops_paper"])
    return table[[*columns[:2], "input", *columns[2:], paper, f"{paper}_vs_base"]]


def _ratio(values: "pandas.Series", base_values: "pandas.Series") -> "pandas.Series":
    """values / base_values row by row (NaN without a base), rounded to 3 decimals."""
    return (values.astype(float) / base_values.astype(float).to_numpy()).round(3)
