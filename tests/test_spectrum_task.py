"""The spectrum task: trains (or reuses) its target run, records trained and initial spectra."""

from __future__ import annotations

import pytest
import torch

from gradpath_lib.analysis.figures import measured_spectra, spectrum_batch
from gradpath_lib.errors import GradpathError
from gradpath_lib.runs import ensure_run
from gradpath_lib.store import load_checkpoint, weights_path
from gradpath_lib.train.classify import initial_model
from gradpath_lib.train.spectrum import spectra_frame, spectrum_config

MODEL = "resnet"


@pytest.fixture(scope="module")
def spectrum_record(tmp_path_factory):
    results = tmp_path_factory.mktemp("spectrum")
    config = spectrum_config(MODEL, "smoke", 0, batch=8)
    config["target"]["recipe"]["epochs"] = 1
    return results, config, ensure_run(config, results_dir=results, device="cpu", progress=False)


def test_records_both_spectra_of_the_target_run(spectrum_record):
    results, config, record = spectrum_record
    target = ensure_run(config["target"], results_dir=results, allow_train=False)
    assert record["status"] == "ok" and record["metrics"]["target_run_id"] == target["run_id"]
    frame = spectra_frame({MODEL: record, "missing": None})
    assert frame.model.unique().tolist() == [MODEL]
    assert frame.groupby("weights").share.sum().round(9).to_dict() == {"initial": 1.0, "trained": 1.0}

    # The recorded spectra are those of the saved trained weights and of the run's initial weights.
    images, labels = spectrum_batch("smoke", 8)
    trained = initial_model(target["config"])
    trained.load_state_dict(load_checkpoint(weights_path(results, target["config"])))
    fresh = measured_spectra({"trained": trained, "initial": initial_model(target["config"])}, images, labels)
    for weights in ("trained", "initial"):
        expected = fresh[fresh.model == weights].share.to_numpy()
        got = frame[frame.weights == weights].share.to_numpy()
        assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-6)
    assert not frame[frame.weights == "trained"].share.equals(frame[frame.weights == "initial"].share)


def test_target_must_be_a_classify_run(tmp_path):
    config = spectrum_config(MODEL, "smoke", 0)
    config["target"]["task"] = "detect"
    with pytest.raises(GradpathError, match="must be a classify config"):
        ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
