"""The report stage on a hand-made results tree: table numbers (averages and gains by hand),
missing cells, traceability to results.json, figures, index.html and re-runs."""

from __future__ import annotations

import csv
import json

import pytest
from matplotlib.image import imread

from bioinstruct.cli import main
from bioinstruct.errors import StageConflict
from bioinstruct.stages.report import ReportConfig, run
from bioinstruct.reporting.cells import MISSING
from bioinstruct.reporting.plots import DPI, figure_size

pytestmark = pytest.mark.unit

JUDGE = ("coherence", "completeness", "naturalness", "factuality")


def mc(acc, ci=None, gen=None, n=100):
    m = {"acc": {"value": acc, "n": n, **({"ci95": ci} if ci else {})}, "acc_norm": {"value": acc + 0.01, "n": n}}
    if gen is not None:
        m["generative_acc"] = {"value": gen, "n": n}
        m["unparseable_rate"] = {"value": 0.05, "n": n}
    return "multiple_choice", m


def ie(p, r, f1, ci=None):
    return "extraction", {"precision": {"value": p, "n": 50}, "recall": {"value": r, "n": 50},
                          "f1": {"value": f1, "n": 50, **({"ci95": ci} if ci else {})}}


def gen(judge_mean, similarity, rouge_l=0.2):
    m = {f"judge_{d}": {"value": judge_mean, "n": 20} for d in JUDGE}
    m["judge_mean"] = {"value": judge_mean, "n": 20, "ci95": [judge_mean - 0.5, judge_mean + 0.5]}
    m["similarity"] = {"value": similarity, "n": 20}
    m["rougeL"] = {"value": rouge_l, "n": 20}
    return "generation", m


def write_result(folder, model, task, spec, model_path="/models/llama2-7b"):
    kind, metrics = spec
    path = folder / model / task / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task, "kind": kind, "model": model, "model_path": model_path,
                                "adapter": None if model.startswith("base") else f"/runs/{model}/adapter",
                                "n": 100, "shards": 1, "metrics": metrics}))
    return path


# llama2-7b: base (a plain "base" folder), all-tasks model; bioasq of the tuned model is only shards.
BASE = {"medqa": mc(0.30, ci=[0.21, 0.39]), "medmcqa": mc(0.28), "pubmedqa": mc(0.50, ci=[0.45, 0.55]),
        "bioasq": mc(0.60), "mednli": mc(0.40),
        "medication_status": ie(0.5, 0.3, 0.40), "coreference": ie(0.6, 0.4, 0.50),
        "conv2note": gen(4.0, 0.60), "icliniq": gen(3.0, 0.50)}
TUNED = {"medqa": mc(0.36, gen=0.42), "medmcqa": mc(0.30, gen=0.33), "pubmedqa": mc(0.62, gen=0.70),
         "mednli": mc(0.52, gen=0.55),
         "medication_status": ie(0.6, 0.35, 0.44, ci=[0.40, 0.48]), "coreference": ie(0.6, 0.45, 0.52),
         "conv2note": gen(8.0, 0.70), "icliniq": gen(6.0, 0.65)}
# Training subsets of llama2-7b, on four tasks (some missing).
SUBSETS = {
    "qa": {"medqa": 0.34, "pubmedqa": 0.60, "medication_status": 0.41, "conv2note": 5.0},
    "ie": {"medqa": 0.31, "pubmedqa": 0.52, "medication_status": 0.45, "conv2note": 4.5},
    "generation": {"medqa": 0.29, "pubmedqa": 0.51, "conv2note": 7.5},
    "other": {"medqa": 0.30, "pubmedqa": 0.49},
    "qa+ie": {"medqa": 0.35, "pubmedqa": 0.63, "medication_status": 0.46, "conv2note": 6.0},
    "qa+generation": {"medqa": 0.37, "pubmedqa": 0.58, "conv2note": 7.9},
    "all-but-other": {"medqa": 0.35, "pubmedqa": 0.61},
    "matched-qa": {"medqa": 0.33, "pubmedqa": 0.57},
    "size-1000": {"medqa": 0.31, "pubmedqa": 0.55, "medication_status": 0.41, "conv2note": 5.5},
    "size-5000": {"medqa": 0.33, "pubmedqa": 0.59, "medication_status": 0.43, "conv2note": 6.5},
}
SIZES = {"all": 20000, "qa": 4000, "ie": 6000, "generation": 6000, "other": 2000, "size-1000": 1000,
         "size-5000": 5000}


