"""`gradpath analyze MODEL`: gradient timestamps, sources and path lengths of a model's layers."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from ..errors import GradpathError, error_line
from ..models.reference import REFERENCE_NETS
from ..scales import SCALES

if TYPE_CHECKING:
    from ..analysis.paths import GradientPathReport

FORMATS = ("table", "csv", "json")
DEFAULT_SCALE = "mini"  # the size preset of a registered model when --scale is not given
SOURCE_SUFFIX = ".py"  # MODEL's module part ending so is a file path, not a module name
MODULE_HINT = "give a module on the Python path (run from its folder or set PYTHONPATH) or a path/to/file.py"
LIST_COLUMNS = ("timestamps", "sources_at_first")  # tuple cells, written space-separated in CSV
TABLE_COLUMNS = ["layer", "group_start", "group_stop", "timestamps", "shortest", "longest", "n_paths",
                 "combination_size", "sources_at_first", "aggregated_features"]
EPILOG = """\
One table row per channel group of each call of a weighted layer (conv, Linear, Embedding):
  layer, group_start, group_stop  the layer and the output channels [start, stop) of the group
  timestamps           the backward steps at which gradient reaches the group, i.e. the lengths (in
                       weighted layers, itself included) of its paths to the loss: the logits layer
                       gets it at 1. A set, its runs compacted: "2-4 7" is 2, 3, 4 and 7
  shortest, longest    the first and last timestamp
  n_paths              the distinct paths (sequences of weighted layers) from the group to the loss
  combination_size     the (timestamp, source) pairs the group gets gradient from
  sources_at_first     the layers (or loss) it gets gradient from at its first timestamp
  aggregated_features  the distinct producers (weighted layers, the input) whose outputs are added
                       or concatenated into the layer's input

The network metrics above it:
  n_weighted_layers    weights (a layer called twice, or a weight tied between modules, is one)
  n_positions          calls of weighted layers (a layer called twice is two positions)
  n_groups             rows of the table
  longest_shortest_path  the largest over positions of a position's shortest path (over its groups)
  longest_path         the largest timestamp of any group
  aggregated_features_mean, _max  over positions
  combination_size_mean  averaged over output channels (filters)
  distinct_combinations_mean  the distinct combinations among a position's groups, averaged over
                       positions (1 when all its channels get the same gradients, as in a ResNet)
  split_combination_layers  the positions whose groups get more than one distinct combination

Definitions: gradpath_lib/analysis/paths.py; the book chapter book/gradient_paths.md."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath analyze`."""
    parser = subparsers.add_parser("analyze", help="structural gradient path analysis of a model",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL",
                        help="a registered model name, a reference design (" + ", ".join(REFERENCE_NETS)
                        + "), or package.module:factory or path/to/file.py:factory, a function called "
                        "without arguments that returns an nn.Module")
    parser.add_argument("--input", default=None,
                        help="input shape without batch, e.g. 3x32x32, or 128 with --tokens (default: the "
                             "reference design's own input, a detector's canvas at --scale, else 3x32x32)")
    parser.add_argument("--tokens", action="store_true",
                        help="the input is integer token ids, read by the model's nn.Embedding (a language "
                             "model); --input is then their shape, e.g. 128")
    parser.add_argument("--scale", default=None, choices=SCALES,
                        help=f"size preset of a registered model (default {DEFAULT_SCALE})")
    parser.add_argument("--format", default="table", choices=FORMATS, help="output format (default %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="also measure where gradient arrives (a float64 spectrum on random inputs) and "
                             "check every channel group's timestamps against it; exit 1 if any differ")
    parser.add_argument("--trust-custom-backward", action="store_true",
                        help="take a custom autograd Function's backward to follow the ops of its forward "
                             "(refused otherwise, since torch.fx sees only the forward); --check measures it")
    parser.add_argument("--figures", metavar="DIR", type=Path, default=None,
                        help="also draw the model's gradient timestamps (with the measured ones under "
                             "--check), sources and path lengths as PNG files in DIR (created if missing), "
                             "as the book's Figs. 7-9")
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


def _raised(err: Exception) -> str:
    """`err` in one line, with the file and line of the user's code that raised it (none when the
    call from this file raised it, as a missing argument does)."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    ours = frame.filename == __file__ or frame.filename.startswith("<")  # this call, or importlib's frames
    return error_line(err) if ours else f"{error_line(err)}, at {frame.filename}:{frame.lineno}"


def _load_source(path: Path) -> ModuleType:
    """Import the file `path` as the module named by its stem (as `import stem` would)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]  # as a failed import leaves no module behind
        raise
    return module


