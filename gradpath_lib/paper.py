"""What the papers state, as data: the numbers they print and the claims their text makes.

Three kinds of facts, for Tables 1-8, Fig. 1 and the two extension papers (source: the papers and
the official READMEs/configs they point to, summarised in the project's PAPER.md):

- a `Reference` is a number *printed* in a table or an official README (e.g. CSPResNet-50's
  top-1 of 76.6 %), shown in the "paper" columns beside ours;
- a `Claim` is a comparison between two of our networks that the paper makes. Its `kind` says
  where its paper value comes from: `PRINTED` (the difference of two printed numbers),
  `STATED_DELTA` (a difference stated in the text, e.g. "+0.5 AP", with no table printed) or
  `STATED` (a qualitative statement without a number). `gradpath_lib.verdicts` judges each claim
  from the records;
- a `CorrelationClaim` says that a structural metric does or does not track accuracy across a
  table's networks (Table 1: SparseNet's and the paper's reading of it); it is judged from the
  metric's rank correlation with accuracy by `gradpath_lib.verdicts.judge_correlation`.

Claims name two row labels of a chapter's runs frame (`subject`, `baseline`: the registry model
names, unless the chapter labels its runs otherwise, as Fig. 1 and LW-DNA do) and a *metric column* of
`gradpath_lib.tables.runs_frame` (`params`, `flops`, `converged`, or a column the chapter maps
from its records, e.g. `top1`, `ap_box`). `relative` claims are judged and shown as a fraction of
the baseline (FLOPs "-22 %"); their `tolerance` is then a fraction too.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import check_choice
from .verdicts import CORRELATION_DIRECTIONS, DOES_NOT_TRACK, TRACKS

PRINTED = "printed value"
STATED_DELTA = "stated delta"
STATED = "stated (no number)"
CLAIM_KINDS = (PRINTED, STATED_DELTA, STATED)

CSPNET_README = "CrossStagePartialNetworks README (ImageNet)"
SPARSENET_README = "SparseNet README (CIFAR-100)"
PRN_README = "PartialResidualNetworks README (COCO, YOLOv3-tiny)"
MAIN_PAPER = "Wang, Liao, Yeh 2022, text"
YOLOR_CONFIGS = "yolov3.yaml / yolor-csp.yaml (official configs, 640 px)"
DSFB_PAPER = "Kang & Kim 2021 (CIFAR-10)"
LWDNA_PAPER = "Li et al. 2021, text"

# Equal-claims between printed accuracies: within this many points counts as "the same".
SAME_ACCURACY_POINTS = 0.5
# "Compute nearly equal" (Table 5): within this fraction of the baseline's FLOPs.
NEARLY_EQUAL_FLOPS = 0.05


@dataclass(frozen=True)
class Reference:
    """A number printed in a paper table or an official README."""

    table: str  # e.g. "table2"
    paper_model: str  # the name the paper uses, e.g. "CSPResNet-50"
    ours: str | None  # the registry model that stands for it here (None: no counterpart)
    metric: str  # e.g. "params_m", "bflops", "top1", "error", "map50"
    value: float
    source: str


@dataclass(frozen=True)
class Claim:
    """A comparison the paper makes between two of our networks, judged by `verdicts`."""

    id: str
    table: str
    text: str  # the claim in words
    subject: str  # row label: a registry model name unless the chapter labels runs otherwise
    baseline: str  # row label, as `subject`
    metric: str  # a column of tables.runs_frame
    direction: str  # "higher" | "lower" | "equal"
    kind: str  # PRINTED | STATED_DELTA | STATED
    paper: str  # what the paper says, as shown in the "paper" column
    source: str
    relative: bool = False  # judge (subject - baseline) / baseline instead of the raw difference
    tolerance: float = 0.0  # for "equal" claims, in the metric's unit (a fraction if relative)
    deterministic: bool = False  # params / FLOPs: the same for every seed
    paper_delta: float | None = None  # the paper's difference as a number, in the unit judged (None: none given)

    def __post_init__(self) -> None:
        check_choice("claim kind", self.kind, CLAIM_KINDS)
        check_choice("claim direction", self.direction, ("higher", "lower", "equal"))


@dataclass(frozen=True)
class CorrelationClaim:
    """A claim that a structural metric does (`TRACKS`) or does not (`DOES_NOT_TRACK`) track
    accuracy across a table's networks, judged by `verdicts.judge_correlation`."""

    id: str
    table: str
    text: str  # the claim in words
    metric: str  # a structural metric column of `gradpath_lib.analysis.summary.structural_table`
    direction: str  # TRACKS | DOES_NOT_TRACK
    paper: str  # what the paper says, as shown in the "paper" column
    source: str
    kind: str = STATED

    def __post_init__(self) -> None:
        check_choice("claim kind", self.kind, CLAIM_KINDS)
        check_choice("correlation claim direction", self.direction, CORRELATION_DIRECTIONS)


