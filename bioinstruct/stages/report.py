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
change; with the same inputs and config there is nothing to do. A run directory with no
results.json is refused (exit 2), so --force never replaces a report with an empty one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Literal

from ..runs.config import add_config_arguments, config_from_args
from ..errors import ConfigError, DataError
from ..io.rows import atomic_write_json, atomic_write_text
from ..reporting.cells import LIMITED, MISSING
from ..reporting.comparisons import Report
from ..reporting.pages import csv_text, render_html, render_markdown, scores_csv
from ..reporting.plots import figure_size, plot_figure2, plot_figure3
from ..reporting.results import Result, load_results, subset_sizes
from ..reporting.tables import format_table
from ..runs.rundir import check_writable, finished, read_manifest, run_stage
from .stage import Stage


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
    check_writable(out, "--out")
    results, skipped = load_results(run_dir, out)
    if not results:  # an empty report would look like a run whose models scored nothing
        why = f" ({len(skipped)} skipped: {skipped[0]['source']}: {skipped[0]['why']})" if skipped else ""
        raise DataError(f"{run_dir}: no results.json of bioinstruct evaluate under it{why}; nothing to report "
                        "(run bioinstruct evaluate first)")
    default = Path(cfg.run_dir) / "subsets" / "manifest.json"  # the subsets stage's, when there is one
    sizes, manifest_path = subset_sizes(Path(cfg.subsets_manifest) if cfg.subsets_manifest else default,
                                        required=bool(cfg.subsets_manifest))
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
    quickstart=lambda q: ReportConfig(run_dir=str(q.run_dir)), resources={"mem_gb": 8, "time_limit_min": 60})
