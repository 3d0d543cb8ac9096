"""Classification training recipes, one per scale: data with the reason for every number.

A recipe is part of a run's config (as a dict), so changing any field gives a new run id.
Evidence: the `smoke` recipe is measured by the test suite (a tiny convnet beats chance on the
generated smoke data in seconds on CPU). The `mini` recipe is NOT yet measured here (no GPU was
available when it was written); it follows the well-known fast CIFAR-10 recipes (short
warm-up + linear decay, SGD Nesterov, label smoothing, pad-crop + flip) and is expected to bring
a ResNet-class model above 90 % test accuracy well within a GPU-minute on an H100; the first
mini run's record is its evidence. The `paper` recipe is the paper's ImageNet setting, streamed
from an ImageNet folder by `gradpath_lib.data.imagenet` (not trained here: no ImageNet).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

import pandas as pd

from ..errors import GradpathError, check_choice
from ..scales import check_scale

SCHEDULES = ("linear", "cosine")
# torch.compile modes a recipe may name: "off" (eager), "default", "reduce-overhead" (CUDA graphs).
COMPILE_MODES = ("off", "default", "reduce-overhead")
COMPILE_WHY = ("torch.compile mode of the model: \"off\" (eager), \"default\" or \"reduce-overhead\" (CUDA "
               "graphs). Off until `gradpath bench train --variants eager compile cudagraphs` shows that "
               "compiling repays its compile time within one run of the scale.")


def why(reason: str, default: Any = MISSING) -> Any:
    """A dataclass field carrying the reason for its value (shown by `recipe_table`)."""
    return field(metadata={"why": reason}) if default is MISSING else field(default=default, metadata={"why": reason})


def recipe_table(recipes: Mapping[str, Any]) -> pd.DataFrame:
    """One row per field of the recipes (dataclasses keyed by scale): its value per scale and why."""
    first = next(iter(recipes.values()))
    rows = [{"field": f.name, **{scale: getattr(r, f.name) for scale, r in recipes.items()},
             "why": f.metadata.get("why", "")} for f in fields(first)]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Recipe:
    """How a classifier is trained; every field says why it has its value."""

    epochs: int = why("Passes over the training set; the smallest count that reaches the scale's target.")
    batch_size: int = why("Images per optimizer step; large enough to "
                          "keep a GPU busy, small enough to generalize.")
    lr: float = why("Peak learning rate of SGD, reached at the end of warm-up (tuned together with batch_size).")
    momentum: float = why("SGD momentum; 0.9 is the standard value for ResNet-style networks.", 0.9)
    nesterov: bool = why("Nesterov momentum: slightly better and more "
                         "stable than heavy-ball at high learning rates.", True)
    weight_decay: float = why("L2 weight decay on conv / linear weights "
                              "only (norm scales and biases are not decayed).", 5e-4)
    label_smoothing: float = why("Label smoothing: cheap regularization "
                                 "that helps short schedules generalize.", 0.1)
    warmup_fraction: float = why("Fraction of all steps spent linearly "
                                 "warming the learning rate up from zero.", 0.1)
    schedule: str = why("Decay after warm-up, per step down to "
                        "zero: \"linear\" (fast schedules) or \"cosine\".", "linear")
    crop_padding: int = why("Random-crop padding in pixels (0 turns the crop off); 4 px is the CIFAR standard.", 4)
    flip: bool = why("Random horizontal flips (CIFAR classes are mirror-symmetric).", True)
    compile: str = why(COMPILE_WHY, "off")
    eval_batch_size: int = why("Images per evaluation step (no gradients, "
                               "so larger than batch_size is fine).", 1024)


RECIPES: dict[str, Recipe] = {
    # Seconds on a CPU: a few passes over the 512 generated smoke images.
    "smoke": Recipe(epochs=3, batch_size=64, lr=0.05, weight_decay=5e-4, warmup_fraction=0.2,
                    eval_batch_size=256),
    # One GPU, CIFAR-10: batch 512 with peak lr 0.2 and 18 epochs (unmeasured, see the docstring).
    "mini": Recipe(epochs=18, batch_size=512, lr=0.2, weight_decay=5e-4, label_smoothing=0.1,
                   warmup_fraction=0.15),
    # The paper's ImageNet setting (streamed by gradpath_lib.data.imagenet): SGD 0.1 per 256
    # images, 100 epochs, cosine decay. crop_padding > 0 stands for RandomResizedCrop, then flip.
    "paper": Recipe(epochs=100, batch_size=256, lr=0.1, weight_decay=1e-4, label_smoothing=0.0,
                    warmup_fraction=0.05, schedule="cosine", eval_batch_size=256),
}


def with_overrides(recipes: Mapping[str, Any], scale: str, overrides: dict[str, Any], what: str) -> Any:
    """`recipes[scale]` (a dataclass) with `overrides` applied; an unknown field name is an error."""
    check_scale(scale)
    valid = [f.name for f in fields(recipes[scale])]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise GradpathError(f"unknown {what} field(s) {unknown}; valid fields: {', '.join(valid)}")
    return replace(recipes[scale], **overrides)


def recipe_for(scale: str, **overrides: Any) -> dict[str, Any]:
    """The recipe of `scale` as a dict, with `overrides` (field names of `Recipe`) applied."""
    recipe = with_overrides(RECIPES, scale, overrides, "recipe")
    check_recipe(recipe)
    return asdict(recipe)


def check_recipe(recipe: Recipe) -> None:
    """Raise GradpathError if a recipe's values cannot be trained."""
    check_choice("recipe schedule", recipe.schedule, SCHEDULES)
    check_choice("recipe compile mode", recipe.compile, COMPILE_MODES)
    if recipe.epochs < 1 or recipe.batch_size < 1 or recipe.eval_batch_size < 1:
        raise GradpathError(
            f"recipe epochs ({recipe.epochs}), batch_size ({recipe.batch_size}) and eval_batch_size "
            f"({recipe.eval_batch_size}) must all be >= 1"
        )
    if not 0.0 <= recipe.warmup_fraction < 1.0:
        raise GradpathError(f"recipe warmup_fraction must be in [0, 1), got {recipe.warmup_fraction}")
    if recipe.crop_padding < 0:
        raise GradpathError(f"recipe crop_padding must be >= 0, got {recipe.crop_padding}")


def recipe_from_config(recipe: dict[str, Any]) -> Recipe:
    """The `Recipe` stored (as a dict) in a run config, checked."""
    valid = {f.name for f in fields(Recipe)}
    if set(recipe) != valid:
        raise GradpathError(
            f"run config recipe must have exactly the fields {sorted(valid)}; got {sorted(recipe)}"
        )
    result = Recipe(**recipe)
    check_recipe(result)
    return result


def lr_at(recipe: Recipe, step: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then decay to zero."""
    warmup = int(recipe.warmup_fraction * total_steps)
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if recipe.schedule == "linear":
        return recipe.lr * (1.0 - progress)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