def _ref(table: str, model: str, ours: str | None, source: str, **values: float) -> list[Reference]:
    return [Reference(table, model, ours, metric, value, source) for metric, value in values.items()]


def _cost_claims(table: str, subject: str, baseline: str, paper_params: str, paper_flops: str,
                 source: str, kind: str = PRINTED, deltas: tuple[float, float] | None = None) -> list[Claim]:
    """The two 'costs less' claims (params and FLOPs lower) of a subject against a baseline;
    `deltas`: the paper's relative changes of params and FLOPs, when it gives them."""
    params_delta, flops_delta = deltas or (None, None)
    return [
        Claim(f"{table}-{subject}-params", table, f"{subject} has fewer parameters than {baseline}",
              subject, baseline, "params", "lower", kind, paper_params, source,
              relative=True, deterministic=True, paper_delta=params_delta),
        Claim(f"{table}-{subject}-flops", table, f"{subject} needs fewer FLOPs than {baseline}",
              subject, baseline, "flops", "lower", kind, paper_flops, source,
              relative=True, deterministic=True, paper_delta=flops_delta),
    ]


REFERENCES: tuple[Reference, ...] = tuple(
    # Table 1: SparseNet vs DenseNet on CIFAR-100 (params in M, top-1 error in %).
    _ref("table1", "DenseNet-40-12", "densenet", SPARSENET_README, params_m=1.1, error=24.79)
    + _ref("table1", "SparseNet-40-24", "sparsenet", SPARSENET_README, params_m=0.76, error=24.65)
    + _ref("table1", "DenseNet-100-12", None, SPARSENET_README, params_m=7.2, error=20.97)
    + _ref("table1", "SparseNet-100-36", None, SPARSENET_README, params_m=5.65, error=20.50)
    + _ref("table1", "DenseNet-BC-100-12", None, SPARSENET_README, params_m=0.8, error=22.62)
    + _ref("table1", "SparseNet-BC-100-24", None, SPARSENET_README, params_m=1.46, error=22.12)
    # Table 2: CSPNet applied to popular backbones, ImageNet (params in M, BFLOPs, top-1 in %).
    + _ref("table2", "ResNet-50", "resnet", CSPNET_README, params_m=22.73, bflops=9.74, top1=75.8)
    + _ref("table2", "CSPResNet-50", "csp-resnet", CSPNET_README, params_m=21.57, bflops=8.97, top1=76.6)
    + _ref("table2", "ResNeXt-50", "resnext", CSPNET_README, params_m=22.19, bflops=10.11, top1=77.8)
    + _ref("table2", "CSPResNeXt-50", "csp-resnext", CSPNET_README, params_m=20.50, bflops=7.93, top1=77.9)
    + _ref("table2", "DarkNet-53", "darknet", CSPNET_README, params_m=41.57, bflops=18.57, top1=77.2)
    + _ref("table2", "CSPDarkNet-53", "csp-darknet", CSPNET_README, params_m=27.61, bflops=13.07, top1=77.2)
    # PeleeNet is a DenseNet variant: it stands for our densenet row.
    + _ref("table2", "PeleeNet", "densenet", CSPNET_README, params_m=2.79, bflops=1.017, top1=70.7)
    + _ref("table2", "CSPPeleeNet", "csp-densenet", CSPNET_README, params_m=2.83, bflops=0.888, top1=70.9)
    # Table 5's reference point: YOLOv3-tiny vs YOLOv3-tiny-PRN (params in M, BFLOPs, mAP@0.5).
    + _ref("table5", "YOLOv3-tiny", None, PRN_README, params_m=8.86, bflops=5.57, map50=33.1)
    + _ref("table5", "YOLOv3-tiny-PRN", None, PRN_README, params_m=4.95, bflops=3.47, map50=33.1)
    # Table 6's cross-check from the official configs (params in M, GFLOPs at 640 px).
    + _ref("table6", "YOLOv3", "yolor-v3", YOLOR_CONFIGS, params_m=61.95, gflops=155.9)
    + _ref("table6", "YOLOR-CSP", "yolor-csp", YOLOR_CONFIGS, params_m=52.92, gflops=120.2)
    # DSFB on CIFAR-10 (params in M, top-1 error in %).
    + _ref("dsfb", "ResNet56-S16U1", None, DSFB_PAPER, params_m=0.31, error=6.30)
    + _ref("dsfb", "ResNet-56", None, DSFB_PAPER, params_m=0.85)
)


