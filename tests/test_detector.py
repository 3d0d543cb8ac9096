"""YOLOR-mini detectors: structure, cost, tracing, box geometry and NMS."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.fx

from gradpath_lib.cli import main
from gradpath_lib.detection_tables import paper_preset_comparison
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import create_model, get_entry, model_names
from gradpath_lib.models.blocks import CSPStage, ELANBlock, ResidualBlock
from gradpath_lib.models.cost import count_flops, count_params
from gradpath_lib.models.detector import parse_elan_stacks
from gradpath_lib.models.yolor import BASELINE, INPUT_SIZES, PAPER_INPUT, VARIANTS, detector_cost
from gradpath_lib.paper import references
from gradpath_lib.train.boxes import anchor_points, box_iou, decode_ltrb, mask_extents
from gradpath_lib.train.det_predict import MAX_CANDIDATES, MAX_DETECTIONS, NMS_IOU, SCORE_THRESHOLD, nms_keep, postprocess

SMOKE_SIDE = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_every_variant_is_registered_as_detector():
    assert set(VARIANTS) <= set(model_names(task="detect"))
    assert all(get_entry(name).family == "yolor" for name in VARIANTS)
    assert not set(VARIANTS) & set(model_names(task="classify"))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_forward_backward_at_smoke_size(name):
    torch.manual_seed(0)
    model = create_model(name, "smoke")
    out = model(torch.randn(2, 3, SMOKE_SIDE, SMOKE_SIDE))
    points, strides = anchor_points(SMOKE_SIDE, SMOKE_SIDE, model.strides)
    count = sum((SMOKE_SIDE // s) ** 2 for s in model.strides)
    assert points.shape == (count, 2) and strides.shape == (count,)
    assert out["cls"].shape == (2, count, model.num_classes)
    assert out["box"].shape == (2, count, 4)
    assert out["coef"].shape == (2, count, model.num_protos)
    side = SMOKE_SIDE // model.proto_stride
    assert out["protos"].shape == (2, model.num_protos, side, side)
    sum(v.float().pow(2).mean() for v in out.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name,block_type", [
    ("yolor-v3", ResidualBlock), ("yolor-csp", CSPStage), ("yolor-elan", ELANBlock), ("yolov5", CSPStage),
])
def test_backbone_is_built_from_the_shared_blocks(name, block_type):
    model = create_model(name, "smoke")
    c3, c4, c5 = model.backbone(torch.randn(1, 3, SMOKE_SIDE, SMOKE_SIDE))
    assert [t.shape[-1] for t in (c3, c4, c5)] == [SMOKE_SIDE // s for s in model.strides]
    assert any(isinstance(m, block_type) for m in model.backbone.modules())
    assert any(isinstance(m, block_type) for m in model.neck.modules())


def test_variants_differ_only_in_the_intended_options():
    prn = create_model("yolor-prn", "smoke")
    masked = [m for m in prn.modules() if isinstance(m, ResidualBlock)]
    assert masked and all(m.shortcut_channels == m.out_channels // 2 for m in masked)
    fusions = {name: {m.fusion for m in create_model(name, "smoke").modules() if isinstance(m, CSPStage)}
               for name in ("yolor-csp", "yolor-csp-first", "yolor-csp-last", "yolov5")}
    assert fusions == {"yolor-csp": {"full"}, "yolor-csp-first": {"first"}, "yolor-csp-last": {"last"},
                       "yolov5": {"first"}}
    for name, sg in (("yolor-csp-sg-identity", "identity"), ("yolor-csp-sg-block", "block")):
        blocks = [m for m in create_model(name, "smoke").modules() if isinstance(m, ResidualBlock)]
        assert blocks and {m.sg for m in blocks} == {sg}


def test_stop_gradient_variant_has_the_same_weights_as_yolor_csp():
    shapes = {name: [p.shape for p in create_model(name, "smoke").parameters()]
              for name in ("yolor-csp", "yolor-csp-sg-identity", "yolor-csp-sg-block")}
    assert shapes["yolor-csp"] == shapes["yolor-csp-sg-identity"] == shapes["yolor-csp-sg-block"]


def test_csp_and_elan_cost_less_than_yolor_v3_at_mini():
    # FLOPs scale with the input area (fully convolutional), so a 64 px input ranks them as 192 px does
    base = detector_cost("yolor-v3", "mini", SMOKE_SIDE)
    for name in ("yolor-csp", "yolor-csp-first", "yolor-csp-last", "yolor-elan", "yolor-elan-b1n1s"):
        cost = detector_cost(name, "mini", SMOKE_SIDE)
        assert cost["params"] < base["params"], name
        assert cost["flops"] < base["flops"], name
    assert detector_cost("yolor-prn", "mini", SMOKE_SIDE) == base  # PRN's mask costs nothing


def test_cost_scales_with_input_area():
    small, large = detector_cost("yolor-v3", "smoke", 64), detector_cost("yolor-v3", "smoke", 128)
    assert small["params"] == large["params"]
    assert large["flops"] == pytest.approx(4 * small["flops"], rel=0.01)


def _meta_cost(name: str, scale: str, side: int) -> tuple[int, int]:
    with torch.device("meta"):  # shapes only
        model = create_model(name, scale)
    return count_params(model), count_flops(model, (3, side, side))


def test_models_command_counts_detectors_at_their_canvas_and_at_640_relative_to_yolor_v3(capsys):
    assert main(["models", "--task", "detect", "--scale", "smoke", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("model,family,task,input,params,flops,base,flops_vs_base,params_vs_base,"
                        f"flops_{PAPER_INPUT},flops_{PAPER_INPUT}_vs_base")
    rows = {line.split(",")[0]: line.split(",") for line in lines[1:]}
    assert list(rows) == list(VARIANTS)
    v3_params, v3_flops = _meta_cost(BASELINE, "smoke", INPUT_SIZES["smoke"])
    v3_paper = _meta_cost(BASELINE, "smoke", PAPER_INPUT)[1]
    for name in ("yolor-csp", "yolor-elan"):
        _, _, _, side, params, flops, base, flops_ratio, params_ratio, paper, paper_ratio = rows[name]
        assert int(side) == INPUT_SIZES["smoke"] and base == BASELINE
        assert (int(params), int(flops)) == _meta_cost(name, "smoke", INPUT_SIZES["smoke"])
        assert int(paper) == _meta_cost(name, "smoke", PAPER_INPUT)[1]
        assert float(flops_ratio) == round(int(flops) / v3_flops, 3) < 1
        assert float(params_ratio) == round(int(params) / v3_params, 3)
        assert float(paper_ratio) == round(int(paper) / v3_paper, 3)
    assert rows[BASELINE][6:9] == ["", "", ""]  # the base has no ratio to itself


def test_models_command_keeps_an_explicit_input_and_rejects_one_detectors_cannot_take(capsys):
    assert main(["models", "yolor-prn", "--scale", "smoke", "--input", "128", "--format", "csv"]) == 0
    rows = {line.split(",")[0]: line.split(",") for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {"yolor-prn", BASELINE} and rows["yolor-prn"][3] == "128"
    assert int(rows["yolor-prn"][5]) == _meta_cost("yolor-prn", "smoke", 128)[1]
    assert main(["models", "yolor-csp", "--scale", "smoke", "--input", "100"]) == 2
    assert "input size 100 does not fit 'yolor-v3'" in capsys.readouterr().err
    assert main(["models", "prn", "--task", "detect"]) == 2
    assert "none of prn is a 'detect' model" in capsys.readouterr().err


def test_paper_preset_against_the_official_configs():
    # what book/scale_out.md says of the table it includes (paper_preset_comparison)
    table = paper_preset_comparison().set_index("model")
    official = {(r.ours, r.metric): r.value for r in references("table6")}
    v3, csp, elan = table.loc["yolor-v3"], table.loc["yolor-csp"], table.loc["yolor-elan"]
    assert (v3["official params (M)"], v3["official GFLOPs (640)"]) == (official["yolor-v3", "params_m"],
                                                                        official["yolor-v3", "gflops"])
    assert v3["params (M)"] == pytest.approx(_meta_cost("yolor-v3", "paper", PAPER_INPUT)[0] / 1e6)
    assert v3["params (M)"] == pytest.approx(v3["official params (M)"], rel=0.02), "YOLOR-v3 comes close"
    assert v3["GFLOPs (640)"] == pytest.approx(v3["official GFLOPs (640)"], rel=0.15)
    assert csp["official ΔFLOPs"] == pytest.approx(official["yolor-csp", "gflops"] / official["yolor-v3", "gflops"] - 1)
    assert csp["ΔFLOPs"] < csp["official ΔFLOPs"] - 0.10, "our CSP cuts far more"
    assert elan["official ΔFLOPs"] == pytest.approx(-0.26) and pd.isna(elan["official GFLOPs (640)"])
    for row in (csp, elan):  # "at the mini scale ... the cuts happen to sit near the paper's"
        assert abs(row["mini ΔFLOPs"] - row["official ΔFLOPs"]) < 0.03


def test_elan_stack_settings():
    assert parse_elan_stacks("2,1s") == (2, 1, True)
    assert parse_elan_stacks("1, 3") == (1, 3, False)
    for bad in ("2", "0,1", "a,b", "2,1x"):
        with pytest.raises(GradpathError, match="ELAN stack setting"):
            parse_elan_stacks(bad)
    light, heavy = create_model("yolor-elan", "smoke", elan_stacks="1,1s"), create_model("yolor-elan", "smoke", elan_stacks="3,2")
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in heavy.parameters())


def test_bad_detector_options_name_the_choices():
    with pytest.raises(GradpathError, match="detector block"):
        create_model("yolor-v3", "smoke", block="mystery")
    with pytest.raises(GradpathError, match="stop gradient"):
        create_model("yolor-v3", "smoke", sg="identity")


def test_detector_traces_with_torch_fx():
    model = create_model("yolor-csp", "smoke").eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, SMOKE_SIDE, SMOKE_SIDE)
    expected, got = model(x), traced(x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_head_predictions_stay_float32_under_bf16_autocast():
    model = create_model("yolor-v3", "smoke").eval()
    towers = []
    model.heads[0].reg_tower.register_forward_hook(lambda module, args, out: towers.append(out.dtype))
    x = torch.randn(1, 3, SMOKE_SIDE, SMOKE_SIDE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(x)
    assert towers == [torch.bfloat16], "the rest of the network still runs in bf16"
    assert {k: v.dtype for k, v in outputs.items()} == dict.fromkeys(outputs, torch.float32)
    with torch.no_grad():
        reference = model(x)
    bf16_step = 2.0 ** -7  # relative spacing of bf16: what the box distances had before
    box_error = (outputs["box"] - reference["box"]).abs().max() / reference["box"].abs().max()
    assert box_error < 4 * bf16_step, "autocast still applies to the towers, so the outputs move, but little"


def test_box_iou_and_decode_by_hand():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    b = torch.tensor([5.0, 0.0, 15.0, 10.0])
    assert box_iou(a, b).item() == pytest.approx(50 / 150)
    assert box_iou(a[None, None], torch.stack([a, b])[None])[0].tolist() == pytest.approx([1.0, 50 / 150])
    raw = torch.full((1, 4), torch.log(torch.expm1(torch.tensor(2.0))).item())  # softplus(raw) = 2
    boxes = decode_ltrb(raw, torch.tensor([[20.0, 30.0]]), torch.tensor([8.0]))
    assert boxes[0].tolist() == pytest.approx([4.0, 14.0, 36.0, 46.0])


def test_mask_extents_are_tight_pixel_boxes():
    masks = torch.zeros(2, 8, 10, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    assert mask_extents(masks).tolist() == [[3.0, 2.0, 7.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """`nms_keep` on one image: the indices kept, best first."""
    order = scores.argsort(descending=True)
    labels = torch.zeros(len(boxes), dtype=torch.long) if labels is None else labels
    valid = torch.ones(1, len(order), dtype=torch.bool)
    return order[nms_keep(boxes[order][None], labels[order][None], valid, threshold)[0]]


def greedy_nms_reference(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Textbook greedy NMS, one box at a time."""
    keep: list[int] = []
    for i in scores.argsort(descending=True).tolist():
        if all(box_iou(boxes[i], boxes[j]).item() <= threshold for j in keep):
            keep.append(i)
    return keep


