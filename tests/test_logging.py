"""bioinstruct as a library leaves its caller's logging alone.

rouge-score logs through absl, and absl calls ``logging.basicConfig()`` when the root logger
has no handler; absl's own handler holds whatever sys.stderr was when absl was imported
(under pytest, the captured stream); and submitit's import runs ``logging.config.dictConfig``,
which closes every handler in the process, absl's with its stream. Together they closed
pytest's capture and crashed the rest of the suite. A fresh interpreter shows whether
anything in the package still configures or closes the caller's logging."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PROBE = r"""
import importlib, io, logging, pkgutil, sys
# The caller's logging, and a stream that stands in for sys.stderr while absl loads.
mine = io.StringIO()
logging.getLogger("caller").addHandler(logging.StreamHandler(mine))
real_stderr, sys.stderr = sys.stderr, io.StringIO()
borrowed = sys.stderr
import bioinstruct
# Every module, as a caller might import them (the testing helpers included).
for m in pkgutil.walk_packages(bioinstruct.__path__, "bioinstruct."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
from bioinstruct.modeling import metrics
from bioinstruct.llm import judge
metrics.rouge(["the patient has a fever"], ["the patient is febrile"])
prompt = "Reference answer: aspirin daily\nAssistant's answer: aspirin\n\nScore each dimension"
judge.offline_judge({"messages": [{"content": prompt}]})
assert metrics.rouge_scorer(("rougeL",), False) is metrics.rouge_scorer(("rougeL",), False)
sys.stderr = real_stderr
from bioinstruct.launch.submitit_env import load_submitit as _submitit
_submitit()  # what launch imports
assert not mine.closed and not borrowed.closed, "a library closed its caller's streams"
print(repr(logging.getLogger().handlers))
"""


def test_nothing_configures_the_root_logger():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_a_progress_bar_in_a_log_file_is_lines_not_carriage_returns(monkeypatch, capsys):
    from bioinstruct.runs.progress import progress

    monkeypatch.setenv("BIOINSTRUCT_PROGRESS", "1")
    for _ in progress(range(3), desc="score", mininterval=0):
        pass
    err = capsys.readouterr().err  # captured: not a terminal, as a Slurm log
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("score: 100%") and len(err.splitlines()) >= 3
