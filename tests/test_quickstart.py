import json
import subprocess
import sys

import pytest

from bioinstruct.runs.rundir import read_manifest

pytestmark = pytest.mark.integration


def test_quickstart_runs_end_to_end_and_reruns_as_a_no_op(tmp_path):
    run_dir = tmp_path / "qs"
    cmd = [sys.executable, "-m", "bioinstruct", "quickstart", f"run_dir={run_dir}",
           "tiny_model.pretrain_steps=20"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    m = read_manifest(run_dir / "tiny-model")
    assert m["status"] == "complete"
    assert m["config"]["pretrain_steps"] == 20
    for stage in ("generate", "filter", "decontaminate", "classify", "stats", "subsets", "train/tiny__all", "report"):
        assert read_manifest(run_dir / stage)["status"] == "complete", stage
    assert len(list((run_dir / "evaluate").glob("*/*/results.json"))) == 18  # 9 tasks, base + tuned
    assert (run_dir / "report" / "index.html").exists()
    # every score also over the items no generated instruction touched, both in the report
    for path in (run_dir / "evaluate").glob("*/*/results.json"):
        assert json.loads(path.read_text())["untouched"]["decisions"].endswith("decontaminate/decisions.jsonl")
    assert "Scores on the items no training instruction touched" in (run_dir / "report" / "report.md").read_text()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "already complete" in second.stderr
    assert read_manifest(run_dir / "tiny-model")["attempt"] == 1
