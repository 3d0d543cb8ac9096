"""Tasks that study a trained classifier (probes, measured spectra) start from its run: a
`target` classify config, trained here if it is not recorded yet (a classify run keeps its final
weights beside its record, git-ignored)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import GradpathError
from ..runs import TaskContext, ensure_run, normalize_config
from ..store import load_checkpoint, weights_path
from .classify import initial_model


def trained_target(config: dict[str, Any], ctx: TaskContext) -> tuple[dict[str, Any], nn.Module | None]:
    """(record, trained network on the CPU) of `config["target"]`; the network is None when the
    target run diverged. The target is trained first if needed, on the same device and folder."""
    target = normalize_config(config["target"])
    if target["task"] != "classify":
        raise GradpathError(f"the target of a {config['task']} run must be a classify config, "
                            f"not {target['task']!r} (build it with classify_config)")
    record = ensure_run(target, results_dir=ctx.results_dir, allow_train=True, device=str(ctx.device),
                        progress=ctx.progress)
    if record["status"] != "ok":
        return record, None
    state = load_checkpoint(weights_path(ctx.results_dir, target))
    if state is None:
        raise GradpathError(
            f"run {record['run_id']} is recorded but its weights {weights_path(ctx.results_dir, target)} are "
            "not on this machine (weights are git-ignored); move its record away to retrain it here")
    model = initial_model(target)
    model.load_state_dict(state)
    return record, model
