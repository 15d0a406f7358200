"""The paper's tables and figures from the evaluation results of a run directory.

    bioinstruct report runs/v1                                   # -> runs/v1/report/index.html
    bioinstruct report runs/v1 --out /tmp/v1-report qa_metric=generative_acc
    bioinstruct report runs/sweep tuned_subset=all generation_metric=similarity

Input: every RUN_DIR/**/results.json written by bioinstruct evaluate ({task, kind, model,
model_path, adapter, n, metrics: {name: {value, n, ci95}}}); folders holding only shards
(no results.json yet) are ignored. A model folder named "base" or "base-<family>" is a base
model; "<family>__<subset>" (llama2-7b__all, llama2-7b__qa+ie, llama2-7b__size-5000) is
<family> instruction-tuned on a training subset. A plain "base" belongs to the families
tuned from the same model_path. Subset sizes come from RUN_DIR/subsets/manifest.json
(subsets_manifest=FILE) when there is one, else from the size-N names.
Output (--out DIR, default RUN_DIR/report/), each file written atomically; manifest.json
and config.yaml:
  index.html        the tables and figures on one page
  report.md         the same tables in Markdown, with the notes
  report.json       every number, each with the results.json (relative to RUN_DIR) it came
                    from; averages and gains list the numbers they were computed from
  headline.csv      average QA/NLI accuracy, IE F1 and judge score, base vs tuned, the
                    relative gain, and the paper's (+17.3%, +5.7%, +96%)
  qa.csv ie.csv generation.csv models.csv   the tables, values only (missing: empty)
  contamination.csv  when evaluate was given a decontaminate decisions file: each model and
                    task's score over all items beside its score over the untouched ones
  scores.csv        every score in long form with n, 95% bootstrap interval and source
  figure2_<family>.png/.pdf   per evaluation task, every training subset's score (single
                    categories, pairs, others), the base and all-tasks models as lines, the
                    best single and best pair named above the panel
  figure3_<family>.png/.pdf   score against the number of training instructions (size-N
                    subsets and the all-tasks model), one line per task, base as dotted lines

Scores: QA/NLI tasks use qa_metric (acc, acc_norm or generative_acc) for tuned models and
base_qa_metric for base models (default: qa_metric, or acc when qa_metric is generative_acc:
base models are scored by log-likelihood only); IE tasks F1; generation tasks, in figures
and the models table, generation_metric (auto: judge_mean when the judge scored the task,
else similarity). The "tuned" model of the tables is <family>__<tuned_subset>. A relative
gain is (tuned - base) / base; an average is over the tasks a model has (the cell says
"k/N" when some are missing) and the gain of averages over the tasks both models have.
Missing numbers are shown as "–", never as zero. The report is rewritten when its inputs
change; with the same inputs and config there is nothing to do.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import html
import io
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal

from .config import add_config_arguments, config_from_args
from .errors import ConfigError, DataError
from .io import atomic_open, atomic_write_json, atomic_write_text, read_json
from .records import CATEGORIES
from .rundir import finished, read_manifest, run_stage
from .table import format_table
from .stages.stage import Stage

QA_TASKS = ("medqa", "medmcqa", "pubmedqa", "bioasq", "mednli")
IE_TASKS = ("medication_status", "coreference")
GEN_TASKS = ("conv2note", "icliniq")
TASK_LABELS = {"medqa": "MedQA", "medmcqa": "MedMCQA", "pubmedqa": "PubMedQA", "bioasq": "BioASQ",
               "mednli": "MedNLI", "medication_status": "Medication status", "coreference": "Coreference",
               "conv2note": "Conv2note", "icliniq": "iCliniq"}
KINDS = {"multiple_choice": QA_TASKS, "extraction": IE_TASKS, "generation": GEN_TASKS}
KIND_LABELS = {"multiple_choice": "QA / NLI", "extraction": "IE", "generation": "Generation"}
JUDGE_DIMENSIONS = ("coherence", "completeness", "naturalness", "factuality")
GEN_METRICS = (*(f"judge_{d}" for d in JUDGE_DIMENSIONS), "judge_mean", "similarity", "rougeL")
METRIC_LABELS = {**{f"judge_{d}": f"judge: {d}" for d in JUDGE_DIMENSIONS}, "judge_mean": "judge: mean",
                 "similarity": "similarity", "rougeL": "ROUGE-L", "precision": "P", "recall": "R", "f1": "F1"}
# The paper's headline relative gains of BioInstruct-tuned over base models (abstract).
PAPER_GAINS = {"qa": 0.173, "ie": 0.057, "judge": 0.96}
MISSING = "–"

DPI = 120
PANEL = (5.0, 4.2)  # inches per Figure 2 panel
FIG3_PANEL = (5.5, 4.5)
LEGEND_HEIGHT = 0.6


def figure_size(figure: Literal["figure2", "figure3"], panels: int) -> tuple[float, float]:
    """Width and height in inches of a figure with ``panels`` panels."""
    if figure == "figure2":
        cols = min(3, panels)
        rows = math.ceil(panels / cols)
        return PANEL[0] * cols, PANEL[1] * rows + LEGEND_HEIGHT
    return FIG3_PANEL[0] * panels, FIG3_PANEL[1] + LEGEND_HEIGHT


@dataclasses.dataclass
class ReportConfig:
    run_dir: str = "runs/default"  # searched for **/results.json
    out: str | None = None  # default: RUN_DIR/report
    qa_metric: Literal["acc", "acc_norm", "generative_acc"] = "acc"  # QA/NLI score of tuned models
    base_qa_metric: Literal["acc", "acc_norm"] | None = None  # of base models; None: see the docstring
    generation_metric: Literal["auto", "judge_mean", "similarity", "rougeL"] = "auto"  # figures, models table
    tuned_subset: str = "all"  # the tuned model of the tables: <family>__<tuned_subset>
    subsets_manifest: str | None = None  # default: RUN_DIR/subsets/manifest.json, when there

    def base_metric(self) -> str:
        if self.base_qa_metric:
            return self.base_qa_metric
        return "acc" if self.qa_metric == "generative_acc" else self.qa_metric

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "report"


# ---- reading results ------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    source: str  # path relative to the run directory
    sha256: str
    task: str
    kind: str
    label: str  # the model folder name
    family: str
    variant: str  # "base", or the training subset ("" for a tuned model named without one)
    n: int | None
    model_path: str | None
    metrics: dict[str, Any]
    untouched: dict[str, Any] | None = None  # evaluate's scores over items no instruction touched
    limit: int | None = None  # evaluate's limit=N: the first N examples of the task only


def natural_key(text: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def parse_label(label: str) -> tuple[str | None, str]:
    """(family, variant) of a model folder name; family None for a plain "base"."""
    if "__" in label:
        family, subset = label.split("__", 1)
        return family, subset
    if label.startswith("base"):
        return label[4:].lstrip("-_") or None, "base"
    return label, ""


def find_results(run_dir: Path, exclude: Path) -> list[Path]:
    exclude = exclude.resolve()
    found = []
    for path in sorted(run_dir.rglob("results.json")):
        if path.is_file() and exclude not in path.resolve().parents:
            found.append(path)
    return found


def load_results(run_dir: Path, exclude: Path) -> tuple[list[Result], list[dict]]:
    """Every evaluate results.json under ``run_dir`` (all families resolved) and the files
    skipped, with why."""
    raw, skipped = [], []
    for path in find_results(run_dir, exclude):
        data = read_json(path)
        source = path.relative_to(run_dir).as_posix()
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            skipped.append({"source": source, "why": "not an evaluate results.json (no 'metrics' mapping)"})
            continue
        task = str(data.get("task") or path.parent.name)
        kind = data.get("kind") or next((k for k, tasks in KINDS.items() if task in tasks), None)
        if kind not in KINDS:
            skipped.append({"source": source, "why": f"unknown task kind {kind!r}"})
            continue
        label = str(data.get("model") or path.parent.parent.name)
        raw.append((path, source, task, kind, label, data))

    def norm(p: Any) -> str | None:
        return str(p).rstrip("/") if p else None

    # A plain "base" belongs to every family tuned from the same model.
    tuned_from: dict[str | None, set[str]] = {}
    for _, _, _, _, label, data in raw:
        family, variant = parse_label(label)
        if variant != "base":
            tuned_from.setdefault(norm(data.get("model_path")), set()).add(family)
    results = []
    for path, source, task, kind, label, data in raw:
        family, variant = parse_label(label)
        families = [family] if family else sorted(
            tuned_from.get(norm(data.get("model_path"))) or {Path(norm(data.get("model_path")) or "base").name})
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        for fam in families:
            results.append(Result(source, sha, task, kind, label, fam, variant, data.get("n"),
                                  data.get("model_path"), data["metrics"], data.get("untouched"),
                                  data.get("limit")))
    return results, skipped


def index_results(results: list[Result]) -> tuple[dict[tuple[str, str, str], Result], list[str]]:
    """(family, variant, task) -> the result; duplicates keep the first by path (noted)."""
    index: dict[tuple[str, str, str], Result] = {}
    notes = []
    for r in sorted(results, key=lambda r: r.source):
        key = (r.family, r.variant, r.task)
        if key in index:
            first = index[key]
            same = "the same metrics" if first.metrics == r.metrics else "DIFFERENT metrics"
            notes.append(f"{r.source} duplicates {first.source} ({r.family} {r.variant or r.label}, {r.task}; "
                         f"{same}): the first is used")
            continue
        index[key] = r
    return index, notes


def subset_sizes(cfg: ReportConfig) -> tuple[dict[str, int], str | None]:
    """Training instructions per subset name, and the manifest they came from (if any)."""
    path = Path(cfg.subsets_manifest) if cfg.subsets_manifest else Path(cfg.run_dir) / "subsets" / "manifest.json"
    if not path.exists():
        if cfg.subsets_manifest:
            raise ConfigError(f"subsets_manifest: no such file: {path}")
        return {}, None
    manifest = read_json(path)
    subsets = ((manifest or {}).get("summary") or {}).get("subsets") or []
    try:
        return {s["name"]: int(s["size"]) for s in subsets}, str(path)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: summary.subsets must list {{name, size}} entries") from None


def subset_group(name: str, tuned_subset: str) -> str:
    if name == tuned_subset:
        return "tuned"
    if name in CATEGORIES:
        return "single"
    parts = name.split("+")
    if len(parts) == 2 and all(p in CATEGORIES for p in parts):
        return "pair"
    if re.fullmatch(r"size-\d+", name):
        return "size"
    return "other"


GROUP_ORDER = {"base": 0, "tuned": 1, "single": 2, "pair": 3, "other": 4, "size": 5}


def variant_key(variant: str, tuned_subset: str) -> tuple:
    if variant == "base":
        return (0,)
    if variant == "":
        return (6,)
    group = subset_group(variant, tuned_subset)
    if group == "single":
        return (2, CATEGORIES.index(variant))
    if group == "pair":
        a, b = variant.split("+")
        return (3, CATEGORIES.index(a), CATEGORIES.index(b))
    return (GROUP_ORDER[group], natural_key(variant))


# ---- cells --------------------------------------------------------------------------------
# A cell is None (missing), a str (a label), or a dict with a "value" and where it came from:
#   score: one metric of one results.json   {type, value, ci95, n, metric, task, model, source}
#   mean:  the mean of score cells          {type, value, tasks, expected, of: [score cells]}
#   gain:  (tuned - base) / base            {type, value, tuned, base, tasks, expected, sources}


def score_cell(r: Result | None, metric: str) -> dict | None:
    if r is None:
        return None
    m = r.metrics.get(metric)
    if not isinstance(m, dict) or not isinstance(m.get("value"), (int, float)) or isinstance(m["value"], bool) \
            or not math.isfinite(m["value"]):
        return None
    ci = m.get("ci95")
    ci = [float(ci[0]), float(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None
    return {"type": "score", "value": float(m["value"]), "ci95": ci, "n": m.get("n", r.n), "metric": metric,
            "task": r.task, "model": r.label, "source": r.source, "limited": r.limit is not None}


def mean_cell(cells: list[dict | None], expected: int | None = None) -> dict | None:
    present = [c for c in cells if c is not None]
    if not present:
        return None
    return {"type": "mean", "value": sum(c["value"] for c in present) / len(present),
            "tasks": [c["task"] for c in present], "expected": expected or len(cells),
            "limited": any(c.get("limited") for c in present),
            "of": [{k: c[k] for k in ("task", "metric", "value", "source")} for c in present]}


def gain_cell(tuned: dict | None, base: dict | None) -> dict | None:
    if tuned is None or base is None or base["value"] == 0:
        return None
    return {"type": "gain", "value": (tuned["value"] - base["value"]) / base["value"],
            "tuned": tuned["value"], "base": base["value"], "tasks": [tuned.get("task")], "expected": 1,
            "limited": bool(tuned.get("limited") or base.get("limited")),
            "sources": [tuned["source"], base["source"]]}


def gain_of_means(tuned: list[dict | None], base: list[dict | None]) -> dict | None:
    """Relative gain of the mean over the tasks both models have."""
    pairs = [(t, b) for t, b in zip(tuned, base) if t is not None and b is not None]
    if not pairs:
        return None
    t_mean = sum(t["value"] for t, _ in pairs) / len(pairs)
    b_mean = sum(b["value"] for _, b in pairs) / len(pairs)
    if b_mean == 0:
        return None
    return {"type": "gain", "value": (t_mean - b_mean) / b_mean, "tuned": t_mean, "base": b_mean,
            "tasks": [t["task"] for t, _ in pairs], "expected": len(tuned),
            "limited": any(c.get("limited") for pair in pairs for c in pair),
            "sources": [c["source"] for pair in pairs for c in pair]}


LIMITED = "†"  # marks a number from (or averaged over) a run with evaluate's limit=N


def fmt(value: float) -> str:
    return f"{value:.3f}"


def cell_text(cell: Any, *, ci: bool = True) -> str:
    if cell is None:
        return MISSING
    if isinstance(cell, str):
        return cell
    partial = f" ({len(cell['tasks'])}/{cell['expected']})" if cell["type"] != "score" and \
        len(cell["tasks"]) < cell["expected"] else ""
    mark = LIMITED if cell.get("limited") else ""
    if cell["type"] == "gain":
        return f"{100 * cell['value']:+.1f}%{mark}{partial}"
    text = fmt(cell["value"]) + mark
    if ci and cell["type"] == "score" and cell["ci95"]:
        text += f" [{fmt(cell['ci95'][0])}, {fmt(cell['ci95'][1])}]"
    return text + partial


def cell_csv(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, str):
        return cell
    return repr(cell["value"])


# ---- tables -------------------------------------------------------------------------------

class Report:
    """Every table and figure's numbers, from the indexed results."""

    def __init__(self, cfg: ReportConfig, results: list[Result], sizes: dict[str, int]):
        self.cfg = cfg
        self.index, self.notes = index_results(results)
        self.sizes = sizes
        self.tasks = {kind: [t for t in known] + sorted({r.task for r in results if r.kind == kind} - set(known),
                                                         key=natural_key)
                      for kind, known in KINDS.items()}
        self.kind_of = {r.task: r.kind for r in results}
        for kind, known in KINDS.items():
            self.kind_of.update({t: kind for t in known})
        self.families = sorted({f for f, _, _ in self.index}, key=natural_key)
        self.gen_metric = {t: self._generation_metric(t) for t in self.tasks["generation"]}

    def _generation_metric(self, task: str) -> str:
        if self.cfg.generation_metric != "auto":
            return self.cfg.generation_metric
        have = [r for (_, _, t), r in self.index.items() if t == task]
        for metric in ("judge_mean", "similarity", "rougeL"):
            if any(score_cell(r, metric) for r in have):
                return metric
        return "judge_mean"

    def primary_metric(self, task: str, variant: str) -> str:
        kind = self.kind_of[task]
        if kind == "multiple_choice":
            return self.cfg.base_metric() if variant == "base" else self.cfg.qa_metric
        if kind == "extraction":
            return "f1"
        return self.gen_metric.get(task, "judge_mean")

    def score(self, family: str, variant: str, task: str, metric: str | None = None) -> dict | None:
        return score_cell(self.index.get((family, variant, task)),
                          metric or self.primary_metric(task, variant))

    def variants(self, family: str) -> list[str]:
        found = {v for f, v, _ in self.index if f == family}
        return sorted(found, key=lambda v: variant_key(v, self.cfg.tuned_subset))

    def model_name(self, family: str, variant: str) -> str:
        if variant == "base":
            return f"{family} base"
        return f"{family}__{variant}" if variant else family

    def main_families(self, kind: str) -> list[str]:
        """Families with a base or tuned result for a task of ``kind``."""
        return [f for f in self.families
                if any((f, v, t) in self.index for v in ("base", self.cfg.tuned_subset) for t in self.tasks[kind])]

    # Rows are models: QA/NLI and IE.
    def qa_table(self) -> dict:
        tasks = self.tasks["multiple_choice"]
        rows = []
        for family in self.main_families("multiple_choice"):
            per = {}
            for variant in ("base", self.cfg.tuned_subset):
                cells = [self.score(family, variant, t) for t in tasks]
                per[variant] = cells
                rows.append([self.model_name(family, variant), *cells, mean_cell(cells)])
            tuned, base = per[self.cfg.tuned_subset], per["base"]
            rows.append([f"{family}: relative gain", *(gain_cell(t, b) for t, b in zip(tuned, base)),
                         gain_of_means(tuned, base)])
        base = self.cfg.base_metric()
        metric = (f"Accuracy: {self.cfg.qa_metric} for tuned models, {base} for base models."
                  if base != self.cfg.qa_metric else f"Accuracy: {base} for every model.")
        return {"name": "qa", "title": "QA / NLI accuracy",
                "columns": ["model", *(TASK_LABELS.get(t, t) for t in tasks), "average"], "rows": rows,
                "notes": [metric,
                          "Cells: value [95% bootstrap interval over examples]; averages over the tasks the model "
                          "has (k/N when some are missing); the gain of averages over the tasks both have."]}

    def ie_table(self) -> dict:
        tasks = self.tasks["extraction"]
        metrics = ("precision", "recall", "f1")
        rows = []
        for family in self.main_families("extraction"):
            per = {}
            for variant in ("base", self.cfg.tuned_subset):
                cells = {(t, m): self.score(family, variant, t, m) for t in tasks for m in metrics}
                per[variant] = cells
                rows.append([self.model_name(family, variant), *cells.values(),
                             mean_cell([cells[(t, "f1")] for t in tasks])])
            tuned, base = per[self.cfg.tuned_subset], per["base"]
            rows.append([f"{family}: relative gain", *(gain_cell(tuned[k], base[k]) for k in tuned),
                         gain_of_means([tuned[(t, "f1")] for t in tasks], [base[(t, "f1")] for t in tasks])])
        return {"name": "ie", "title": "Information extraction: precision, recall, F1",
                "columns": ["model", *(f"{TASK_LABELS.get(t, t)} {METRIC_LABELS[m]}" for t in tasks for m in metrics),
                            "average F1"], "rows": rows,
                "notes": ["Micro precision / recall / F1 of normalised items; the interval is F1's."]}

    # Rows are (task, metric), columns base / tuned / gain per family: generation.
    def generation_table(self) -> dict:
        tasks = self.tasks["generation"]
        families = self.main_families("generation")
        columns = ["task", "metric"]
        for family in families:
            columns += [self.model_name(family, "base"), self.model_name(family, self.cfg.tuned_subset),
                        f"{family}: gain"]
        rows = []
        for task in tasks:
            for metric in GEN_METRICS:
                row = [TASK_LABELS.get(task, task), METRIC_LABELS[metric]]
                for family in families:
                    b, t = (self.score(family, "base", task, metric),
                            self.score(family, self.cfg.tuned_subset, task, metric))
                    row += [b, t, gain_cell(t, b)]
                rows.append(row)
        for metric, label in (("judge_mean", "judge: mean (the paper's GPT-4 score)"), ("similarity", "similarity")):
            row = ["average", label]
            for family in families:
                b = [self.score(family, "base", t, metric) for t in tasks]
                t = [self.score(family, self.cfg.tuned_subset, t, metric) for t in tasks]
                row += [mean_cell(b), mean_cell(t), gain_of_means(t, b)]
            rows.append(row)
        notes = ["Judge scores are the LLM judge's 1-10 rubric scores (evaluate judge=true); similarity is the "
                 "cosine similarity of sentence embeddings of output and reference."]
        if not any(self.score(f, v, t, "judge_mean") for f in families for v in ("base", self.cfg.tuned_subset)
                   for t in tasks):
            notes.append("No judge scores: the generation tasks were evaluated without judge=true.")
        return {"name": "generation", "title": "Generation: judge scores and similarity", "columns": columns,
                "label_columns": 2,
                "rows": rows, "notes": notes}

    def headline_table(self) -> dict:
        """Average score of base and tuned over the tasks both have, and the relative gain."""
        rows = []
        measures = (("multiple_choice", None, "QA / NLI average accuracy", f"{100 * PAPER_GAINS['qa']:+.1f}%"),
                    ("extraction", "f1", "IE average F1", f"{100 * PAPER_GAINS['ie']:+.1f}%"),
                    ("generation", "judge_mean", "generation average judge score",
                     f"{100 * PAPER_GAINS['judge']:+.0f}%"),
                    ("generation", "similarity", "generation average similarity", MISSING))
        for family in self.families:
            for kind, metric, measure, paper in measures:
                if family not in self.main_families(kind):
                    continue
                tasks = self.tasks[kind]
                base = [self.score(family, "base", t, metric) for t in tasks]
                tuned = [self.score(family, self.cfg.tuned_subset, t, metric) for t in tasks]
                both = [i for i, (b, t) in enumerate(zip(base, tuned)) if b and t]
                rows.append([family, measure, mean_cell([base[i] for i in both], len(tasks)),
                             mean_cell([tuned[i] for i in both], len(tasks)), gain_of_means(tuned, base), paper])
        return {"name": "headline", "title": "Headline: tuned vs base", "label_columns": 2,
                "columns": ["family", "measure", "base", f"tuned ({self.cfg.tuned_subset})", "relative gain",
                            "paper's gain"], "rows": rows,
                "notes": ["Averages over the tasks both models have (k/N when some are missing), so that the "
                          "gain is that of the two averages shown.",
                          "The paper's gains are those of its abstract (BioInstruct-tuned vs base LLaMA)."]}

    def models_table(self) -> dict:
        tasks = [t for kind in KINDS for t in self.tasks[kind]
                 if any(tt == t for _, _, tt in self.index)]
        rows = []
        for family in self.families:
            for variant in self.variants(family):
                size = self.sizes.get(variant) if variant not in ("", "base") else None
                if size is None and re.fullmatch(r"size-\d+", variant):
                    size = int(variant.split("-")[1])
                rows.append([self.model_name(family, variant), f"{size:,}" if size else MISSING,
                             *(self.score(family, variant, t) for t in tasks)])
        metrics = [f"{TASK_LABELS.get(t, t)}: {self._metric_note(t)}" for t in tasks]
        return {"name": "models", "title": "Every model (the numbers of Figures 2 and 3)",
                "columns": ["model", "training instructions", *(TASK_LABELS.get(t, t) for t in tasks)], "rows": rows,
                "notes": ["Scores: " + "; ".join(metrics) + "."]}

    def contamination_table(self) -> dict | None:
        """Each model and task scored with a decontaminate decisions file: the primary metric
        over all items and over the items no training instruction touched; None without any."""
        rows = []
        for (family, variant, task), r in sorted(self.index.items(),
                                                 key=lambda kv: (natural_key(kv[0][0]), kv[0][1], kv[0][2])):
            if not isinstance(r.untouched, dict) or not isinstance(r.untouched.get("metrics"), dict):
                continue
            metric = self.primary_metric(task, variant)
            everything = score_cell(r, metric)
            clean = score_cell(dataclasses.replace(r, metrics=r.untouched["metrics"], n=r.untouched.get("n")), metric)
            diff = f"{clean['value'] - everything['value']:+.3f}" if everything and clean else None
            rows.append([self.model_name(family, variant), TASK_LABELS.get(task, task), metric, everything, clean,
                         f"{r.untouched.get('excluded', 0):,}", diff])
        if not rows:
            return None
        return {"name": "contamination", "title": "Scores on the items no training instruction touched",
                "columns": ["model", "task", "metric", "all items", "untouched items", "items left out",
                            "untouched - all"], "rows": rows, "label_columns": 3,
                "notes": ["Untouched: the evaluation items that no instruction in the decontaminate decisions file "
                          "(bioinstruct evaluate decontamination=...) overlapped, whatever its decision; a gap "
                          "between the two columns is what contamination may have added."]}

    def _metric_note(self, task: str) -> str:
        tuned, base = self.primary_metric(task, "x"), self.primary_metric(task, "base")
        return tuned if tuned == base else f"{tuned} (base: {base})"

    # ---- figure data ----------------------------------------------------------------------

    def figure2_data(self, family: str) -> list[dict]:
        """Per task with at least one subset model: points, base, all-tasks, best single/pair."""
        panels = []
        subsets = [v for v in self.variants(family) if v not in ("", "base")
                   and subset_group(v, self.cfg.tuned_subset) in ("single", "pair", "other")]
        for kind in KINDS:
            for task in self.tasks[kind]:
                points = []
                for v in subsets:
                    cell = self.score(family, v, task)
                    if cell:
                        points.append({"subset": v, "group": subset_group(v, self.cfg.tuned_subset), **cell})
                if not points:
                    continue
                best = {}
                for group in ("single", "pair"):
                    members = [p for p in points if p["group"] == group]
                    best[group] = max(members, key=lambda p: p["value"])["subset"] if members else None
                panels.append({"task": task, "kind": kind, "metric": self.primary_metric(task, "x"),
                               "points": points, "base": self.score(family, "base", task),
                               "tuned": self.score(family, self.cfg.tuned_subset, task),
                               "best_single": best["single"], "best_pair": best["pair"]})
        return panels

    def figure3_data(self, family: str) -> list[dict]:
        """Per task kind with a size-N model: one line per task over training-set size."""
        sized = [v for v in self.variants(family) if subset_group(v, self.cfg.tuned_subset) == "size"]
        if self.cfg.tuned_subset in self.sizes:
            sized.append(self.cfg.tuned_subset)
        panels = []
        for kind in KINDS:
            lines = []
            for task in self.tasks[kind]:
                points = []
                for v in sized:
                    size = self.sizes.get(v) or (int(v.split("-")[1]) if v.startswith("size-") else None)
                    cell = self.score(family, v, task)
                    if cell and size:
                        points.append({"subset": v, "size": size, **cell})
                if points and any(p["subset"] != self.cfg.tuned_subset for p in points):
                    lines.append({"task": task, "metric": self.primary_metric(task, "x"),
                                  "points": sorted(points, key=lambda p: p["size"]),
                                  "base": self.score(family, "base", task)})
            if lines:
                panels.append({"kind": kind, "lines": lines})
        return panels