def _table2_claims() -> list[Claim]:
    claims = []
    pairs = [("csp-resnet", "resnet", "ResNet-50"), ("csp-resnext", "resnext", "ResNeXt-50"),
             ("csp-darknet", "darknet", "DarkNet-53")]
    for subject, baseline, name in pairs:
        ours = {r.metric: r.value for r in REFERENCES if r.table == "table2" and r.ours == subject}
        base = {r.metric: r.value for r in REFERENCES if r.table == "table2" and r.ours == baseline
                and r.paper_model == name}
        claims += _cost_claims("table2", subject, baseline,
                               f"{ours['params_m']:g} vs {base['params_m']:g} M "
                               f"({ours['params_m'] / base['params_m'] - 1:+.1%})",
                               f"{ours['bflops']:g} vs {base['bflops']:g} BFLOPs "
                               f"({ours['bflops'] / base['bflops'] - 1:+.1%})", CSPNET_README,
                               deltas=(ours["params_m"] / base["params_m"] - 1, ours["bflops"] / base["bflops"] - 1))
        same = ours["top1"] == base["top1"]
        claims.append(Claim(
            f"table2-{subject}-top1", "table2",
            f"{subject} is {'as accurate as' if same else 'more accurate than'} {baseline}",
            subject, baseline, "top1", "equal" if same else "higher", PRINTED,
            f"{ours['top1']:g} vs {base['top1']:g} % top-1", CSPNET_README,
            tolerance=SAME_ACCURACY_POINTS if same else 0.0, paper_delta=None if same else ours["top1"] - base["top1"]))
    # CSPPeleeNet has slightly *more* parameters than PeleeNet: only FLOPs and accuracy are claimed.
    claims += [
        Claim("table2-csp-densenet-flops", "table2", "csp-densenet needs fewer FLOPs than densenet",
              "csp-densenet", "densenet", "flops", "lower", PRINTED, "0.888 vs 1.017 BFLOPs (PeleeNet)",
              CSPNET_README, relative=True, deterministic=True, paper_delta=0.888 / 1.017 - 1),
        Claim("table2-csp-densenet-top1", "table2", "csp-densenet is more accurate than densenet",
              "csp-densenet", "densenet", "top1", "higher", PRINTED, "70.9 vs 70.7 % top-1 (PeleeNet)",
              CSPNET_README, paper_delta=70.9 - 70.7),
    ]
    return claims


