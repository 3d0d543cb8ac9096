"""Every chapter notebook, executed by papermill at the smoke scale: its tables and figures."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from gradpath_lib.errors import GradpathError
from gradpath_lib.experiments import chapters
from gradpath_lib.experiments.classification import TABLE2_MODELS, TABLE3_MODELS, TABLE4_MODELS
from gradpath_lib.experiments.extensions import DSFB_MODELS, LWDNA_MODELS, lwdna_claims
from gradpath_lib.experiments.detection import (TABLE3_DETECTION_MODELS, TABLE5_MODELS, TABLE6_MODELS,
                                                TABLE7_MODELS, TABLE8_MODELS)
from gradpath_lib.notebook import banner, check_seeds, setup
from gradpath_lib.paper import claims
from gradpath_lib.runner import NOTEBOOKS_DIR, executed_notebook, select_chapters
from gradpath_lib.verdicts import VERDICTS

from conftest import SMOKE_TIMEOUT_S

pytestmark = pytest.mark.timeout(SMOKE_TIMEOUT_S)  # the shared smoke reproduction runs in the first test

STANDARD_PARAMETERS = ("scale", "seeds", "device", "allow_train", "jobs", "results_dir")
VERDICT_COLUMNS = ["claim", "kind", "paper", "ours", "ours / paper", "verdict", "why", "n"]
DETECTION_COLUMNS = ["model", "status", "params (M)", "GFLOPs (run input)", "GFLOPs (640)", "Δparams",
                     "ΔFLOPs", "ΔFLOPs (640)", "AP box", "AP75 box", "AP mask", "AP75 mask"]
# chapter -> {table csv: (expected first column values, columns that must be present)}
EXPECTED_TABLES = {
    "table2": {"table2": (list(TABLE2_MODELS), ["model", "status", "params", "mflops", "top1",
                                                "paper model", "paper params (M)", "paper BFLOPs",
                                                "paper top-1 (%)"])},
    "table3_classification": {"table3_classification": (list(TABLE3_MODELS), [
        "model", "status", "params", "top1", "train_loss", "longest shortest path", "longest path"])},
    "table4": {"table4": (list(TABLE4_MODELS), ["model", "status", "first diverged step", "params", "mflops",
                                                "top1", "train_loss", "longest shortest path"])},
    "fig1_objective": {"fig1_objective": (None, ["layer", "probe top-1 (%), no-aux-loss",
                                                 "probe top-1 (%), aux-loss"])},
    "reproducing": {"reproducing": (None, ["chapter", "runs needed", "recorded", "training time (min)",
                                           "devices"]),
                    "recipes_classification": (None, ["field", "smoke", "mini", "paper", "why"]),
                    "recipes_detection": (None, ["field", "smoke", "mini", "paper", "why"])},
    "cifar_det": {"cifar_det_stats": (None, ["split", "class", "small", "medium", "large", "all"])},
    **{name: {name: (list(models), DETECTION_COLUMNS)} for name, models in [
        ("table5", TABLE5_MODELS), ("table6", TABLE6_MODELS), ("table7", TABLE7_MODELS)]},
    "table3_detection": {"table3_detection": (list(TABLE3_DETECTION_MODELS), [
        *DETECTION_COLUMNS, "longest shortest path", "longest path"])},
    "lwdna": {"lwdna": ([f"{m}{s}" for m in LWDNA_MODELS for s in ("", " lwdna-taylor", " lwdna-random")],
                        ["model", "status", "params", "mflops", "top1"])},
    "dsfb": {"dsfb": (list(DSFB_MODELS), ["model", "status", "params", "mflops", "top1", "paper model",
                                          "paper params (M)", "paper top-1 (%)"]),
             "dsfb_shared_basis_paths": (None, ["module", "positions", "n_timestamps", "shortest", "longest",
                                                "combination_size"])},
    "table8": {"table8": (list(TABLE8_MODELS), DETECTION_COLUMNS),
               "table8_sizes": (list(TABLE8_MODELS), ["model", "status", "APs box", "APm box", "APl mask"])},
}
EXPECTED_VERDICTS = {"table2": "table2", "table3_classification": "table3", "table4": "table4",
                     "fig1_objective": "fig1", **{n: n for n in ("table5", "table6", "table7", "table3_detection",
                                                                 "table8", "dsfb")}}
EXPECTED_FIGURES = {"architecture": [f"fig{n}" for n in range(2, 7)], "table4": ["table4_training_loss"],
                    "lwdna": ["lwdna_widths"], "dsfb": ["dsfb_gradient_norms"],
                    "fig1_objective": ["fig1_probes"], "cifar_det": ["cifar_det_train", "cifar_det_val"],
                    **{name: [f"{name}_box_ap"] for name in ("table3_detection", "table5", "table6", "table7", "table8")}}
# a detection page draws each detector's predictions, or names it among those that found nothing
PREDICTION_PAGES = {"table3_detection": TABLE3_DETECTION_MODELS, "table5": TABLE5_MODELS, "table6": TABLE6_MODELS,
                    "table7": TABLE7_MODELS, "table8": TABLE8_MODELS}


def source_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", source_notebooks(), ids=lambda p: p.stem)
def test_stored_notebooks_carry_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", source_notebooks(), ids=lambda p: p.stem)
def test_notebook_has_standard_parameters_and_a_registered_chapter(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    assert "hide-cell" in tagged[0].metadata["tags"], f"{path.name}: the book folds the default parameters away"
    names = [line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line]
    assert set(STANDARD_PARAMETERS) <= set(names)
    assert path.stem in {c.name for c in chapters()}, f"{path.name} has no registered chapter"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    title = nb.cells[0].source.splitlines()[0].removeprefix("# ")
    registered = {c.name: c.title for c in chapters()}[path.stem]
    assert registered == title, f"{path.name}: its H1 {title!r} is not its chapter's title {registered!r}"


def test_every_chapter_notebook_executes(smoke_results) -> None:
    results, reports = smoke_results
    assert [r.name for r in reports] == [c.name for c in select_chapters()]
    failed = {r.name: r.error for r in reports if r.status != "executed"}
    assert not failed, failed
    failed_runs = {r.name: r.runs for r in reports if r.runs.get("failed")}
    assert not failed_runs, failed_runs
    for report in reports:
        page = nbformat.read(executed_notebook(results, "smoke", report.name), as_version=4)
        errors = [o for c in page.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
        streams = [o.get("text", "") for c in page.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.get("name") == "stderr"]
        assert not [t for t in streams if "Warning" in t], f"{report.name}: a warning on the page: {streams}"
        injected = [c for c in page.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "allow_train = False" in injected[0].source


@pytest.mark.parametrize("name", sorted(EXPECTED_TABLES))
def test_chapter_tables(smoke_results, name: str) -> None:
    results, _ = smoke_results
    for table, (first_column, columns) in EXPECTED_TABLES[name].items():
        frame = pd.read_csv(results / "smoke" / "tables" / f"{table}.csv")
        assert set(columns) <= set(frame.columns), f"{table}: {list(frame.columns)}"
        if first_column is not None:
            assert frame.iloc[:, 0].tolist() == first_column
            # at the smoke scale every run is trained, so every row has numbers
            assert (frame["status"] == "1 ok").all() or frame["status"].str.contains("diverged").any()


@pytest.mark.parametrize("name", [*sorted(EXPECTED_VERDICTS), "lwdna"])
def test_chapter_verdicts_judge_every_claim(smoke_results, name: str) -> None:
    results, _ = smoke_results
    frame = pd.read_csv(results / "smoke" / "tables" / f"{name}_verdicts.csv")
    assert list(frame.columns) == VERDICT_COLUMNS
    expected = lwdna_claims() if name == "lwdna" else claims(EXPECTED_VERDICTS[name])
    assert frame["claim"].tolist() == [c.text for c in expected]
    assert set(frame["verdict"]) <= set(VERDICTS)
    # one smoke seed: accuracy claims cannot be decided, exact cost claims can
    accuracy = frame[frame["paper"].str.contains("top-1") | frame["kind"].str.startswith("stated")]
    assert (frame.loc[frame["claim"].str.contains("accurate"), "verdict"] == "inconclusive").all()
    assert len(accuracy) > 0


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_chapter_figures(smoke_results, name: str) -> None:
    results, _ = smoke_results
    for figure in EXPECTED_FIGURES[name]:
        path = results / "smoke" / "figures" / f"{figure}.png"
        assert path.exists() and path.stat().st_size > 10_000, path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(PREDICTION_PAGES))
def test_detection_pages_draw_predictions_or_say_none_were_found(smoke_results, name: str) -> None:
    results, _ = smoke_results
    page = nbformat.read(executed_notebook(results, "smoke", name), as_version=4)
    said = [o.get("data", {}).get("text/markdown", "") for c in page.cells if c.cell_type == "code" for o in c.outputs]
    nothing = next((text for text in said if text.startswith("**No detection scoring")), "")
    for model in PREDICTION_PAGES[name]:
        picture = results / "smoke" / "figures" / f"{name}_predictions_{model}.png"
        assert (picture.exists() and picture.stat().st_size > 10_000) or f"`{model}`" in nothing, (name, model)


def test_banner_says_smoke_and_where(smoke_results) -> None:
    results, _ = smoke_results
    page = json.loads(executed_notebook(results, "smoke", "table2").read_text())
    text = json.dumps(page)
    assert "SMOKE NUMBERS" in text and "Numbers from:" in text and "cpu" in text


def test_a_chapter_that_trains_nothing_has_no_smoke_numbers_warning(tmp_path: Path) -> None:
    def note(name: str, scale: str = "smoke") -> str:
        return banner(setup(name, scale=scale, results_dir=tmp_path))

    assert "SMOKE NUMBERS" not in note("architecture") and "Nothing on this page is trained" in note("architecture")
    assert note("cifar_det", "mini").count("Nothing on this page is trained") == 1
    assert "SMOKE NUMBERS" in note("table2") and "SMOKE NUMBERS" in note("reproducing")  # it reads the records


def test_notebook_without_records_shows_what_is_missing(tmp_path: Path, capsys) -> None:
    ctx = setup("table2", scale="smoke", results_dir=tmp_path)
    runs = ctx.collect()
    assert all(record is None for _, record in runs) and len(runs) == len(TABLE2_MODELS)
    out = capsys.readouterr().out
    assert "8 missing" in out and "`csp-resnet` seed 0: missing" in out


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": "huge"}, "valid choices: smoke, mini, paper"),
    ({"seeds": [0, 0]}, "parameter seeds"),
    ({"seeds": "0"}, "parameter seeds"),
    ({"jobs": 0}, "parameter jobs"),
    ({"allow_train": "yes"}, "parameter allow_train"),
    ({"device": "tpu"}, "valid choices: auto, cpu, cuda"),
    ({"choices": {"metric": ("top5", ["top1"])}}, "valid choices: top1"),
])
def test_bad_parameter_fails_at_once_listing_valid_values(kwargs, message) -> None:
    with pytest.raises(GradpathError, match=message.replace("(", r"\(")):
        setup("table2", **kwargs)


def test_unknown_chapter_lists_the_chapters() -> None:
    with pytest.raises(GradpathError, match="table2"):
        setup("table99")


def test_seeds_default_to_the_scale() -> None:
    assert check_seeds(None, "mini") == [0, 1, 2]
    assert check_seeds(3, "smoke") == [3]


def test_bad_parameter_fails_the_executed_notebook_with_a_clear_message(tmp_path: Path) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(NOTEBOOKS_DIR / "table2.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"scale": "huge", "results_dir": str(tmp_path)},
                                   kernel_name="python3", progress_bar=False)
    assert err.value.ename == "GradpathError" and "valid choices: smoke, mini, paper" in err.value.evalue


def test_provenance_note_warns_when_records_come_from_different_datasets() -> None:
    from gradpath_lib.notebook import provenance_note
    from gradpath_lib.run_pool import RunOutcome

    def outcome(seed: int, sha: str) -> RunOutcome:
        record = {"provenance": {"device_name": "cpu", "dataset_sha256": sha}}
        return RunOutcome({"model": "resnet", "seed": seed}, record, "cached")

    same = provenance_note([outcome(0, "a" * 64), outcome(1, "a" * 64)], allow_train=False)
    mixed = provenance_note([outcome(0, "a" * 64), outcome(1, "b" * 64)], allow_train=False)
    assert "different copies of the data" not in same and "`aaaaaaaaaaaa…`" in same
    assert "different copies of the data" in mixed and "`bbbbbbbbbbbb…`" in mixed


def test_floats_on_the_page_read_as_people_write_them() -> None:
    from gradpath_lib.notebook import readable_number

    assert [readable_number(v) for v in (22.73, 9.74, 0.888, 75.8, 1017.4, 123456.0)] == [
        "22.73", "9.74", "0.888", "75.8", "1,017", "123,456"]
    assert readable_number("1 ok") == "1 ok" and readable_number(3) == 3
