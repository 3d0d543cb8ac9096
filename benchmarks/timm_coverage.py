"""How much of timm the gradient path analysis follows, and whether it is right there.

    python benchmarks/timm_coverage.py [--check] [--out timm-coverage.csv] [MODEL ...]

Needs `timm` (and the torchvision it imports), which this project does not depend on. Builds each
model untrained with 3 classes, analyses it (`analyze_model`) on its own input size (224 x 224 for
the transformers and MLPs that fix it, else 64 x 64, or `LARGER_INPUT`) and, with `--check`,
compares every channel group's timestamps with the measured ones (`structure_check`). Each model runs in a process of
its own, so that one that runs out of memory or crashes is recorded as such and the rest go on. Prints one row per model and writes them as CSV.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pandas as pd

MODELS = (
    "resnet18 resnet50 resnext50_32x4d seresnet50 densenet121 dpn68 cspresnet50 cspdarknet53 darknet53 "
    "vovnet39a ese_vovnet19b_dw dla34 hrnet_w18_small regnetx_002 regnety_002 mobilenetv2_100 "
    "mobilenetv3_small_100 efficientnet_b0 mnasnet_100 ghostnet_100 ghostnetv2_100 convnext_atto "
    "convnextv2_atto vit_tiny_patch16_224 deit_tiny_patch16_224 swin_tiny_patch4_window7_224 levit_128s "
    "mobilevit_xxs poolformer_s12 mixer_s16_224 resmlp_12_224 gmlp_ti16_224 cait_xxs24_224 "
    "xcit_nano_12_p16_224 pvt_v2_b0 coatnet_nano_rw_224 maxvit_nano_rw_256 repvgg_a0 rexnet_100 "
    "res2net50_26w_4s resnest14d skresnet18 nf_resnet26 botnet26t_256 halonet26t gcresnet33ts "
    "eca_resnet33ts inception_v3 xception41 selecsls42 hgnet_tiny hgnetv2_b0 fastvit_t8 repvit_m1 "
    "efficientvit_b0 edgenext_xx_small tiny_vit_5m_224 inception_next_tiny starnet_s1 "
    "mobilenetv4_conv_small efficientformer_l1 volo_d1_224 tresnet_m crossvit_tiny_240 twins_svt_small "
    "deit_tiny_distilled_patch16_224 pit_ti_224 convit_tiny vit_dwee_patch16_reg1_gap_256 swinv2_cr_tiny_224 "
    "davit_tiny focalnet_tiny_srf caformer_s18 nextvit_small efficientformerv2_s0 beit_base_patch16_224 "
    "eva02_tiny_patch14_224 mvitv2_tiny"
).split()
SMALL_INPUT = (3, 64, 64)  # enough for the convnets; transformers and MLPs keep the size they fix
# stride-2 convs leave nothing of 64 x 64 in Inception-v3; HaloNet needs whole 8-pixel blocks
LARGER_INPUT = {"inception_v3": (3, 128, 128), "halonet26t": (3, 256, 256)}
TIMEOUT_S = 600


def _build(name: str):
    """The untrained timm model `name` (3 classes, eval mode) and its input shape."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    fixed = model.pretrained_cfg.get("fixed_input_size", False) or "mixer" in name or "mlp" in name
    return model, tuple(model.pretrained_cfg["input_size"]) if fixed else LARGER_INPUT.get(name, SMALL_INPUT)


def _analysis(name: str) -> dict:
    import warnings

    from gradpath_lib.analysis import analyze_model

    warnings.filterwarnings("ignore")
    start = time.time()
    model, shape = _build(name)
    row: dict = {"model": name, "input": "x".join(map(str, shape))}
    try:
        net = analyze_model(model, shape).network
    except Exception as err:  # noqa: BLE001 - the message is the result
        return row | {"analysed": False, "error": str(err).split(";")[0][:160]}
    return row | {"analysed": True, "weighted_layers": net["n_weighted_layers"], "groups": net["n_groups"],
                  "longest_shortest_path": net["longest_shortest_path"], "longest_path": net["longest_path"],
                  "seconds": round(time.time() - start, 1)}


def _check(name: str) -> dict:
    import warnings

    from gradpath_lib.analysis.measured import structure_check

    warnings.filterwarnings("ignore")
    start = time.time()
    model, shape = _build(name)
    result = structure_check(model, shape)
    return {"groups_agreeing": int(result.agrees.sum()), "check_seconds": round(time.time() - start, 1)}


def in_process(fn, name: str) -> dict:
    """`fn(name)` in a fresh process: a crash or a timeout is recorded instead of ending the run."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, name).result(timeout=TIMEOUT_S)
        except BrokenProcessPool:
            return {"error": f"{fn.__name__[1:]}: the process died (out of memory?)"}
        except TimeoutError:
            for process in pool._processes.values():  # noqa: SLF001 - no public way to stop it
                process.kill()
            return {"error": f"{fn.__name__[1:]}: over {TIMEOUT_S} s"}
        except Exception as err:  # noqa: BLE001
            return {"error": f"{fn.__name__[1:]}: {err}"[:160]}


def coverage_main(description: str, models: list[str], analysis: Any, check: Any, out: str) -> None:
    """The command line of a coverage script: `analysis(name)` (and `check(name)` with --check) for
    each model in a process of its own, one printed row per model, a CSV and a summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("models", nargs="*", default=models)
    parser.add_argument("--check", action="store_true", help="also run the measured check on each model")
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        row = {"model": name} | in_process(analysis, name)
        if args.check and row.get("analysed"):
            row |= in_process(check, name)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out, index=False)
    analysed = frame.get("analysed", pd.Series(False, index=frame.index)).fillna(False).astype(bool)
    print(f"analysed {int(analysed.sum())} of {len(frame)} models; wrote {args.out}")
    for prefix, what in (("", "models"), ("direct_", "models as they are")):  # direct_: hf_coverage's unwrapped models
        if args.check and f"{prefix}groups_agreeing" in frame:
            checked = frame.dropna(subset=[f"{prefix}groups_agreeing"])
            exact = checked[checked[f"{prefix}groups_agreeing"] == checked[f"{prefix}groups"]]
            print(f"measured check: {len(exact)} of {len(checked)} checked {what} agree in every channel group")


if __name__ == "__main__":
    coverage_main(__doc__.split("\n\n")[0], list(MODELS), _analysis, _check, "timm-coverage.csv")