def _claims() -> list[Claim]:
    sg = "stop gradient, Fig. 9 / Table 3 (" + MAIN_PAPER + ")"
    return [
        # Table 1: sparse aggregation keeps accuracy with fewer parameters.
        Claim("table1-sparsenet-error", "table1",
              f"sparsenet's error equals densenet's (within {SAME_ACCURACY_POINTS:g} points)",
              "sparsenet", "densenet", "error", "equal", PRINTED, "24.65 vs 24.79 % error (40 layers)",
              SPARSENET_README, tolerance=SAME_ACCURACY_POINTS),
        Claim("table1-sparsenet-params", "table1", "sparsenet has fewer parameters than densenet",
              "sparsenet", "densenet", "params", "lower", PRINTED, "0.76 vs 1.1 M (40 layers)",
              SPARSENET_README, relative=True, deterministic=True, paper_delta=0.76 / 1.1 - 1),
        *_table2_claims(),
        # Table 3 (classification form): shortening gradient paths matters for deep networks.
        Claim("table3-identity-sg", "table3", "a deep ResNet beats the same net with the identity path stopped",
              "resnet-deep", "resnet-sg-identity", "top1", "higher", STATED,
              "stopping the identity gradient makes every shortest path = depth", sg),
        Claim("table3-plain", "table3", "a deep ResNet beats the plain net of the same depth",
              "resnet-deep", "plain-deep", "top1", "higher", STATED,
              "residual shortcuts keep the shortest gradient path short", sg),
        Claim("table3-block-vs-identity", "table3",
              "stopping the block path hurts less than stopping the identity path",
              "resnet-sg-block", "resnet-sg-identity", "top1", "higher", STATED,
              "sg on the block keeps shortest path 1, longest 2", sg),
        # Table 4: deep VoVNet converges only with gradient path planning.
        Claim("table4-planned-converges", "table4", "planned deep VoVNet converges where plain deep VoVNet does not",
              "vovnet-deep-planned", "vovnet-deep", "converged", "higher", STATED,
              "deep VoVNet: does not converge -> converges well", MAIN_PAPER),
        Claim("table4-planned-csp-converges", "table4", "planned + CSP deep VoVNet converges where deep VoVNet does not",
              "vovnet-deep-planned-csp", "vovnet-deep", "converged", "higher", STATED,
              "deep VoVNet: does not converge -> converges well", MAIN_PAPER),
        *_cost_claims("table4", "vovnet-deep-planned-csp", "vovnet-deep-planned",
                      "CSP halves the block input", "CSP halves the block input", MAIN_PAPER, STATED),
        # Table 5: layer level, PRN vs YOLOR-v3.
        Claim("table5-flops", "table5", "yolor-prn costs about the same FLOPs as yolor-v3",
              "yolor-prn", "yolor-v3", "flops", "equal", STATED, "compute nearly equal", MAIN_PAPER,
              relative=True, tolerance=NEARLY_EQUAL_FLOPS, deterministic=True),
        Claim("table5-ap-box", "table5", "yolor-prn has higher box AP than yolor-v3",
              "yolor-prn", "yolor-v3", "ap_box", "higher", STATED_DELTA, "+0.5 AP box", MAIN_PAPER, paper_delta=0.5),
        Claim("table5-ap-mask", "table5", "yolor-prn has higher mask AP than yolor-v3",
              "yolor-prn", "yolor-v3", "ap_mask", "higher", STATED_DELTA, "+0.1 AP mask", MAIN_PAPER, paper_delta=0.1),
        Claim("table5-ap75-mask", "table5", "yolor-prn has higher mask AP75 than yolor-v3",
              "yolor-prn", "yolor-v3", "ap75_mask", "higher", STATED_DELTA, "+0.3 AP75 mask", MAIN_PAPER,
              paper_delta=0.3),
        # Table 6: stage level, CSP vs YOLOR-v3 and the fusion variants.
        Claim("table6-flops", "table6", "yolor-csp needs fewer FLOPs than yolor-v3",
              "yolor-csp", "yolor-v3", "flops", "lower", STATED_DELTA, "-22 % computation", MAIN_PAPER,
              relative=True, deterministic=True, paper_delta=-0.22),
        Claim("table6-ap-box", "table6", "yolor-csp has higher box AP than yolor-v3",
              "yolor-csp", "yolor-v3", "ap_box", "higher", STATED_DELTA, "+1.5 AP box", MAIN_PAPER, paper_delta=1.5),
        *[Claim(f"table6-full-vs-{v}", "table6", f"full CSP learns better than CSP fusion {v}",
                "yolor-csp", f"yolor-csp-{v}", "ap_box", "higher", STATED,
                f"full CSP > fusion {v}", MAIN_PAPER) for v in ("first", "last")],
        *[Claim(f"table6-{v}-flops", "table6", f"CSP fusion {v} needs fewer FLOPs than yolor-v3",
                f"yolor-csp-{v}", "yolor-v3", "flops", "lower", STATED,
                "every CSP variant costs much less", MAIN_PAPER, relative=True, deterministic=True)
          for v in ("first", "last")],
        *[Claim(f"table6-{v}-ap-box", "table6", f"CSP fusion {v} is more accurate than yolor-v3",
                f"yolor-csp-{v}", "yolor-v3", "ap_box", "higher", STATED,
                "every CSP variant is more accurate", MAIN_PAPER) for v in ("first", "last")],
        # Table 7: network level, ELAN vs YOLOR-v3. yolor-elan is the "2,1s" setting; the paper's
        # other stated setting (-35 %) is not named in its text: our lightest stacks stand for it.
        Claim("table7-flops", "table7", "yolor-elan ('2,1s') needs fewer FLOPs than yolor-v3",
              "yolor-elan", "yolor-v3", "flops", "lower", STATED_DELTA,
              "-26 % computation ('2,1s')", MAIN_PAPER, relative=True, deterministic=True, paper_delta=-0.26),
        Claim("table7-ap-box", "table7", "yolor-elan ('2,1s') has higher box AP than yolor-v3",
              "yolor-elan", "yolor-v3", "ap_box", "higher", STATED_DELTA, "+1.9 AP box ('2,1s')", MAIN_PAPER,
              paper_delta=1.9),
        Claim("table7-ap-mask", "table7", "yolor-elan ('2,1s') has higher mask AP than yolor-v3",
              "yolor-elan", "yolor-v3", "ap_mask", "higher", STATED_DELTA, "+0.6 AP mask ('2,1s')", MAIN_PAPER,
              paper_delta=0.6),
        Claim("table7-light-flops", "table7", "yolor-elan-b1n1s ('1,1s') needs fewer FLOPs than yolor-v3",
              "yolor-elan-b1n1s", "yolor-v3", "flops", "lower", STATED_DELTA,
              "-35 % computation (an ELAN setting the text does not name)", MAIN_PAPER,
              relative=True, deterministic=True, paper_delta=-0.35),
        Claim("table7-light-ap-box", "table7", "yolor-elan-b1n1s ('1,1s') has higher box AP than yolor-v3",
              "yolor-elan-b1n1s", "yolor-v3", "ap_box", "higher", STATED_DELTA,
              "+0.7 AP box (an ELAN setting the text does not name)", MAIN_PAPER, paper_delta=0.7),
        # Table 3 (detection form): stop gradient on YOLOR-CSP's residual blocks.
        Claim("table3-detection-identity-sg", "table3_detection",
              "yolor-csp has higher box AP than the same detector with the identity path stopped",
              "yolor-csp", "yolor-csp-sg-identity", "ap_box", "higher", STATED,
              "stopping the identity gradient makes every shortest path = depth", sg),
        Claim("table3-detection-block-vs-identity", "table3_detection",
              "stopping the block path hurts box AP less than stopping the identity path",
              "yolor-csp-sg-block", "yolor-csp-sg-identity", "ap_box", "higher", STATED,
              "sg on the block keeps shortest path 1, longest 2", sg),
        # Table 8: all gradient-path designs beat the baselines; ELAN is best.
        *[Claim(f"table8-{m}-vs-{b}", "table8", f"{m} has higher box AP than {b}", m, b, "ap_box", "higher",
                STATED, "every gradient-path design beats the baselines", MAIN_PAPER)
          for m in ("yolor-prn", "yolor-csp", "yolor-elan") for b in ("yolor-v3", "yolov5")],
        *[Claim(f"table8-elan-vs-{m}", "table8", f"yolor-elan has higher box AP than {m}", "yolor-elan", m,
                "ap_box", "higher", STATED, "YOLOR-ELAN is the most accurate", MAIN_PAPER)
          for m in ("yolor-prn", "yolor-csp")],
        *[Claim(f"table8-elan-params-vs-{m}", "table8", f"yolor-elan has fewer parameters than {m}",
                "yolor-elan", m, "params", "lower", STATED, "YOLOR-ELAN is best in parameters", MAIN_PAPER,
                relative=True, deterministic=True)
          for m in ("yolor-v3", "yolor-prn", "yolor-csp", "yolov5")],
        # Fig. 1: the objective decides what a layer learns.
        Claim("fig1-aux-probe", "fig1",
              "with an auxiliary loss at a shallow layer, that layer's features become more linearly separable",
              "aux-loss", "no-aux-loss", "shallow_probe_top1", "higher", STATED,
              "shallow layers can learn high-level features if the loss reaches them", MAIN_PAPER),
        # LW-DNA: a shrunk widened net beats the regular one at lower cost.
        Claim("lwdna-top1", "lwdna", "the LW-DNA shrunk network is more accurate than the regular one",
              "lwdna-shrunk", "lwdna-regular", "top1", "higher", STATED,
              "layer-wise differentiated widths beat the regular configuration", LWDNA_PAPER),
        Claim("lwdna-flops", "lwdna", "the LW-DNA shrunk network needs no more FLOPs than the regular one",
              "lwdna-shrunk", "lwdna-regular", "flops", "lower", STATED, "at lower complexity", LWDNA_PAPER,
              relative=True, deterministic=True),
        # DSFB: shared filter bases save parameters (but cost FLOPs on CIFAR).
        Claim("dsfb-params", "dsfb", "resnet-dsfb has fewer parameters than the unshared ResNet of its depth",
              "resnet-dsfb", "resnet-dsfb-depth-ref", "params", "lower", STATED, "shared bases save parameters",
              DSFB_PAPER, relative=True, deterministic=True),
        Claim("dsfb-double-params", "dsfb",
              "the double-shared resnet-dsfb-double has fewer parameters than the unshared ResNet of its depth",
              "resnet-dsfb-double", "resnet-dsfb-depth-ref", "params", "lower", PRINTED,
              "0.31 vs 0.85 M (ResNet56-S16U1 vs ResNet-56)", DSFB_PAPER, relative=True, deterministic=True,
              paper_delta=0.31 / 0.85 - 1),
        Claim("dsfb-flops", "dsfb", "resnet-dsfb needs more FLOPs than the unshared ResNet of its depth",
              "resnet-dsfb", "resnet-dsfb-depth-ref", "flops", "higher", STATED, "s + u > C costs FLOPs on CIFAR",
              DSFB_PAPER, relative=True, deterministic=True),
        Claim("dsfb-orthogonality", "dsfb", "the orthogonality penalty makes resnet-dsfb more accurate",
              "resnet-dsfb", "resnet-dsfb-noreg", "top1", "higher", STATED,
              "the orthogonality regulariser improves accuracy", DSFB_PAPER),
    ]