def test_nms_on_hand_made_boxes():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # best
        [1.0, 0.0, 11.0, 10.0],  # overlaps the best (IoU 0.82): suppressed
        [8.0, 0.0, 18.0, 10.0],  # overlaps only the suppressed one above (0.29 with the best): kept
        [30.0, 30.0, 40.0, 40.0],  # alone: kept
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2, 3]


def test_nms_chain_keeps_what_greedy_keeps():
    # 0 suppresses 1; 1 would suppress 2 but is gone, so 2 stays (a one-pass method would drop it)
    boxes = torch.tensor([[0.0, 0, 10, 10], [3.0, 0, 13, 10], [6.0, 0, 16, 10]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.4).tolist() == [0, 2]


def test_nms_matches_reference_on_random_boxes():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 60
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 30], 1)
    scores = torch.rand(60, generator=generator)
    assert nms(boxes, scores, 0.5).tolist() == greedy_nms_reference(boxes, scores, 0.5)


def test_postprocess_of_a_batch_is_per_image_greedy_nms_of_the_top_candidates():
    generator = torch.Generator().manual_seed(1)
    side, classes, batch = 64, 10, 3
    points, strides = anchor_points(side, side, (8, 16, 32), torch.device("cpu"))
    outputs = {"cls": torch.randn(batch, len(points), classes, generator=generator) * 3 - 2,
               "box": torch.randn(batch, len(points), 4, generator=generator)}
    outputs["cls"][1] = -20.0  # an image with no candidate above the score threshold
    found = postprocess(outputs, points, strides, (side, side), with_masks=False)
    assert len(found) == batch and len(found[1].scores) == 0
    boxes_all = decode_ltrb(outputs["box"], points, strides).clamp(0, side)
    for image in (0, 2):
        top = outputs["cls"][image].sigmoid().flatten().topk(MAX_CANDIDATES)
        chosen = top.indices[top.values > SCORE_THRESHOLD]
        point, label = chosen // classes, chosen % classes
        kept = []  # greedy NMS per class, then all classes merged best first
        for c in label.unique().tolist():
            of_class = (label == c).nonzero().flatten()
            kept += of_class[greedy_nms_reference(boxes_all[image, point[of_class]], top.values[of_class], NMS_IOU)].tolist()
        kept = sorted(kept, key=lambda i: -top.values[i].item())[:MAX_DETECTIONS]
        assert len(kept) == MAX_DETECTIONS, "the test reaches the cap on detections"
        assert found[image].labels.tolist() == label[kept].tolist()
        assert torch.equal(found[image].scores, top.values[kept])
        assert torch.equal(found[image].boxes, boxes_all[image, point[kept]])


def test_nms_is_class_aware():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5, torch.tensor([0, 1, 0])).tolist() == [0, 1]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []
