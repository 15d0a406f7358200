"""The report's numbers: base vs tuned models per table, and the data of Figures 2 and 3."""

from __future__ import annotations

import dataclasses
import re

from .cells import MISSING, gain_cell, gain_of_means, mean_cell, score_cell
from .results import (GEN_METRICS, KINDS, METRIC_LABELS, TASK_LABELS, Result, index_results, natural_key, subset_group, variant_key)

# The paper's headline relative gains of BioInstruct-tuned over base models (abstract).
PAPER_GAINS = {"qa": 0.173, "ie": 0.057, "judge": 0.96}


class Report:
    """Every table and figure's numbers, from the indexed results. ``cfg`` is the report stage's
    ReportConfig (its metrics and tuned_subset), which imports this module, not the other way."""

    def __init__(self, cfg, results: list[Result], sizes: dict[str, int]):
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
