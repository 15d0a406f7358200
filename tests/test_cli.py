import subprocess
import sys

import pytest

from bioinstruct.cli import VERBS, main

pytestmark = pytest.mark.unit

ISSUE_VERBS = ["generate", "filter", "decontaminate", "classify", "agreement", "stats", "subsets", "train", "evaluate",
               "report", "launch", "status", "quickstart", "doctor", "make-tiny-model", "get-model"]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bioinstruct", *args], capture_output=True, text=True,
                          env=env)


def test_help_lists_every_verb():
    out = run_cli("--help")
    assert out.returncode == 0
    for verb in ISSUE_VERBS:
        assert f"    {verb}" in out.stdout
    assert {v.name for v in VERBS} == set(ISSUE_VERBS)


@pytest.mark.parametrize("verb", ISSUE_VERBS)
def test_each_verb_help_describes_its_contract(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: bioinstruct {verb}" in text
    # Every contract says what the verb reads or writes (or prints, for reports on screen).
    assert any(w in text for w in ("Reads:", "Input", "Output", "Writes", "Prints", "Print"))


def test_config_error_is_one_clear_line(tmp_path, capsys):
    assert main(["make-tiny-model", str(tmp_path / "m"), "pretrain_step=5"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'pretrain_step'" in err and "closest valid key: 'pretrain_steps'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_print_config_shows_resolved_values(capsys):
    with pytest.raises(SystemExit) as e:
        main(["quickstart", "tiny_model.seed=7", "--print-config"])
    assert e.value.code == 0
    assert "seed: 7" in capsys.readouterr().out


def test_doctor_never_prints_the_key():
    import os
    secret = "sk-test-0123456789abcdef-never-print"
    out = run_cli("doctor", env={**os.environ, "OPENAI_API_KEY": secret})
    assert out.returncode == 0, out.stderr
    assert "set (value hidden)" in out.stdout and "torch build" in out.stdout
    assert secret not in out.stdout + out.stderr


def test_overrides_may_follow_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["filter", "--in", "x.jsonl", "threshold=0.5", "--out", "y.jsonl", "rules.min_instruction_words=2",
              "--print-config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "threshold: 0.5" in out and "min_instruction_words: 2" in out and "input: x.jsonl" in out
    with pytest.raises(SystemExit):
        main(["filter", "--in", "x.jsonl", "--bogus"])


def test_an_unexpected_error_is_one_line_and_the_manifest_says_failed(tmp_path, capsys, monkeypatch):
    """A bug ends in one line naming it and how to see more; the stage's manifest says
    "failed" with the message; --debug shows the traceback."""
    import json

    from bioinstruct.stages import filter as filter_stage

    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"instruction": "Name two loop diuretics.", "input": "", "output": "furosemide"}) + "\n")

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(filter_stage, "write_jsonl", broken)
    args = ["filter", "--in", str(data), "--out", str(tmp_path / "filter" / "kept.jsonl")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == ("bioinstruct filter: unexpected error: RuntimeError: a bug over two lines "
                   "(rerun with --debug for the traceback)\n")
    manifest = json.loads((tmp_path / "filter" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "a bug" in manifest["error"]
    with pytest.raises(RuntimeError):
        main([*args, "--debug"])


def test_a_path_that_cannot_be_written_is_a_clear_error(tmp_path, capsys):
    import json

    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"instruction": "Name two loop diuretics.", "input": "", "output": "furosemide"}) + "\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["filter", "--in", str(data), "--out", str(blocker / "kept.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bioinstruct filter: error: ") and str(blocker) in err and err.count("\n") == 1
    assert blocker.read_text() == "not a folder"


def test_evaluate_writes_under_the_run_directory_unless_out_overrides_it():
    from pathlib import Path

    from bioinstruct.stages.evaluate import EvaluateConfig, shard_dirs
    cfg = EvaluateConfig(run_dir="runs/v1", tasks=["medqa"], shard="2/4")
    assert shard_dirs(cfg) == [Path("runs/v1/evaluate/base/medqa/shard-2-of-4")]
    cfg = EvaluateConfig(run_dir="runs/v1", out="/scratch/ev", tasks=["medqa"])
    assert shard_dirs(cfg) == [Path("/scratch/ev/base/medqa/shard-1-of-1")]
