"""How much of timm the gradient path analysis follows, and whether it is right there.

    python benchmarks/timm_coverage.py [--check] [--out timm-coverage.csv] [MODEL ...]

Needs `timm` (and the torchvision it imports), which this project does not depend on. Builds each
model untrained with 3 classes, analyses it (`analyze_model`) on its own input size (224 x 224 for
the transformers and MLPs that fix it, else 64 x 64 or the model's minimum) and, with `--check`, compares every channel
group's timestamps with the measured ones (`structure_check`). Each model runs in a process of
its own, so that one that runs out of memory (the check keeps one copy of the activations per
timestamp) is recorded as such and the rest go on. Prints one row per model and writes them as CSV.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

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
    "mobilenetv4_conv_small efficientformer_l1 volo_d1_224 tresnet_m crossvit_tiny_240 twins_svt_small"
).split()
SMALL_INPUT = (3, 64, 64)  # enough for the convnets; transformers and MLPs keep the size they fix
TIMEOUT_S = 600


def _one(name: str, check: bool) -> dict:
    import warnings

    import timm
    import torch

    from gradpath_lib.analysis import analyze_model
    from gradpath_lib.analysis.measured import structure_check

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    start = time.time()
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    fixed = model.pretrained_cfg.get("fixed_input_size", False) or "mixer" in name or "mlp" in name
    smallest = tuple(model.pretrained_cfg.get("min_input_size", SMALL_INPUT))  # inception needs 75 x 75
    shape = tuple(model.pretrained_cfg["input_size"]) if fixed else max(SMALL_INPUT, smallest)
    row: dict = {"model": name, "input": "x".join(map(str, shape))}
    try:
        report = analyze_model(model, shape)
    except Exception as err:  # noqa: BLE001 - the message is the result
        return row | {"analysed": False, "error": str(err).split(";")[0][:160], "seconds": time.time() - start}
    net = report.network
    row |= {"analysed": True, "weighted_layers": net["n_weighted_layers"], "groups": net["n_groups"],
            "longest_shortest_path": net["longest_shortest_path"], "longest_path": net["longest_path"]}
    if check:
        try:
            result = structure_check(model, shape, report=report)
            row |= {"groups_agreeing": int(result.agrees.sum())}
        except Exception as err:  # noqa: BLE001
            row |= {"error": f"check: {err}"[:160]}
    return row | {"seconds": round(time.time() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--check", action="store_true", help="also run the measured check on each model")
    parser.add_argument("--out", default="timm-coverage.csv")
    args = parser.parse_args()
    rows = []
    context = multiprocessing.get_context("spawn")
    for name in args.models:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            try:
                row = pool.submit(_one, name, args.check).result(timeout=TIMEOUT_S)
            except BrokenProcessPool:
                row = {"model": name, "error": "the process died (out of memory?)"}
            except TimeoutError:
                row = {"model": name, "error": f"over {TIMEOUT_S} s"}
                for process in pool._processes.values():  # noqa: SLF001 - no public way to stop it
                    process.kill()
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out, index=False)
    analysed = frame.get("analysed", pd.Series(dtype=bool)).fillna(False).astype(bool)
    print(f"analysed {int(analysed.sum())} of {len(frame)} models; wrote {args.out}")
    if args.check and "groups_agreeing" in frame:
        checked = frame.dropna(subset=["groups_agreeing"])
        exact = checked[checked.groups_agreeing == checked.groups]
        print(f"measured check: {len(exact)} of {len(checked)} checked models agree in every channel group")


if __name__ == "__main__":
    main()
