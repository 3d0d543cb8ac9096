"""benchmarks/device_session.sh with no time left: it starts nothing and packs what results/ holds."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_session.sh"
TIME_RAN_OUT = 3  # the script's exit status when the time limit came first


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
def test_a_session_without_time_packs_the_records_but_not_weights_or_checkpoints(tmp_path):
    work = tmp_path / "repo"
    (work / "benchmarks").mkdir(parents=True)
    shutil.copy(SCRIPT, work / "benchmarks")
    (work / "gradpath_lib").symlink_to(REPO / "gradpath_lib")
    results = work / "results" / "smoke"
    for folder, name in (("runs", "abc.json"), ("tables", "t.csv"), ("weights", "abc.pt"), ("checkpoints", "abc.pt")):
        (results / folder).mkdir(parents=True)
        (results / folder / name).write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "GRADPATH_LONGEST_RUN_S": "1", "GRADPATH_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "benchmarks/device_session.sh", "1", "smoke"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == TIME_RAN_OUT, done.stdout + done.stderr
    assert "bench resnet: not done" in done.stdout and "exit 3" in done.stdout
    parts = sorted(out.glob("results-smoke.tar.gz.*"))
    assert parts and parts[0].name == "results-smoke.tar.gz.00"
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        names = {m.name for m in tar.getmembers() if m.isfile()}
    assert names == {"results/smoke/runs/abc.json", "results/smoke/tables/t.csv",
                     "results/smoke/tables/bench_reproduce.csv"}