def import_user_module(location: str, spec: str) -> ModuleType:
    """The module `location` of MODEL `spec`: a path/to/file.py (its folder first on sys.path while
    it is imported, so that its own imports work) or a module name (looked up from the cwd first)."""
    if not location:
        raise GradpathError(f"MODEL {spec!r} names no module before ':'; {MODULE_HINT}")
    source = Path(location).resolve() if location.endswith(SOURCE_SUFFIX) else None
    if source is not None and not source.is_file():
        raise GradpathError(f"MODEL {spec!r}: there is no file {location}")
    folder = str(source.parent if source is not None else Path.cwd())
    sys.path.insert(0, folder)
    try:
        return _load_source(source) if source is not None else importlib.import_module(location)
    except ImportError as err:
        missing = err.name is not None and (location == err.name or location.startswith(err.name + "."))
        raise GradpathError(f"cannot import {location!r} from {spec!r}: {err}"
                            + (f"; {MODULE_HINT}" if missing else "")) from err
    except Exception as err:
        raise GradpathError(f"{spec}: importing {location} raised {_raised(err)}") from err
    finally:
        sys.path.remove(folder)


def resolve_model(spec: str, scale: str = DEFAULT_SCALE) -> nn.Module:
    """A registry name built at `scale`, or `package.module:factory` (or `path/to/file.py:factory`)
    called without arguments."""
    if ":" not in spec:
        from ..models import create_model
        from ..models.registry import model_names

        if spec not in model_names():
            raise GradpathError(f"unknown model {spec!r}; registered: {', '.join(model_names())}; reference "
                                f"designs: {', '.join(REFERENCE_NETS)}; or package.module:factory or "
                                "path/to/file.py:factory")
        return create_model(spec, scale)
    location, _, factory_name = spec.rpartition(":")
    module = import_user_module(location, spec)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise GradpathError(f"{location!r} has no callable {factory_name!r} (MODEL is package.module:factory or "
                            "path/to/file.py:factory)")
    try:
        model = factory()
    except Exception as err:
        raise GradpathError(f"{spec}: the factory raised {_raised(err)} (it is called with no arguments)") from err
    if not isinstance(model, nn.Module):
        raise GradpathError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def default_shape(spec: str, scale: str) -> str:
    """The input shape of MODEL `spec` without --input: a registered model's task's default side at
    `scale` (a detector's canvas), else a CIFAR-size image."""
    from ..models.cost import CLASSIFY_INPUT, default_input
    from ..models.registry import get_entry, model_names

    side = default_input(get_entry(spec).task, scale) if spec in model_names() else CLASSIFY_INPUT
    return f"3x{side}x{side}"


def check_flags(args: argparse.Namespace) -> None:
    """Refuse the flags that do not apply to MODEL, rather than ignore them."""
    design = args.model in REFERENCE_NETS
    if args.scale is not None and (design or ":" in args.model):
        kind = "a reference design" if design else "built by its own factory"
        raise GradpathError(f"--scale sizes a registered model; {args.model} is {kind}: drop --scale")
    if args.trust_custom_backward and design:
        raise GradpathError(f"{args.model} is a reference design, which has no custom autograd Function: "
                            "drop --trust-custom-backward")


def figures_dir(path: Path) -> Path:
    """`path`, created if missing, or an error when it cannot hold the figures (checked before analysing)."""
    if path.exists() and not path.is_dir():
        raise GradpathError(f"--figures {path} is a file, not a folder")
    from ..data.paths import is_writable

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GradpathError(f"--figures {path}: cannot create the folder ({err})") from err
    if not is_writable(path):
        raise GradpathError(f"--figures {path}: the folder is not writable")
    return path


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

    check_flags(args)
    figures = None if args.figures is None else figures_dir(args.figures)
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
        scale = args.scale or DEFAULT_SCALE
        shape, tokens = args.input or default_shape(args.model, scale), args.tokens
        model = resolve_model(args.model, scale)
        dtype = torch.long if tokens else torch.float32
        report = analyze_model(model, parse_shape(shape), dtype, trust_custom_backward=args.trust_custom_backward)
        build = lambda: model  # noqa: E731 - the model the check measures, as reference_net above
    check = None
    if args.check:
        from ..analysis.measured import structure_check

        check = structure_check(build(), parse_shape(shape), torch.long if tokens else torch.float32, report=report)
    if figures is not None:
        written = write_figures(figure_stem(args.model), report, check, figures)
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
    """A file name stem for a model given as `spec` (`mypkg.mod:build` -> `mypkg.mod-build`, `dir/net.py:build`
    -> `net.py-build`)."""
    return re.sub(r"[^\w.-]+", "-", Path(spec).name).strip("-.") or "model"


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
             "path_lengths": lambda name: path_lengths_figure(reports, out_dir, name, layer_names=True)}
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
