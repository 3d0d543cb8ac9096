"""`gradpath analyze MODEL`: gradient timestamps, sources and path lengths of a model's layers."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from ..errors import GradpathError
from ..models.reference import REFERENCE_NETS
from ..scales import SCALES

if TYPE_CHECKING:
    from ..analysis.paths import GradientPathReport

FORMATS = ("table", "csv", "json")
LIST_COLUMNS = ("timestamps", "sources_at_first")  # tuple cells, written space-separated in CSV
TABLE_COLUMNS = ["layer", "group_start", "group_stop", "timestamps", "shortest", "longest", "n_paths",
                 "combination_size", "sources_at_first", "aggregated_features"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath analyze`."""
    parser = subparsers.add_parser("analyze", help="structural gradient path analysis of a model")
    parser.add_argument("model", metavar="MODEL",
                        help="a registered model name, a reference design (" + ", ".join(REFERENCE_NETS)
                        + "), or package.module:factory returning an nn.Module")
    parser.add_argument("--input", default=None,
                        help="input shape without batch, e.g. 3x32x32, or 128 with --tokens (default: the "
                             "reference design's own input, else 3x32x32)")
    parser.add_argument("--tokens", action="store_true",
                        help="the input is integer token ids, read by the model's nn.Embedding (a language "
                             "model); --input is then their shape, e.g. 128")
    parser.add_argument("--scale", default="mini", choices=SCALES, help="size preset of a registered model")
    parser.add_argument("--format", default="table", choices=FORMATS)
    parser.add_argument("--check", action="store_true",
                        help="also measure where gradient arrives (a float64 spectrum on random inputs) and "
                             "check every channel group's timestamps against it; exit 1 if any differ")
    parser.add_argument("--trust-custom-backward", action="store_true",
                        help="take a custom autograd Function's backward to follow the ops of its forward "
                             "(refused otherwise, since torch.fx sees only the forward); --check measures it")
    parser.add_argument("--figures", metavar="DIR", type=Path, default=None,
                        help="also draw the model's gradient timestamps (with the measured ones under "
                             "--check), sources and path lengths as PNG files in DIR, as the book's Figs. 7-9")
    parser.set_defaults(func=run)


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) <= 0:
        raise GradpathError(f"input shape {text!r} is not like 3x32x32 (positive ints joined by 'x')")
    return shape


def resolve_model(spec: str, scale: str = "mini") -> nn.Module:
    """A registry name built at `scale`, or `package.module:factory` called without arguments."""
    if ":" not in spec:
        from ..models import create_model
        from ..models.registry import model_names

        if spec not in model_names():
            raise GradpathError(f"unknown model {spec!r}; registered: {', '.join(model_names())}; reference "
                                f"designs: {', '.join(REFERENCE_NETS)}; or package.module:factory")
        return create_model(spec, scale)
    module_name, _, factory_name = spec.partition(":")
    sys.path.insert(0, str(Path.cwd()))  # a user's own module next to where they run the command
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise GradpathError(f"cannot import {module_name!r} from {spec!r}: {err}") from err
    finally:
        sys.path.pop(0)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise GradpathError(f"{module_name!r} has no callable {factory_name!r} (MODEL is package.module:factory)")
    model = factory()
    if not isinstance(model, nn.Module):
        raise GradpathError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _cell(value: object) -> object:
    return " ".join(map(str, value)) if isinstance(value, tuple) else value


