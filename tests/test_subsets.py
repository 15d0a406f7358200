"""subsets: the ablation subsets, their manifest and formats."""

import hashlib
import json

import pytest

from bioinstruct.errors import ConfigError, DataError
from bioinstruct.io.rows import read_jsonl
from bioinstruct.stages.subsets import SubsetsConfig, run

pytestmark = pytest.mark.unit


def labelled(tmp_path, counts={"qa": 5, "ie": 8, "generation": 7, "other": 2, "unknown": 1}):
    rows, i = [], 0
    for category, n in counts.items():
        for _ in range(n):
            rows.append({"id": f"r{i}", "instruction": f"Task number {i}.", "input": "", "output": "x",
                         "category": category})
            i += 1
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_all_subsets_with_manifest_and_formats(tmp_path):
    source, rows = labelled(tmp_path)
    with pytest.raises(ConfigError, match=r"sizes: 100 not below the 23 records"):
        run(SubsetsConfig(run_dir=str(tmp_path), input=str(source), sizes=[5, 10, 100]))
    m = run(SubsetsConfig(run_dir=str(tmp_path), input=str(source), sizes=[5, 10],
                          formats=["jsonl", "alpaca", "hf"]))
    subsets = {s["name"]: s for s in m["summary"]["subsets"]}
    assert subsets["all"]["size"] == 23
    assert {n: subsets[n]["size"] for n in ("qa", "ie", "generation", "other")} == \
        {"qa": 5, "ie": 8, "generation": 7, "other": 2}
    assert subsets["qa+ie"]["size"] == 13 and len([n for n in subsets if "+" in n]) == 6
    assert subsets["all-but-other"]["size"] == 20
    assert "size-100" not in subsets  # refused above: larger than the data
    assert all(subsets[f"matched-{c}"]["size"] == 2 for c in ("qa", "ie", "generation", "other"))
    out = tmp_path / "subsets"
    qa_ie = read_jsonl(out / "qa+ie" / "data.jsonl")
    assert [r["id"] for r in qa_ie] == [r["id"] for r in rows if r["category"] in ("qa", "ie")]  # input order
    size5 = {r["id"] for r in read_jsonl(out / "size-5" / "data.jsonl")}
    size10 = {r["id"] for r in read_jsonl(out / "size-10" / "data.jsonl")}
    assert size5 < size10  # nested
    for s in subsets.values():
        assert s["sha256"] == hashlib.sha256((out / s["name"] / "data.jsonl").read_bytes()).hexdigest()
        assert s["seed"] == 0
    alpaca = json.loads((out / "qa" / "alpaca.json").read_text())
    assert alpaca[0] == {"instruction": "Task number 0.", "input": "", "output": "x"}
    import datasets
    assert datasets.load_from_disk(str(out / "ie" / "hf")).num_rows == 8


def test_seeded_and_reproducible(tmp_path):
    source, _ = labelled(tmp_path)
    a = run(SubsetsConfig(run_dir=str(tmp_path / "a"), input=str(source), sizes=[6]))["summary"]
    b = run(SubsetsConfig(run_dir=str(tmp_path / "b"), input=str(source), sizes=[6]))["summary"]
    c = run(SubsetsConfig(run_dir=str(tmp_path / "c"), input=str(source), sizes=[6], seed=1))["summary"]
    sha = lambda s: {x["name"]: x["sha256"] for x in s["subsets"]}  # noqa: E731
    assert sha(a) == sha(b)
    assert sha(a)["size-6"] != sha(c)["size-6"]


def test_unknown_category_is_an_error_naming_the_record(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text('{"instruction": "a", "output": "b", "category": "qa"}\n'
                    '{"instruction": "c", "output": "d", "category": "QA-ish"}\n')
    with pytest.raises(DataError, match=r"labelled.jsonl:2: category 'QA-ish' is not one of qa, ie"):
        run(SubsetsConfig(run_dir=str(tmp_path), input=str(path)))
    assert not (tmp_path / "subsets").exists()


def test_a_moved_run_directory_is_skipped_and_changed_labels_are_refused(tmp_path, capsys):
    """The default input (run_dir/classify/labelled.jsonl) moves with the run directory: the
    same labels, by content, wherever they are; labels edited in place are a different input."""
    import shutil

    from bioinstruct.errors import StageConflict

    run_dir = tmp_path / "run"
    (run_dir / "classify").mkdir(parents=True)
    labelled(run_dir / "classify")
    first = run(SubsetsConfig(run_dir=str(run_dir), sizes=[5]))
    shutil.move(run_dir, tmp_path / "moved")
    again = run(SubsetsConfig(run_dir=str(tmp_path / "moved"), sizes=[5]))
    assert "already complete" in capsys.readouterr().err and again["summary"] == first["summary"]
    labelled(tmp_path / "moved" / "classify", {"qa": 6, "ie": 8, "generation": 7, "other": 2})
    with pytest.raises(StageConflict, match=r"inputs.input: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run(SubsetsConfig(run_dir=str(tmp_path / "moved"), sizes=[5]))
    redone = run(SubsetsConfig(run_dir=str(tmp_path / "moved"), sizes=[5]), force=True)
    assert {s["name"]: s["size"] for s in redone["summary"]["subsets"]}["qa"] == 6