def subset_spec(task, value):
    if task in ("medqa", "pubmedqa"):
        return mc(value, ci=[value - 0.04, value + 0.04], gen=value + 0.02)
    if task == "medication_status":
        return ie(value, value, value)
    return gen(value, 0.6)


def make_tree(root):
    ev = root / "evaluate"
    for task, spec in BASE.items():
        write_result(ev, "base", task, spec)
    for task, spec in TUNED.items():
        write_result(ev, "llama2-7b__all", task, spec)
    shard = ev / "llama2-7b__all" / "bioasq" / "shard-1-of-2"  # still running: no results.json
    shard.mkdir(parents=True)
    (shard / "predictions.jsonl").write_text('{"id": 1, "pred": 0, "gold": 0}\n')
    (shard / "manifest.json").write_text(json.dumps({"stage": "evaluate", "status": "running"}))
    # A sweep: each subset model evaluated into its own folder, with the base model again.
    for subset, scores in SUBSETS.items():
        folder = root / "sweep" / f"eval-{subset}"
        for task, value in scores.items():
            write_result(folder, f"llama2-7b__{subset}", task, subset_spec(task, value))
    write_result(root / "sweep" / "eval-qa", "base", "medqa", BASE["medqa"])  # the same base, again
    # A second family named the launcher's way, with most tasks missing.
    write_result(ev, "base-llama1-13b", "pubmedqa", mc(0.45), model_path="/models/llama1-13b")
    write_result(ev, "llama1-13b__all", "pubmedqa", mc(0.54), model_path="/models/llama1-13b")
    write_result(ev, "llama1-13b__all", "mednli", mc(0.48), model_path="/models/llama1-13b")
    # Not ours: another tool's results.json.
    (root / "lm-eval").mkdir()
    (root / "lm-eval" / "results.json").write_text(json.dumps({"results": {"x": 1}}))
    subsets = root / "subsets"
    subsets.mkdir()
    (subsets / "manifest.json").write_text(json.dumps({"stage": "subsets", "status": "complete", "summary": {
        "records": 20000, "subsets": [{"name": k, "size": v} for k, v in SIZES.items()]}}))
    return root


@pytest.fixture
def run_dir(tmp_path):
    """A tree of one's own, for tests that change it."""
    return make_tree(tmp_path / "run")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """One tree and its report for the tests that only read them (figures take a second)."""
    return make_tree(tmp_path_factory.mktemp("shared") / "run")


@pytest.fixture(scope="module")
def built(tree):
    return report_of(tree)


def report_of(run_dir, **cfg):
    out = cfg.get("out", run_dir / "report")
    manifest = run(ReportConfig(run_dir=str(run_dir), **{**cfg, "out": str(out)}))
    return json.loads((out / "report.json").read_text()), out, manifest


def row(table, label):
    return next(r for r in table["rows"] if r[0] == label)


def md_row(md, label):
    return next(line for line in md.splitlines() if line.startswith(f"| {label} |"))