CLAIMS: tuple[Claim, ...] = tuple(_claims())

# Table 1: the SparseNet comparison as the paper reads it (PAPER.md section 3), tested on our networks.
CORRELATION_CLAIMS: tuple[CorrelationClaim, ...] = (
    CorrelationClaim("table1-shortest-path-vs-accuracy", "table1",
                     "the longest shortest gradient path does not track accuracy", "longest_shortest_path",
                     DOES_NOT_TRACK, "shortest gradient path does not track accuracy (SparseNet's Table 1)",
                     MAIN_PAPER),
    CorrelationClaim("table1-aggregation-vs-accuracy", "table1",
                     "the number of aggregated features does not track accuracy", "aggregated_features_mean",
                     DOES_NOT_TRACK, "number of aggregated features does not track accuracy (SparseNet's Table 1)",
                     MAIN_PAPER),
    CorrelationClaim("table1-combination-vs-accuracy", "table1",
                     "the gradient combination size tracks accuracy", "combination_size_mean", TRACKS,
                     "richer gradient combinations make networks learn better", MAIN_PAPER),
    CorrelationClaim("table1-combination-diversity-vs-accuracy", "table1",
                     "the diversity of gradient combinations (distinct ones per layer) tracks accuracy",
                     "distinct_combinations_mean", TRACKS,
                     "richer gradient combinations make networks learn better", MAIN_PAPER),
)


def references(table: str) -> list[Reference]:
    """The printed numbers of `table` (e.g. "table2"), in the paper's order."""
    check_choice("table", table, sorted({r.table for r in REFERENCES}))
    return [r for r in REFERENCES if r.table == table]


def claims(table: str) -> list[Claim]:
    """The claims of `table` (e.g. "table4"), in the paper's order."""
    check_choice("table", table, sorted({c.table for c in CLAIMS}))
    return [c for c in CLAIMS if c.table == table]


def correlation_claims(table: str) -> list[CorrelationClaim]:
    """The correlation claims of `table` (e.g. "table1"), in the paper's order."""
    check_choice("table", table, sorted({c.table for c in CORRELATION_CLAIMS}))
    return [c for c in CORRELATION_CLAIMS if c.table == table]
