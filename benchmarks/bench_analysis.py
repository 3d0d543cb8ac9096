"""Timings of the gradient path analysis: every registry model at a scale, a 200-layer residual
chain and a 200-layer dense block, and the measured spectrum against one plain training step.

Run: `python benchmarks/bench_analysis.py [--scale mini] [--device cpu]`. CPU timings on a shared
machine are noisy; the first model also pays for importing torch.fx and the model zoo.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from gradpath_lib.analysis import analyze_model
from gradpath_lib.analysis.measured import measured_gradient_spectrum
from gradpath_lib.models import create_model, get_entry, model_names

CLASSIFY_INPUT = (3, 32, 32)
DETECT_INPUT = (3, 64, 64)  # the smoke canvas; the structure does not depend on the canvas size
DEEP_LAYERS = 200
WIDTH = 8
SPECTRUM_BATCH = 8


class ResidualChain(nn.Module):
    """A stem, `layers` 3x3 convs each added to an identity stream, then a linear classifier."""

    def __init__(self, layers: int):
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 1)
        self.convs = nn.ModuleList(nn.Conv2d(WIDTH, WIDTH, 3, padding=1) for _ in range(layers))
        self.fc = nn.Linear(WIDTH, 10)

    def forward(self, x):
        x = self.stem(x)
        for conv in self.convs:
            x = x + F.relu(conv(x))
        return self.fc(x.mean((2, 3)))


class DenseChain(nn.Module):
    """`layers` 1x1 convs, each reading the concatenation of all earlier outputs (O(L^2) edges)."""

    def __init__(self, layers: int, growth: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 + i * growth, growth, 1) for i in range(layers))
        self.fc = nn.Linear(3 + layers * growth, 10)

    def forward(self, x):
        features = [x]
        for conv in self.convs:
            features.append(conv(torch.cat(features, 1)))
        return self.fc(torch.cat(features, 1).mean((2, 3)))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_registry(scale: str) -> None:
    print(f"{'model':28s} {'positions':>9s} {'groups':>6s} {'longest':>7s} {'seconds':>8s}")
    for name in model_names():
        shape = DETECT_INPUT if get_entry(name).task == "detect" else CLASSIFY_INPUT
        model = create_model(name, scale)
        seconds, report = timed(lambda: analyze_model(model, shape))
        net = report.network
        print(f"{name:28s} {net['n_positions']:9d} {net['n_groups']:6d} {net['longest_path']:7d} {seconds:8.2f}")


def bench_deep() -> None:
    for model in (ResidualChain(DEEP_LAYERS), DenseChain(DEEP_LAYERS)):
        seconds, report = timed(lambda: analyze_model(model, (3, 8, 8)))
        print(f"{type(model).__name__}({DEEP_LAYERS}): {seconds:.2f} s, longest path "
              f"{report.network['longest_path']}, paths from the first layer {report.groups[0].n_paths:.3e}")


def bench_spectrum(scale: str, device: str) -> None:
    model = create_model("resnet", scale).to(device)
    images = torch.randn(SPECTRUM_BATCH, *CLASSIFY_INPUT, device=device)
    labels = torch.randint(0, 10, (SPECTRUM_BATCH,), device=device)
    report = analyze_model(model, CLASSIFY_INPUT)

    def step():
        F.cross_entropy(model(images), labels).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up
    plain, _ = timed(step)
    spectrum, _ = timed(lambda: measured_gradient_spectrum(model, images, labels, report=report))
    print(f"measured spectrum of resnet ({scale}, batch {SPECTRUM_BATCH}, {report.network['longest_path']} "
          f"timestamps, {device}): {spectrum:.2f} s vs {plain:.3f} s for one forward+backward "
          f"({spectrum / plain:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="mini")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    bench_deep()
    bench_registry(args.scale)
    bench_spectrum(args.scale, args.device)


if __name__ == "__main__":
    main()