# ---- figures ------------------------------------------------------------------------------

GROUP_STYLE = {"single": ("C0", "o", "single category"), "pair": ("C1", "s", "category pair"),
               "other": ("C2", "^", "other subset")}


def _figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def save_figure(fig, stem: Path) -> list[str]:
    """PNG and PDF beside each other; no dates in the PDF, so a re-run writes the same bytes."""
    with atomic_open(stem.with_suffix(".png"), "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    with atomic_open(stem.with_suffix(".pdf"), "wb") as f:
        fig.savefig(f, format="pdf", metadata={"CreationDate": None, "ModDate": None})
    return [stem.with_suffix(".png").name, stem.with_suffix(".pdf").name]


def _yerr(points: list[dict]) -> list[list[float]] | None:
    if not any(p.get("ci95") for p in points):
        return None
    return [[p["value"] - p["ci95"][0] if p.get("ci95") else 0.0 for p in points],
            [p["ci95"][1] - p["value"] if p.get("ci95") else 0.0 for p in points]]


def plot_figure2(family: str, panels: list[dict], tuned_subset: str, stem: Path) -> list[str]:
    from matplotlib.lines import Line2D

    fig = _figure(figure_size("figure2", len(panels)))
    cols = min(3, len(panels))
    axes = fig.subplots(math.ceil(len(panels) / cols), cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        x, names = 0.0, []
        for group in ("single", "pair", "other"):
            points = [p for p in panel["points"] if p["group"] == group]
            if not points:
                continue
            xs = [x + i for i in range(len(points))]
            color, marker, _ = GROUP_STYLE[group]
            ax.errorbar(xs, [p["value"] for p in points], yerr=_yerr(points), fmt=marker, color=color,
                        ecolor=color, elinewidth=0.8, capsize=2, markersize=6, alpha=0.9)
            names += [(xx, p["subset"]) for xx, p in zip(xs, points)]
            x = xs[-1] + 1.6  # a gap between groups
        for cell, style in ((panel["base"], {"color": "0.35", "linestyle": "--"}),
                            (panel["tuned"], {"color": "C3", "linestyle": "-"})):
            if cell:
                ax.axhline(cell["value"], linewidth=1.4, **style)
        ax.set_xticks([xx for xx, _ in names], [n for _, n in names], rotation=50, ha="right",
                      rotation_mode="anchor", fontsize=7.5)
        ax.set_xlim(-0.8, max(xx for xx, _ in names) + 0.8)
        ax.set_ylabel(METRIC_LABELS.get(panel["metric"], panel["metric"]), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        best = {g: next((p for p in panel["points"] if p["subset"] == panel[f"best_{g}"]), None)
                for g in ("single", "pair")}
        line = "   ".join(f"best {g}: {p['subset']} ({fmt(p['value'])})" if p else f"best {g}: {MISSING}"
                           for g, p in best.items())
        ax.set_title(f"{TASK_LABELS.get(panel['task'], panel['task'])}\n{line}", fontsize=9.5)
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=label) for c, m, label in GROUP_STYLE.values()]
    handles += [Line2D([], [], color="0.35", linestyle="--", label=f"{family} base"),
                Line2D([], [], color="C3", linestyle="-", label=f"{family}__{tuned_subset} (all tasks)"
                       if tuned_subset == "all" else f"{family}__{tuned_subset}")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"Figure 2. Training subsets of {family} on each evaluation task", fontsize=11)
    return save_figure(fig, stem)


def _size_label(size: int) -> str:
    return f"{size / 1000:g}k" if size >= 1000 and size % 100 == 0 else f"{size:,}"


def plot_figure3(family: str, panels: list[dict], tuned_subset: str, stem: Path) -> list[str]:
    from matplotlib.lines import Line2D

    fig = _figure(figure_size("figure3", len(panels)))
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        ticks: dict[int, str] = {}
        for i, line in enumerate(panel["lines"]):
            color = f"C{i % 10}"
            points = line["points"]
            ax.errorbar([p["size"] for p in points], [p["value"] for p in points], yerr=_yerr(points),
                        color=color, marker="o", markersize=5, capsize=2, elinewidth=0.8, linewidth=1.5,
                        label=TASK_LABELS.get(line["task"], line["task"]))
            for p in points:
                ticks[p["size"]] = (f"{tuned_subset}\n{_size_label(p['size'])}" if p["subset"] == tuned_subset
                                    else _size_label(p["size"]))
            if line["base"]:
                ax.axhline(line["base"]["value"], color=color, linestyle=":", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [ticks[s] for s in sorted(ticks)], fontsize=8)
        ax.minorticks_off()
        lo, hi = min(ticks), max(ticks)
        ax.set_xlim(lo / 1.25, hi * 1.25)
        metrics = sorted({line["metric"] for line in panel["lines"]})
        ax.set_ylabel(", ".join(METRIC_LABELS.get(m, m) for m in metrics), fontsize=9)
        ax.set_xlabel("training instructions (log scale)", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(KIND_LABELS[panel["kind"]], fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.legend(handles=[Line2D([], [], color="0.3", marker="o", label=f"{family} tuned on that many instructions"),
                        Line2D([], [], color="0.3", linestyle=":", label=f"{family} base (same colour per task)")],
               loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    fig.suptitle(f"Figure 3. Score against the number of training instructions ({family})", fontsize=11)
    return save_figure(fig, stem)


# ---- rendering ----------------------------------------------------------------------------

def md_table(table: dict) -> str:
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(cell_text(c).replace("|", "\\|") for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def csv_text(table: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table["columns"])
    writer.writerows([cell_csv(c) for c in row] for row in table["rows"])
    return buf.getvalue()


def scores_csv(results: list[Result], index: dict) -> str:
    """Every metric of every results.json used, long form."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["family", "variant", "model", "task", "kind", "metric", "value", "ci95_low", "ci95_high", "n",
                     "source", "limit"])
    for (family, variant, task), r in sorted(index.items(), key=lambda kv: (natural_key(kv[0][0]), kv[0][1:])):
        for metric in sorted(r.metrics):
            cell = score_cell(r, metric)
            if cell is None:
                continue
            ci = cell["ci95"] or ["", ""]
            writer.writerow([family, variant or "", r.label, task, r.kind, metric, repr(cell["value"]),
                             *(repr(c) if c != "" else "" for c in ci), cell["n"] if cell["n"] is not None else "",
                             r.source, r.limit if r.limit is not None else ""])
    return buf.getvalue()


def render_markdown(data: dict) -> str:
    out = [f"# BioInstruct report: {data['run_dir']}", "",
           f"{len(data['inputs']['results'])} results.json files; every number with its source: `report.json`, "
           "`scores.csv`. Missing cells: \"–\". Config: `config.yaml`.", ""]
    for table in data["tables"].values():
        out += [f"## {table['title']}", "", md_table(table), ""]
        for note in table["notes"]:
            out += [f"*{note}*", ""]
        out += [f"CSV: `{table['name']}.csv`", ""]
    out += ["## Figures", ""]
    for name, fig in data["figures"].items():
        out += [f"### {fig['title']}", "", f"![{name}]({fig['files'][0]}) ([PDF]({fig['files'][1]}))", ""]
    if not data["figures"]:
        out += ["*No figures: no training-subset models (Figure 2) or size-N models (Figure 3) were evaluated.*", ""]
    if data["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    return "\n".join(out)


def _html_cell(cell: Any, label: bool) -> str:
    if cell is None or cell == MISSING:
        return f'<td class="missing">{MISSING}</td>'
    if isinstance(cell, str):
        return f"<th>{html.escape(cell)}</th>" if label else f"<td>{html.escape(cell)}</td>"
    main = cell_text(cell, ci=False)
    title = html.escape(cell.get("source") or ", ".join(sorted(set(cell.get("sources") or
                                                                    [o["source"] for o in cell.get("of", [])]))))
    ci = (f'<br><span class="ci">[{fmt(cell["ci95"][0])}, {fmt(cell["ci95"][1])}]</span>'
          if cell["type"] == "score" and cell["ci95"] else "")
    cls = ' class="gain"' if cell["type"] == "gain" else ""
    return f'<td{cls} title="{title}">{html.escape(main)}{ci}</td>'


def render_html(data: dict) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:1800px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}"
             "th{text-align:left;background:#f6f6f6}thead th{text-align:center}.ci{color:#777;font-size:11px}"
             ".missing{color:#aaa;text-align:center}.gain{font-weight:bold}.note{color:#555;font-size:13px}"
             "img{max-width:100%;border:1px solid #eee}.scroll{overflow-x:auto}")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>BioInstruct report: {html.escape(data['run_dir'])}</title><style>{style}</style></head><body>",
           f"<h1>BioInstruct report: {html.escape(data['run_dir'])}</h1>",
           f'<p class="note">{len(data["inputs"]["results"])} results.json files. Hover a number for the '
           'results.json it came from; all of them: <a href="report.json">report.json</a>, '
           '<a href="scores.csv">scores.csv</a>, <a href="report.md">report.md</a>.</p>']
    for table in data["tables"].values():
        out += [f"<h2>{html.escape(table['title'])}</h2>", '<div class="scroll"><table><thead><tr>',
                "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"]), "</tr></thead><tbody>"]
        labels = table.get("label_columns", 1)
        out += ["<tr>" + "".join(_html_cell(c, i < labels) for i, c in enumerate(row)) + "</tr>"
                for row in table["rows"]]
        out += ["</tbody></table></div>"]
        out += [f'<p class="note">{html.escape(n)}</p>' for n in table["notes"]]
        out += [f'<p class="note">CSV: <a href="{table["name"]}.csv">{table["name"]}.csv</a></p>']
    out += ["<h2>Figures</h2>"]
    for name, fig in data["figures"].items():
        png, pdf = fig["files"]
        out += [f"<h3>{html.escape(fig['title'])}</h3>", f'<p><a href="{pdf}">PDF</a></p>',
                f'<img src="{png}" alt="{html.escape(name)}">']
    if not data["figures"]:
        out += ['<p class="note">No figures: no training-subset models (Figure 2) or size-N models (Figure 3) '
                'were evaluated.</p>']
    if data["notes"]:
        out += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in data["notes"]] + ["</ul>"]
    out += ["</body></html>", ""]
    return "\n".join(out)


# ---- the stage ----------------------------------------------------------------------------

def fingerprint(results: list[Result], skipped: list[dict], sizes: dict[str, int]) -> str:
    h = hashlib.sha256()
    for item in sorted({(r.source, r.sha256) for r in results}):
        h.update(f"{item[0]}\0{item[1]}\n".encode())
    for s in skipped:
        h.update(f"skipped {s['source']}\n".encode())
    for name, size in sorted(sizes.items()):
        h.update(f"size {name} {size}\n".encode())
    return h.hexdigest()


def build(cfg: ReportConfig, results: list[Result], skipped: list[dict], sizes: dict[str, int],
          manifest_path: str | None, out: Path) -> dict:
    """Write every file of the report into ``out``; return report.json's content."""
    rep = Report(cfg, results, sizes)
    qa, ie, gen = rep.qa_table(), rep.ie_table(), rep.generation_table()
    tables = {"headline": rep.headline_table(), "qa": qa, "ie": ie, "generation": gen,
              "models": rep.models_table()}
    if contamination := rep.contamination_table():
        tables["contamination"] = contamination
    notes = list(rep.notes)
    limited = sorted({f"{r.source} (limit={r.limit})" for r in results if r.limit is not None})
    if limited:
        notes.append(f"{LIMITED} marks numbers from runs limited to the first N examples of a task (evaluate "
                     f"limit=N), not the full test set: " + ", ".join(limited))
    notes += [f"Skipped {s['source']}: {s['why']}" for s in skipped]
    if not results:
        notes.append(f"No results.json under {cfg.run_dir}: run bioinstruct evaluate first.")
    if not sizes:
        notes.append("No subsets manifest: sizes of size-N subsets are read from their names, and the all-tasks "
                     "model is left out of Figure 3.")
    figures: dict[str, dict] = {}
    kinds = (("figure2", "Figure 2", rep.figure2_data, plot_figure2, "training subsets on each task"),
             ("figure3", "Figure 3", rep.figure3_data, plot_figure3, "score against training set size"))
    for family in rep.families:
        for kind, label, panels_of, plot, caption in kinds:
            panels = panels_of(family)
            if panels:
                files = plot(family, panels, cfg.tuned_subset, out / f"{kind}_{family}")
                figures[f"{kind}_{family}"] = {"title": f"{label} ({family}): {caption}", "family": family,
                                               "files": files, "size_inches": list(figure_size(kind, len(panels))),
                                               "panels": panels}
    data = {"run_dir": cfg.run_dir,
            "inputs": {"fingerprint": fingerprint(results, skipped, sizes), "subsets_manifest": manifest_path,
                       "subset_sizes": sizes, "skipped": skipped,
                       "results": [{"source": s, "sha256": sha, "model": label, "task": task}
                                   for s, sha, label, task in sorted({(r.source, r.sha256, r.label, r.task)
                                                                      for r in results})]},
            "metrics": {"qa_tuned": cfg.qa_metric, "qa_base": cfg.base_metric(), "extraction": "f1",
                        "generation": rep.gen_metric},
            "tables": tables, "figures": figures, "notes": notes}
    for name, table in tables.items():
        atomic_write_text(out / f"{name}.csv", csv_text(table))
    atomic_write_text(out / "scores.csv", scores_csv(results, rep.index))
    atomic_write_json(out / "report.json", data)
    atomic_write_text(out / "report.md", render_markdown(data))
    atomic_write_text(out / "index.html", render_html(data))
    return data


def headline(data: dict) -> dict:
    rows = data["tables"]["headline"]["rows"]
    return {"results": len(data["inputs"]["results"]), "inputs": data["inputs"]["fingerprint"],
            "gains": {f"{r[0]}: {r[1]}": r[4]["value"] if r[4] else None for r in rows},
            "figures": sorted(f for fig in data["figures"].values() for f in fig["files"]),
            "files": sorted(["index.html", "report.md", "report.json", "scores.csv",
                             *(f"{name}.csv" for name in data["tables"]),
                             *(f for fig in data["figures"].values() for f in fig["files"])])}


def run(cfg: ReportConfig, *, force: bool = False) -> dict:
    """Write the report under the run-directory contract; redo it when the inputs changed."""
    # The same report whether its default folder is named or not.
    cfg = dataclasses.replace(cfg, out=str(cfg.out_dir()))
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir: no such directory: {run_dir}")
    out = cfg.out_dir()
    results, skipped = load_results(run_dir, out)
    sizes, manifest_path = subset_sizes(cfg)
    inputs = fingerprint(results, skipped, sizes)
    previous = read_manifest(out)
    if (done := finished(out, "report", cfg, force=force)) and done.get("summary", {}).get("inputs") == inputs:
        print(f"[report] already complete in {out} with the same inputs; nothing to do", file=sys.stderr)
        return done

    def body(stage_dir: Path) -> dict:
        summary = headline(build(cfg, results, skipped, sizes, manifest_path, stage_dir))
        # Figures of families no longer in the results would otherwise linger beside the new ones.
        old = set(((previous or {}).get("summary") or {}).get("files") or []) - set(summary["files"])
        for name in old:
            if "/" not in name:
                (stage_dir / name).unlink(missing_ok=True)
        return summary

    # A conflicting config was refused above (unless force); changed inputs are simply redone.
    return run_stage(out, "report", cfg, body, redo=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run directory (runs/default)")
    parser.add_argument("--out", metavar="DIR", help="where the report goes (RUN_DIR/report)")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.run_dir and "=" in args.run_dir and not Path(args.run_dir).exists():
        args.overrides.insert(0, args.run_dir)  # only overrides were given
        args.run_dir = None
    cfg = config_from_args(ReportConfig, args, {"run_dir": args.run_dir, "out": args.out})
    summary = run(cfg, force=args.force)["summary"]
    rows = [(k, f"{100 * v:+.1f}%" if v is not None else MISSING) for k, v in summary["gains"].items()]
    if rows:
        print(format_table(["tuned vs base", "relative gain"], rows))
    print(f"{summary['results']} results.json; report -> {cfg.out_dir() / 'index.html'}")
    return 0


# A sweep skips a complete report with the same config even when results were added
# since; `bioinstruct report` redoes it (it compares its inputs), in seconds on a CPU.
STAGE = Stage(
    "report", "the paper's tables and figures from a run directory", __name__,
    config=ReportConfig, run=run, outputs=lambda c: [c.out_dir()],
    recorded=lambda c: dataclasses.replace(c, out=str(c.out_dir())),
    quickstart=lambda q: ReportConfig(run_dir=str(q.run_dir)), resources={"mem_gb": 8, "time_min": 60})
