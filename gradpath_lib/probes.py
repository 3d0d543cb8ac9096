"""Linear probes per layer: how linearly separable the classes are in each stage's features.

For a trained classifier (stem -> stages -> head, optionally wrapped as `.net`, see
`models.aux_heads`) the output of the stem and of every stage is globally average-pooled over
space, giving one feature vector per image and layer. A linear probe is fitted on the training
images' features and scored on the test images: ridge regression to one-hot targets, solved in
closed form (features standardized by the training set's mean and std, a bias column, penalty
`RIDGE_L2 x n_train` on the weights), prediction = argmax. It is deterministic, needs no tuning
and no SGD, and ranks layers the same way a logistic probe does; its accuracy is a lower bound
on what any linear read-out of the pooled features achieves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import GradpathError
from .train.batches import DeviceImages
from .train.classify import autocast

RIDGE_L2 = 1e-3  # ridge penalty per training image, on standardized features (a small, stabilizing value)
STD_FLOOR = 1e-6  # features constant over the training set are left unscaled instead of divided by 0


def probe_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The probed layers of a classifier: {"stem": ..., "stage1": ..., "stageN": ...}."""
    core = getattr(model, "net", model)
    if not (isinstance(getattr(core, "stem", None), nn.Module) and isinstance(getattr(core, "stages", None), nn.Sequential)):
        raise GradpathError(f"{type(model).__name__} has no `stem` and `stages` to probe; "
                            "probes need a stem -> stages -> head classifier (gradpath_lib.models.classifier)")
    return {"stem": core.stem, **{f"stage{i}": stage for i, stage in enumerate(core.stages, start=1)}}


@torch.no_grad()
def pooled_features(model: nn.Module, data: DeviceImages, batch_size: int) -> dict[str, torch.Tensor]:
    """Per probed layer, the globally average-pooled output on every image of `data`: (N, C) float32."""
    layers = probe_layers(model)
    batches: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            batches[name].append(output.float().mean(dim=(2, 3)))
        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for x, _ in data.eval_batches(batch_size):
            with autocast(x.device):
                model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in batches.items()}


@dataclass
class LinearProbe:
    """A fitted ridge probe: standardize, then `features @ weight + bias`, argmax is the class."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (C, classes)
    bias: torch.Tensor  # (classes,)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The predicted class of each row of `features`."""
        z = (features.double() - self.mean) / self.std
        return (z @ self.weight + self.bias).argmax(dim=1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """The fraction of rows whose predicted class is its label."""
        return (self.predict(features) == labels).double().mean().item()


def fit_ridge_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    l2: float = RIDGE_L2) -> LinearProbe:
    """Ridge regression of one-hot `labels` on standardized `features` (N, C), in closed form (float64)."""
    if features.ndim != 2 or len(features) != len(labels) or len(features) == 0:
        raise GradpathError(f"probe features must be (N, C) with one label per row; got {tuple(features.shape)} "
                            f"and {len(labels)} labels")
    x = features.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(STD_FLOOR)
    z = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    targets = torch.nn.functional.one_hot(labels.long(), num_classes).to(x.dtype)
    penalty = torch.eye(z.shape[1], dtype=x.dtype, device=x.device) * (l2 * len(x))
    penalty[-1, -1] = 0.0  # the bias is not penalized
    solution = torch.linalg.solve(z.T @ z + penalty, z.T @ targets)
    return LinearProbe(mean, std, solution[:-1], solution[-1])


def probe_model(model: nn.Module, train: DeviceImages, test: DeviceImages, num_classes: int,
                batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """Per probed layer: channels, train and test accuracy of a ridge probe on its pooled features."""
    train_features = pooled_features(model, train, batch_size)
    test_features = pooled_features(model, test, batch_size)
    results = {}
    for name, features in train_features.items():
        probe = fit_ridge_probe(features, train.labels, num_classes)
        results[name] = {
            "channels": features.shape[1],
            "train_acc": probe.accuracy(features, train.labels),
            "test_acc": probe.accuracy(test_features[name], test.labels),
        }
    return results
