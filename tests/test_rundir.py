import dataclasses

import pytest

from bioinstruct.errors import StageConflict
from bioinstruct.runs.rundir import is_complete, read_manifest, run_stage

pytestmark = pytest.mark.unit


@dataclasses.dataclass
class Cfg:
    n: int = 3
    name: str = "x"


def body_counting(calls):
    def body(out):
        calls.append(out)
        (out / "result.txt").write_text("ok")
        return {"n": 3}
    return body


def test_manifest_and_idempotent_rerun(tmp_path, capsys):
    calls = []
    m = run_stage(tmp_path / "filter", "filter", Cfg(), body_counting(calls))
    assert m["status"] == "complete" and m["summary"] == {"n": 3}
    assert m["stage"] == "filter" and m["config"] == {"n": 3, "name": "x"}
    assert m["version"] and m["started"] and m["ended"] and m["attempt"] == 1
    assert (tmp_path / "filter" / "config.yaml").read_text() == "n: 3\nname: x\n"
    assert is_complete(tmp_path / "filter")
    run_stage(tmp_path / "filter", "filter", Cfg(), body_counting(calls))
    assert len(calls) == 1
    assert "already complete" in capsys.readouterr().err


def test_manifest_records_the_versions_that_decide_results(tmp_path):
    """A results folder says how to rebuild its environment (with requirements/*.txt)."""
    import importlib.metadata
    import sys

    m = read_manifest(run_stage(tmp_path / "s", "s", Cfg(), body_counting([])) and tmp_path / "s")
    packages = m["environment"]["packages"]
    for name in ("torch", "transformers", "tokenizers", "peft", "accelerate", "deepspeed", "datasets", "openai"):
        assert packages[name] == importlib.metadata.version(name)
    assert m["environment"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert ("cuda" in m["environment"]) == ("torch" in sys.modules)


def test_other_config_is_refused_unless_forced(tmp_path):
    calls = []
    run_stage(tmp_path / "s", "s", Cfg(), body_counting(calls))
    with pytest.raises(StageConflict, match=r"n: 3 -> 4"):
        run_stage(tmp_path / "s", "s", Cfg(n=4), body_counting(calls))
    m = run_stage(tmp_path / "s", "s", Cfg(n=4), body_counting(calls), force=True)
    assert len(calls) == 2 and m["config"]["n"] == 4 and m["attempt"] == 2


@dataclasses.dataclass
class Section:
    size: int = 8


@dataclasses.dataclass
class Grown:
    """Cfg after a release added keys: one at the top, a new section, one inside a section."""
    n: int = 3
    name: str = "x"
    packing: bool = False
    section: Section = dataclasses.field(default_factory=Section)


def test_keys_added_since_a_run_count_at_their_defaults(tmp_path):
    calls = []
    run_stage(tmp_path / "s", "s", Cfg(), body_counting(calls))
    assert run_stage(tmp_path / "s", "s", Grown(), body_counting(calls))["config"] == {"n": 3, "name": "x"}
    with pytest.raises(StageConflict, match=r"packing: False -> True"):
        run_stage(tmp_path / "s", "s", Grown(packing=True), body_counting(calls))
    with pytest.raises(StageConflict, match=r"section.size: 8 -> 4"):
        run_stage(tmp_path / "s", "s", Grown(section=Section(4)), body_counting(calls))
    assert len(calls) == 1


def test_failure_is_recorded_and_next_run_retries(tmp_path):
    def broken(out):
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        run_stage(tmp_path / "s", "s", Cfg(), broken)
    m = read_manifest(tmp_path / "s")
    assert m["status"] == "failed" and "disk full" in m["error"]
    assert not is_complete(tmp_path / "s")
    calls = []
    assert run_stage(tmp_path / "s", "s", Cfg(), body_counting(calls))["status"] == "complete"
    assert len(calls) == 1


def test_signal_is_interrupted_not_failed(tmp_path):
    def preempted(out):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path / "s", "s", Cfg(), preempted)
    assert read_manifest(tmp_path / "s")["status"] == "interrupted"