def compact_timestamps(stamps: tuple[int, ...]) -> str:
    """(2, 3, 4, 7) -> '2-4 7': runs of consecutive timestamps shortened for the table."""
    runs: list[list[int]] = []
    for t in stamps:
        if runs and t == runs[-1][1] + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return " ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def run(args: argparse.Namespace) -> int:
    """Analyse the model and print its layers (and network metrics) in the chosen format."""
    from ..analysis import analyze_model

    if args.model in REFERENCE_NETS:
        from ..analysis.designs import analyze_design
        from ..models.reference import reference_net

        ref = REFERENCE_NETS[args.model]
        if args.tokens and ref.input_dtype.is_floating_point:
            raise GradpathError(f"{args.model} reads images, not token ids: drop --tokens")
        shape, tokens = args.input or "x".join(map(str, ref.input_shape)), not ref.input_dtype.is_floating_point
        report, build = analyze_design(args.model, parse_shape(shape)), lambda: reference_net(args.model)
    else:
        if args.tokens and not args.input:
            raise GradpathError("--tokens needs --input, the shape of the token ids without batch, e.g. 128")
        shape, tokens = args.input or "3x32x32", args.tokens
        model = resolve_model(args.model, args.scale)
        dtype = torch.long if tokens else torch.float32
        report = analyze_model(model, parse_shape(shape), dtype, trust_custom_backward=args.trust_custom_backward)
        build = lambda: model  # noqa: E731 - the model the check measures, as reference_net above
    check = None
    if args.check:
        from ..analysis.measured import structure_check

        check = structure_check(build(), parse_shape(shape), torch.long if tokens else torch.float32, report=report)
    if args.figures is not None:
        written = write_figures(figure_stem(args.model), report, check, args.figures)
        print("figures: " + ", ".join(map(str, written)), file=sys.stderr)
    layers = report.layers
    if args.format == "json":
        payload = {"model": args.model, "input": shape, "tokens": tokens, "network": report.network,
                   "layers": layers.to_dict(orient="records")}
        if check is not None:
            payload["check"] = {"groups": len(check), "agree": int(check.agrees.sum()),
                                "differ": check[~check.agrees].to_dict(orient="records")}
        print(json.dumps(payload, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    elif args.format == "csv":
        frame = layers.assign(**{c: layers[c].map(_cell) for c in LIST_COLUMNS})
        print(frame.to_csv(index=False), end="")
    else:
        for key, value in report.network.items():
            print(f"{key:>26}: {value:.3f}" if isinstance(value, float) else f"{key:>26}: {value}")
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 40):
            table = layers[TABLE_COLUMNS].assign(timestamps=layers.timestamps.map(compact_timestamps),
                                                 sources_at_first=layers.sources_at_first.map(_cell))
            print(table.to_string(index=False))
    if check is None:
        return 0
    if args.format != "json":
        print(check_summary(check), file=sys.stderr if args.format == "csv" else sys.stdout)
    return 0 if check.agrees.all() else 1


def figure_stem(spec: str) -> str:
    """A file name stem for a model given as `spec` (`mypkg.mod:build` -> `mypkg.mod-build`)."""
    return re.sub(r"[^\w.-]+", "-", spec).strip("-.") or "model"


def write_figures(stem: str, report: GradientPathReport, check: pd.DataFrame | None, out_dir: Path) -> list[Path]:
    """Draw one model's timestamps (with `check`'s measured ones), sources and path lengths into
    `out_dir` as `<stem>_timestamps.png`, `<stem>_sources.png`, `<stem>_path_lengths.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.figures import path_lengths_figure, sources_figure, timestamps_figure

    reports = {stem: report}
    checks = None if check is None else {stem: check}
    drawn = {"timestamps": lambda name: timestamps_figure(reports, out_dir, checks=checks, name=name),
             "sources": lambda name: sources_figure(reports, out_dir, name),
             "path_lengths": lambda name: path_lengths_figure(reports, out_dir, name)}
    written = []
    for kind, draw in drawn.items():
        try:
            plt.close(draw(f"{stem}_{kind}"))
        except OSError as err:
            raise GradpathError(f"--figures {out_dir}: cannot write the figures there ({err})") from err
        written.append(out_dir / f"{stem}_{kind}.png")
    return written


def check_summary(check: pd.DataFrame) -> str:
    """One line for a `structure_check` that agrees everywhere, else what differs and what it may mean."""
    head = (f"measured check: {int(check.agrees.sum())} of {len(check)} channel groups get gradient at exactly "
            "their structural timestamps")
    if check.agrees.all():
        return head
    extra = check.apply(lambda row: not set(row.measured) <= set(row.structural), axis=1)
    missing = ~check.agrees & ~extra
    notes = []
    if missing.any():
        notes.append(f"{int(missing.sum())} get none at some timestamps of their paths: an activation such as "
                     "ReLU can gate a path's gradient to exactly zero on these random inputs (a larger --input "
                     "may show it)")
    if extra.any():
        notes.append(f"{int(extra.sum())} get gradient at timestamps no path has: the analysis missed a path "
                     "(please report the model)")
    differ = check[~check.agrees].assign(structural=lambda f: f.structural.map(compact_timestamps),
                                         measured=lambda f: f.measured.map(compact_timestamps))
    return (head + "; " + "; ".join(notes) + ". These differ:\n"
            + differ.drop(columns="agrees").to_string(index=False))