def test_qa_table_numbers_missing_cells_and_gains(built):
    data, out, _ = built
    qa = data["tables"]["qa"]
    assert qa["columns"] == ["model", "MedQA", "MedMCQA", "PubMedQA", "BioASQ", "MedNLI", "average"]
    base, tuned, gain = (row(qa, "llama2-7b base"), row(qa, "llama2-7b__all"),
                         row(qa, "llama2-7b: relative gain"))
    assert [c["value"] for c in base[1:6]] == [0.30, 0.28, 0.50, 0.60, 0.40]
    assert base[6]["value"] == pytest.approx((0.30 + 0.28 + 0.50 + 0.60 + 0.40) / 5)
    assert tuned[4] is None  # bioasq: shards only
    assert tuned[6]["value"] == pytest.approx((0.36 + 0.30 + 0.62 + 0.52) / 4) and len(tuned[6]["tasks"]) == 4
    assert gain[1]["value"] == pytest.approx((0.36 - 0.30) / 0.30)
    assert gain[4] is None
    # The gain of averages is over the four tasks both models have.
    assert gain[6]["value"] == pytest.approx(((0.36 + 0.30 + 0.62 + 0.52) - (0.30 + 0.28 + 0.50 + 0.40))
                                             / (0.30 + 0.28 + 0.50 + 0.40))
    md = (out / "report.md").read_text()
    assert md_row(md, "llama2-7b base") == \
        "| llama2-7b base | 0.300 [0.210, 0.390] | 0.280 | 0.500 [0.450, 0.550] | 0.600 | 0.400 | 0.416 |"
    assert md_row(md, "llama2-7b__all") == \
        f"| llama2-7b__all | 0.360 | 0.300 | 0.620 | {MISSING} | 0.520 | 0.450 (4/5) |"
    assert md_row(md, "llama2-7b: relative gain") == \
        f"| llama2-7b: relative gain | +20.0% | +7.1% | +24.0% | {MISSING} | +30.0% | +21.6% (4/5) |"
    # llama1-13b: only PubMedQA for both (and MedNLI for the tuned one); nothing shown as zero.
    assert md_row(md, "llama1-13b base") == \
        f"| llama1-13b base | {MISSING} | {MISSING} | 0.450 | {MISSING} | {MISSING} | 0.450 (1/5) |"
    assert md_row(md, "llama1-13b: relative gain").endswith(f"| {MISSING} | +20.0% (1/5) |")
    with open(out / "qa.csv") as f:
        rows = {r[0]: r for r in csv.reader(f)}
    assert rows["llama2-7b__all"][4] == "" and float(rows["llama2-7b__all"][1]) == 0.36
    assert rows["llama1-13b base"][1:6] == ["", "", "0.45", "", ""]


def test_qa_metric_generative_for_tuned_models(tree, tmp_path):
    data, _, _ = report_of(tree, qa_metric="generative_acc", out=tmp_path / "gen")
    qa = data["tables"]["qa"]
    tuned, base = row(qa, "llama2-7b__all"), row(qa, "llama2-7b base")
    assert tuned[1]["value"] == 0.42 and tuned[1]["metric"] == "generative_acc"
    assert base[1]["value"] == 0.30 and base[1]["metric"] == "acc"
    assert row(qa, "llama1-13b__all")[3] is None  # scored without generative_acc: missing, not acc
    assert data["metrics"]["qa_base"] == "acc"


def test_ie_generation_and_headline(built):
    data, out, manifest = built
    ie = data["tables"]["ie"]
    assert ie["columns"][1:4] == ["Medication status P", "Medication status R", "Medication status F1"]
    assert row(ie, "llama2-7b base")[7]["value"] == pytest.approx(0.45)
    assert row(ie, "llama2-7b__all")[7]["value"] == pytest.approx(0.48)
    assert row(ie, "llama2-7b: relative gain")[7]["value"] == pytest.approx(0.03 / 0.45)
    assert "llama1-13b base" not in [r[0] for r in ie["rows"]]  # no IE results at all
    md = (out / "report.md").read_text()
    assert "| llama2-7b__all | 0.600 | 0.350 | 0.440 [0.400, 0.480] | 0.600 | 0.450 | 0.520 | 0.480 |" in md

    gen = data["tables"]["generation"]
    assert gen["columns"] == ["task", "metric", "llama2-7b base", "llama2-7b__all", "llama2-7b: gain"]
    judge = next(r for r in gen["rows"] if r[0] == "Conv2note" and r[1] == "judge: coherence")
    assert (judge[2]["value"], judge[3]["value"], judge[4]["value"]) == (4.0, 8.0, 1.0)
    avg = next(r for r in gen["rows"] if r[0] == "average" and r[1].startswith("judge: mean"))
    assert (avg[2]["value"], avg[3]["value"], avg[4]["value"]) == (3.5, 7.0, 1.0)
    assert "| Conv2note | judge: mean | 4.000 [3.500, 4.500] | 8.000 [7.500, 8.500] | +100.0% |" in md

    head = {(r[0], r[1]): r for r in data["tables"]["headline"]["rows"]}
    qa = head[("llama2-7b", "QA / NLI average accuracy")]  # over the four tasks both have
    assert (qa[2]["value"], qa[3]["value"]) == (pytest.approx(0.37), pytest.approx(0.45))
    assert qa[4]["value"] == pytest.approx(0.08 / 0.37) and qa[5] == "+17.3%"
    assert "| llama2-7b | QA / NLI average accuracy | 0.370 (4/5) | 0.450 (4/5) | +21.6% (4/5) | +17.3% |" in md
    assert head[("llama2-7b", "IE average F1")][5] == "+5.7%"
    assert head[("llama2-7b", "generation average judge score")][4]["value"] == pytest.approx(1.0)
    assert head[("llama2-7b", "generation average judge score")][5] == "+96%"
    assert ("llama1-13b", "IE average F1") not in head
    assert manifest["summary"]["gains"]["llama2-7b: IE average F1"] == pytest.approx(0.03 / 0.45)


def cells(node):
    """Every number cell of report.json."""
    if isinstance(node, dict):
        if node.get("type") in ("score", "mean", "gain"):
            yield node
        for v in node.values():
            yield from cells(v)
    elif isinstance(node, list):
        for v in node:
            yield from cells(v)


def test_every_number_traceable_to_its_results_json(tree, built):
    run_dir = tree
    data, _, _ = built
    found = list(cells(data))
    assert len(found) > 100
    sources = {r["source"] for r in data["inputs"]["results"]}

    def check(score):
        results = json.loads((run_dir / score["source"]).read_text())
        assert results["metrics"][score["metric"]]["value"] == score["value"]
        assert results["task"] == score["task"]

    for cell in found:
        if cell["type"] == "score":
            check(cell)
        elif cell["type"] == "mean":
            for part in cell["of"]:
                check(part)
            assert cell["value"] == pytest.approx(sum(p["value"] for p in cell["of"]) / len(cell["of"]))
        else:
            assert set(cell["sources"]) <= sources and len(cell["sources"]) == 2 * len(cell["tasks"])
            assert cell["value"] == pytest.approx((cell["tuned"] - cell["base"]) / cell["base"])
    # Shards without results.json and a foreign results.json are not inputs; the duplicate base is noted.
    assert not any("shard" in s for s in sources)
    assert data["inputs"]["skipped"] == [{"source": "lm-eval/results.json",
                                          "why": "not an evaluate results.json (no 'metrics' mapping)"}]
    assert any("sweep/eval-qa/base/medqa/results.json duplicates evaluate/base/medqa/results.json" in n
               and "the same metrics" in n for n in data["notes"])
    with open(run_dir / "report" / "scores.csv") as f:
        scores = list(csv.DictReader(f))
    pub = next(r for r in scores if r["model"] == "base" and r["task"] == "pubmedqa" and r["metric"] == "acc")
    assert (pub["value"], pub["ci95_low"], pub["ci95_high"], pub["source"]) == \
        ("0.5", "0.45", "0.55", "evaluate/base/pubmedqa/results.json")


def assert_image(path, size_inches):
    image = imread(path)
    width, height = size_inches
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert image[..., :3].std() > 0.05


def test_figures_render_and_index_shows_them(built):
    data, out, _ = built
    assert set(data["figures"]) == {"figure2_llama2-7b", "figure3_llama2-7b"}
    fig2 = data["figures"]["figure2_llama2-7b"]
    assert [p["task"] for p in fig2["panels"]] == ["medqa", "pubmedqa", "medication_status", "conv2note"]
    medqa = fig2["panels"][0]
    assert [p["subset"] for p in medqa["points"]] == ["qa", "ie", "generation", "other", "qa+ie", "qa+generation",
                                                      "all-but-other", "matched-qa"]
    assert (medqa["best_single"], medqa["best_pair"]) == ("qa", "qa+generation")
    assert medqa["base"]["value"] == 0.30 and medqa["tuned"]["value"] == 0.36
    conv = fig2["panels"][3]
    assert conv["metric"] == "judge_mean"
    assert (conv["best_single"], conv["best_pair"]) == ("generation", "qa+generation")
    assert_image(out / "figure2_llama2-7b.png", figure_size("figure2", 4))

    fig3 = data["figures"]["figure3_llama2-7b"]
    assert [p["kind"] for p in fig3["panels"]] == ["multiple_choice", "extraction", "generation"]
    pub = next(line for line in fig3["panels"][0]["lines"] if line["task"] == "pubmedqa")
    assert [(p["size"], p["value"]) for p in pub["points"]] == [(1000, 0.55), (5000, 0.59), (20000, 0.62)]
    assert_image(out / "figure3_llama2-7b.png", figure_size("figure3", 3))
    page = (out / "index.html").read_text()
    for fig in data["figures"].values():
        png, pdf = fig["files"]
        assert (out / pdf).read_bytes().startswith(b"%PDF") and (out / pdf).stat().st_size > 1000
        assert f'src="{png}"' in page and f'href="{pdf}"' in page
    assert 'href="report.json"' in page and "<table>" in page and MISSING in page


def test_rerun_is_idempotent_and_follows_new_inputs(run_dir):
    _, out, first = report_of(run_dir)
    files = sorted(p.name for p in out.iterdir())
    before = {name: (out / name).read_bytes() for name in files}
    _, _, again = report_of(run_dir)
    assert again == first  # nothing to do
    assert {name: (out / name).read_bytes() for name in files} == before

    run(ReportConfig(run_dir=str(run_dir)), force=True)  # redone: the same bytes, figures included
    assert {n: (out / n).read_bytes() for n in files if n not in ("manifest.json", "config.yaml")} == \
        {n: b for n, b in before.items() if n not in ("manifest.json", "config.yaml")}

    # New results (bioasq finished) are picked up without --force; figures of vanished models go.
    write_result(run_dir / "evaluate", "llama2-7b__all", "bioasq", mc(0.66))
    for folder in (run_dir / "sweep").glob("eval-size-*"):
        for path in folder.rglob("results.json"):
            path.unlink()
    data, _, third = report_of(run_dir)
    assert third["attempt"] == first["attempt"] + 2  # after the forced one
    assert row(data["tables"]["qa"], "llama2-7b__all")[4]["value"] == 0.66
    assert set(data["figures"]) == {"figure2_llama2-7b"}
    assert not (out / "figure3_llama2-7b.png").exists() and not (out / "figure3_llama2-7b.pdf").exists()

    with pytest.raises(StageConflict):
        run(ReportConfig(run_dir=str(run_dir), qa_metric="acc_norm"))


def test_cli_and_an_empty_run(tree, tmp_path, capsys):
    assert main(["report", str(tree), "--out", str(tmp_path / "r"), "tuned_subset=all"]) == 0
    out = capsys.readouterr().out
    assert "llama2-7b: QA / NLI average accuracy" in out and "+21.6%" in out
    assert (tmp_path / "r" / "index.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["report", str(empty)]) == 2  # an empty report would read as models that scored nothing
    assert f"{empty}: no results.json" in capsys.readouterr().err and not (empty / "report").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_a_limited_run_is_marked_in_every_table_it_reaches(tmp_path):
    """evaluate limit=N scores the first N examples only: its numbers, and the averages and
    gains they enter, carry a mark and a note naming the file; scores.csv has the limit."""
    ev = tmp_path / "evaluate"
    write_result(ev, "base", "medqa", mc(0.30))
    write_result(ev, "base", "medmcqa", mc(0.28))
    write_result(ev, "llama2-7b__all", "medqa", mc(0.36))
    limited = write_result(ev, "llama2-7b__all", "medmcqa", mc(0.31, n=300))
    limited.write_text(json.dumps({**json.loads(limited.read_text()), "limit": 300, "n": 300}))
    data, out, _ = report_of(tmp_path)
    md = (out / "report.md").read_text()
    assert md_row(md, "llama2-7b base").startswith("| llama2-7b base | 0.300 | 0.280 | ")
    assert md_row(md, "llama2-7b__all").startswith("| llama2-7b__all | 0.360 | 0.310† | ")
    assert "0.335† (2/5)" in md_row(md, "llama2-7b__all")  # the average includes it
    assert "+10.7%†" in md_row(md, "llama2-7b: relative gain")
    assert any("evaluate/llama2-7b__all/medmcqa/results.json (limit=300)" in n for n in data["notes"])
    assert "0.310†" in (out / "index.html").read_text()
    with open(out / "scores.csv") as f:
        limits = {(r["model"], r["task"]): r["limit"] for r in csv.DictReader(f)}
    assert limits[("llama2-7b__all", "medmcqa")] == "300" and limits[("base", "medqa")] == ""
