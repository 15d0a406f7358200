"""Reading evaluation results from a run directory: every results.json evaluate wrote, the
model family and training subset each belongs to, and the subsets' sizes."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..io.rows import read_json
from ..io.records import CATEGORIES

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


def subset_sizes(path: Path, required: bool) -> tuple[dict[str, int], str | None]:
    """Training instructions per subset name, and the manifest they came from: the subsets
    stage's manifest.json at ``path`` (when ``required``, an error if it is missing)."""
    if not path.exists():
        if required:
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
