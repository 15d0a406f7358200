"""Score a base model, and the same base with a LoRA adapter, on the paper's evaluation tasks.

    bioinstruct evaluate --model /models/llama2-7b --adapter runs/v1/train/llama2-7b__all/adapter \\
        --tasks medqa,medmcqa,pubmedqa --run-dir runs/v1
    bioinstruct evaluate ... --shard 3/8              # one Slurm array task of eight
    bioinstruct evaluate --merge runs/v1/evaluate     # combine the shards' predictions
    bioinstruct evaluate ... --tasks conv2note judge=true judge_llm.model=gpt-4   # GPT-4 judge
    bioinstruct evaluate --merge runs/v1/evaluate judge=true      # judge shards scored without it
    bioinstruct evaluate ... --shard 1/8 merge=true judge=true    # a sweep's CPU step: merge, judge

Input: a model directory (or hub id), optionally an adapter; tasks from the registry
(bioinstruct/tasks/*/*.yaml; task data paths under $BIOINSTRUCT_DATA or set with
task_data.<task>.path=FILE; gated sets say where to get them).
Output (RUN_DIR/evaluate/<model>/<task>/, or --out DIR/<model>/<task>/; <model> is "base", or
the adapter's name):
  shard-I-of-N/predictions.jsonl   one line per example, appended as each batch completes (the
                                   shard is planned once: sorted batches, longest first, so an
                                   out-of-memory shows at once); a restarted shard reruns only
                                   the batches it had not finished (manifest.json marks it complete),
                                   only when made from the same inputs (manifest "inputs":
                                   model/adapter fingerprints, data sha256, task options, limit,
                                   shard count); other inputs are refused, --force starts clean
  shard-I-of-N/backoff.json        after out of memory: the batch size halved to (down to 1; the
                                   shard is scored again from its start at that size and the log
                                   names each halving); a resumed shard starts at it, and the
                                   manifest's summary records the size that worked
  results.json                     metrics with n and 95% bootstrap intervals, written by
                                   the shard that completes the set (or by --merge), with the
                                   fingerprints, data hashes, split, limit, shard count, each
                                   shard's batch size that worked and the dtype; with
                                   decontamination=DECISIONS.jsonl (bioinstruct decontaminate)
                                   also "untouched": the same metrics over the items no
                                   instruction touched, and how many were left out
Scoring: multiple choice by log-likelihood of each choice after lm-evaluation-harness's
prompt (acc, acc_norm; macro-F1 for PubMedQA) for every model, and, for the adapter model,
also generatively with the prompt it was trained with (greedy; letter / option extraction;
the unparseable rate is reported): prompt.format=auto takes the adapter's recorded format
(alpaca or chat; alpaca without an adapter), and a different one set by hand is refused.
Generation tasks: ROUGE-1/2/L, cosine similarity of sentence embeddings, and the LLM judge's
rubric scores when judge=true.
Extraction tasks: micro precision / recall / F1 of normalised items.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Literal

from ..modeling import metrics as M
from ..runs.config import FieldError, add_config_arguments, at_least, config_from_args
from ..errors import ConfigError, UserError
from ..runs.identity import adapter_identity, base_matches, model_fingerprint, path_identity
from ..io.rows import atomic_write_json, read_json, read_jsonl
from ..llm import LLMConfig
from ..modeling.models import check_adapter, check_model
from ..modeling.predictions import score_shard
from ..prompts import EvalPromptConfig, resolve_format
from ..runs.rundir import check_resumable, check_writable, is_complete, read_manifest, run_stage
from ..reporting.tables import format_table
from ..tasks import task_names, unknown_task
from .stage import Stage

# Keys compared through the shard's recorded input identities (model and adapter fingerprints,
# the task's data hashes and options) or that do not change a shard's predictions (where the
# output lives, which other tasks and models the same call scores), never as strings.
IDENTITY_KEYS = ("model", "adapter", "run_dir", "out", "shard", "tasks", "task_data", "name", "compare_base",
                 "allow_base_mismatch", "prompt")
# Keys that change results.json but not a shard's predictions: a shard scored without the judge
# is complete for a config with it (the merge judges), never a conflict. The merge step's own
# folder compares them.
SHARD_KEYS = IDENTITY_KEYS + ("judge", "judge_llm", "merge")


@dataclasses.dataclass
class EvaluateConfig:
    model: str | None = None
    adapter: str | None = None
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["pubmedqa"])
    run_dir: str = "runs/default"
    out: str | None = None  # the results folder; default RUN_DIR/evaluate
    shard: str = "1/1"  # I/N: this process scores examples I, I+N, I+2N, ... (1-based I)
    name: str | None = None  # the adapter model's folder name; default: the adapter's parent folder
    compare_base: bool = True  # with an adapter, also score the base model in the same call
    generative: bool = True  # multiple choice also answered generatively by the adapter model
    task_data: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per-task loader options
    # A decontaminate decisions.jsonl: also score the items no instruction of it touched.
    decontamination: str | None = None
    limit: int | None = None  # the first N examples of each task (quick looks)
    batch_size: int = 32  # halved on out of memory, down to 1; the shard records the size that worked
    max_new_tokens: int = 256
    prompt: EvalPromptConfig = dataclasses.field(default_factory=EvalPromptConfig)  # generation's prompt format
    # auto: bf16 on a GPU with native bf16 (compute capability >= 8.0), else fp16; fp32 on CPU
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    similarity_model: str | None = None  # sentence-embedding dir; None: bioinstruct[embed]'s MiniLM
    judge: bool = False
    judge_llm: LLMConfig = dataclasses.field(
        default_factory=lambda: LLMConfig(backend="openai", temperature=0.0, max_tokens=60))
    allow_base_mismatch: bool = False  # score an adapter on a model other than its recorded base
    # Score nothing and load no model: combine this config's complete shards (of shard I/N, the
    # set of N) into results.json, judging them when judge=true. A sweep's CPU step after its
    # GPU shards, which run with judge=false (no GPU job talks to the judge's API).
    merge: bool = False

    def __post_init__(self):
        shard_of(self.shard)
        at_least(self, 1, "batch_size", "max_new_tokens", "limit")
        if not self.tasks:
            raise FieldError("tasks", f"is empty: name one or more of {', '.join(task_names())}")
        for key, names in (("tasks", self.tasks), ("task_data", self.task_data)):
            for name in names:
                if name not in task_names():
                    field = f"{key}.{name}" if key == "task_data" else key
                    raise FieldError(field, f"names an {unknown_task(name)}")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "evaluate"

    def models(self) -> list[tuple[str, bool]]:
        """(folder name, adapter on?) for each model this call scores."""
        if not self.adapter:
            return [("base", False)]
        tuned = self.name or Path(self.adapter).resolve().parent.name
        return [(tuned, True)] + ([("base", False)] if self.compare_base else [])


def shard_of(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise FieldError("shard", f"must be I/N like 2/8, got {text!r}") from None
    if not 1 <= i <= n:
        raise FieldError("shard", f"is {text}: need 1 <= I <= N")
    return i, n


# ---- results ------------------------------------------------------------------------------

def task_metrics(task, rows: list[dict], cfg: EvaluateConfig, task_dir: Path) -> dict[str, Any]:
    if task.kind == "multiple_choice":
        out = {"acc": M.summarize([float(r["pred"] == r["gold"]) for r in rows]),
               "acc_norm": M.summarize([float(r["pred_norm"] == r["gold"]) for r in rows])}
        labels = sorted({r["gold"] for r in rows} | {i for r in rows for i in range(len(r["loglik"]))})
        if "macro_f1" in task.metrics:
            out["macro_f1"] = {"value": M.macro_f1([r["gold"] for r in rows], [r["pred"] for r in rows], labels),
                               "n": len(rows)}
        if rows and "gen_pred" in rows[0]:
            out["generative_acc"] = M.summarize([float(r["gen_pred"] == r["gold"]) for r in rows])
            out["unparseable_rate"] = M.summarize([float(r["gen_pred"] is None) for r in rows])
            if "macro_f1" in task.metrics:
                out["generative_macro_f1"] = {"value": M.macro_f1([r["gold"] for r in rows],
                                                                  [r["gen_pred"] for r in rows], labels),
                                              "n": len(rows)}
        return out
    if task.kind == "extraction":
        pred, gold = [r["pred_items"] for r in rows], [r["gold"] for r in rows]
        scores = M.prf(pred, gold)
        out = {k: {"value": scores[k], "n": len(rows)} for k in ("precision", "recall", "f1")}
        out["f1"]["ci95"] = scores["f1_ci95"]
        return out
    outputs, references = [r["output"] for r in rows], [r["reference"] for r in rows]
    out = {k: M.summarize(v) for k, v in M.rouge(outputs, references).items()}
    from ..similarity.embed import SentenceEncoder

    encoder = SentenceEncoder(cfg.similarity_model)
    a, b = encoder.encode(outputs), encoder.encode(references)
    out["similarity"] = M.summarize([float(x @ y) for x, y in zip(a, b)])
    if cfg.judge:
        from ..llm.judge import DIMENSIONS, judge

        scores = judge(rows, cfg.judge_llm, task_dir / "judge")
        scored = [s for s in scores if s]
        for d in DIMENSIONS:
            out[f"judge_{d}"] = M.summarize([s[d] for s in scored])
        out["judge_mean"] = M.summarize([sum(s.values()) / len(s) for s in scored])
        out["judge_unscored"] = {"value": len(rows) - len(scored), "n": len(rows)}
    return out


def write_results(task, task_dir: Path, cfg: EvaluateConfig, model_label: str) -> dict:
    """Combine every shard's predictions (all must be complete) into results.json."""
    shards = sorted(task_dir.glob("shard-*-of-*"))
    if not shards:
        raise UserError(f"{task_dir}: no shards")
    n = int(shards[0].name.rsplit("-", 1)[1])
    missing = [i for i in range(1, n + 1) if not is_complete(task_dir / f"shard-{i}-of-{n}")]
    if missing or len(shards) != n:
        raise UserError(f"{task_dir}: {len(missing)} of {n} shards are not complete "
                        f"({', '.join(str(i) for i in missing[:10])}); run them before merging")
    manifests = [read_manifest(s) for s in shards]
    inputs = [m.get("inputs") for m in manifests]
    if any(x != inputs[0] for x in inputs):
        odd = next(s for s, x in zip(shards, inputs) if x != inputs[0])
        raise UserError(f"{task_dir}: {odd.name} was made from other inputs than {shards[0].name} "
                        f"(model, adapter, data or limit); rerun it with --force")
    rows = [row for s in shards for row in read_jsonl(s / "predictions.jsonl")]
    metrics = task_metrics(task, rows, cfg, task_dir)
    recorded = inputs[0] or {}
    results = {"task": task.name, "kind": task.kind, "model": model_label,
               "model_path": cfg.model, "adapter": cfg.adapter if model_label != "base" else None,
               "model_fingerprint": recorded.get("model"), "adapter_identity": recorded.get("adapter"),
               "data": recorded.get("task", {}).get("data"), "split": recorded.get("task", {}).get("split"),
               "limit": recorded.get("limit"), "allow_base_mismatch": recorded.get("allow_base_mismatch"),
               "n": len(rows), "shards": n,
               # per shard, the batch size that worked (smaller than batch_size after out of memory)
               "batch_sizes": [m.get("summary", {}).get("batch_size") for m in manifests],
               "dtype": manifests[0].get("summary", {}).get("dtype"), "metrics": metrics}
    if cfg.decontamination:
        from .decontaminate import touched_items

        touched = touched_items(cfg.decontamination).get(task.name, set())
        clean = [r for r in rows if r["id"] not in touched]
        # the judge replays its answers for these rows from the same folder: nothing is paid twice;
        # no untouched item at all leaves no metric (a report shows it missing, never as zero)
        untouched = metrics if len(clean) == len(rows) else task_metrics(task, clean, cfg, task_dir) if clean else {}
        results["untouched"] = {"decisions": cfg.decontamination, "excluded": len(rows) - len(clean),
                                "n": len(clean), "metrics": untouched}
    atomic_write_json(task_dir / "results.json", results)
    return results


# ---- the stage ----------------------------------------------------------------------------

def run(cfg: EvaluateConfig, *, force: bool = False) -> list[dict]:
    from ..tasks import load_examples, load_task

    if not cfg.model:
        raise ConfigError("no model: give --model DIR (and --adapter DIR for a tuned model)")
    check_model(cfg.model, "--model")  # every path is checked before the model loads
    if cfg.adapter:
        check_adapter(cfg.adapter, "--adapter", cfg.model)
    resolve_format(cfg.prompt.format, cfg.adapter)  # a format other than the adapter's is refused here
    check_writable(str(cfg.out_dir()), "--out")
    i, n = shard_of(cfg.shard)
    tasks = [load_task(name, cfg.task_data.get(name)) for name in cfg.tasks]
    if cfg.merge:
        return merge_shards(cfg, tasks, force=force)
    if cfg.decontamination:  # a bad decisions file shows up before any scoring
        from .decontaminate import touched_items

        touched_items(cfg.decontamination)
    examples = {t.name: load_examples(t)[:cfg.limit] for t in tasks}  # every data problem shows up first
    if cfg.adapter:
        match, base = base_matches(cfg.adapter, cfg.model)
        if not match and not cfg.allow_base_mismatch:
            raise ConfigError(f"--adapter: {cfg.adapter} was trained on {base}, not on --model {cfg.model} "
                              f"(compared by content where the base is a local folder, else by name); "
                              f"set allow_base_mismatch=true to score it anyway")
    # Every reuse decision is made here, before the model loads (minutes on a GPU).
    inputs = {}
    for label, adapter_on in cfg.models():
        for task in tasks:
            task_dir = cfg.out_dir() / label / task.name
            other = sorted(p.name for p in task_dir.glob("shard-*-of-*")
                           if p.is_dir() and p.name.rsplit("-", 1)[1] != str(n))
            if other:
                raise ConfigError(f"--shard {cfg.shard}: {task_dir} holds {other[0]} (another shard count); "
                                  f"use another --out, or the shard count it was started with")
            inputs[label, task.name] = shard_inputs(cfg, adapter_on, task)
            check_resumable(task_dir / f"shard-{i}-of-{n}", "evaluate", cfg, force=force,
                            inputs=inputs[label, task.name], ignore=SHARD_KEYS)
    from ..modeling.scoring import LM

    lm = LM(cfg.model, cfg.adapter, dtype=cfg.dtype, batch_size=cfg.batch_size)
    results = []
    # Task by task, the adapter pass then the base pass: the LM keeps a task's plan (its
    # tokenized, batched requests) for the second pass.
    for task in tasks:
        for label, adapter_on in cfg.models():
            task_dir = cfg.out_dir() / label / task.name
            mine = examples[task.name][i - 1::n]
            with (lm.base() if not adapter_on else _nothing()):
                run_stage(task_dir / f"shard-{i}-of-{n}", "evaluate", cfg,
                          lambda d: score_shard(lm, task, mine, adapter_on, cfg, d), force=force,
                          inputs=inputs[label, task.name], ignore=SHARD_KEYS)
            if all(is_complete(task_dir / f"shard-{j}-of-{n}") for j in range(1, n + 1)):
                results.append(merge_task(task, task_dir, cfg, label))
    return results


def merge_shards(cfg: EvaluateConfig, tasks: list, *, force: bool = False) -> list[dict]:
    """cfg.merge: each model x task's results.json from its complete shards, under the stage
    contract in OUT/<model>/<task>/merge (its manifest marks the step done for `launch`)."""
    results = []
    for label, adapter_on in cfg.models():
        for task in tasks:
            task_dir = cfg.out_dir() / label / task.name
            run_stage(task_dir / "merge", "evaluate", cfg,
                      lambda _, task=task, task_dir=task_dir, label=label: {
                          "n": merge_task(task, task_dir, cfg, label)["n"]},
                      force=force, inputs=shard_inputs(cfg, adapter_on, task), ignore=IDENTITY_KEYS)
            results.append(read_json(task_dir / "results.json"))
    return results


def judge_after(cfg: EvaluateConfig) -> tuple[str, list[str], list[str]] | None:
    """Stage.cpu_step: with judge=true, the GPU shards score without the judge and one CPU job
    per shard set merges and judges them (compute nodes may have no network, and a GPU would
    idle while the API answers)."""
    if not cfg.judge or cfg.merge:
        return None
    return "judge", ["judge=false"], ["judge=true", "merge=true", f"shard=1/{shard_of(cfg.shard)[1]}"]


def shard_inputs(cfg: EvaluateConfig, adapter_on: bool, task) -> dict:
    """What a shard's predictions are made from, by content (its manifest's "inputs")."""
    fmt = resolve_format(cfg.prompt.format, cfg.adapter)
    return {"model": model_fingerprint(cfg.model), "adapter": adapter_identity(cfg.adapter) if adapter_on else None,
            "task": task_identity(task), "limit": cfg.limit, "shards": shard_of(cfg.shard)[1],
            **({"allow_base_mismatch": True} if adapter_on and cfg.allow_base_mismatch else {}),
            **({"prompt_format": fmt} if fmt != "alpaca" else {})}  # alpaca: as recorded before formats


def shard_identity(cfg: EvaluateConfig, shard_dir: Path) -> tuple[dict, tuple[str, ...]]:
    """(inputs, keys compared through them) of the shard folder ``OUT/<model>/<task>/shard-I-of-N``
    of this config (or its merge step's OUT/<model>/<task>/merge): what `bioinstruct launch` asks
    before counting a shard as done."""
    from ..tasks import load_task

    name = shard_dir.parent.name
    adapter_on = dict(cfg.models()).get(shard_dir.parent.parent.name, False)
    keys = IDENTITY_KEYS if shard_dir.name == "merge" else SHARD_KEYS
    return shard_inputs(cfg, adapter_on, load_task(name, cfg.task_data.get(name))), keys


def task_identity(task) -> dict:
    """A task as the predictions depend on it: its loader options, and each data path by content
    (a file's sha256, a folder's files'), not by where it lies. Data from the hub is named by
    dataset, config and split (its revision is not pinned)."""
    from ..tasks import _is_path_key

    options = {k: v for k, v in task.data.items() if k != "root" and not _is_path_key(k)}
    hub = task.data.get("hub")
    return {"name": task.name, "options": options,
            "data": None if hub else {k: path_identity(v) for k, v in task.data.items() if _is_path_key(k)},
            "split": task.data.get("split") or (task.data.get("hub_split") if hub else None)}


def merge_task(task, task_dir: Path, cfg: EvaluateConfig, label: str) -> dict:
    """results.json by whichever shard of an array completes the set. Two shards finishing
    together take turns under a lock: the judge's paid calls are made once, and the second
    merge replays them."""
    import fcntl

    with open(task_dir / ".merge.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return write_results(task, task_dir, cfg, label)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def merge(out: str, cfg: EvaluateConfig) -> list[dict]:
    """results.json for every model/task under ``out`` whose shards are all complete."""
    from ..tasks import load_task

    results = []
    for task_dir in sorted(p for p in Path(out).glob("*/*") if p.is_dir()):
        shard = next(task_dir.glob("shard-*-of-*"), None)
        if shard is None:
            continue
        manifest = read_manifest(shard)
        # judge=true here judges shards scored without it: the judge as a CPU step after the GPU's.
        shard_cfg = dataclasses.replace(cfg, **{k: manifest["config"][k] for k in ("model", "adapter")},
                                        judge=cfg.judge or manifest["config"]["judge"],
                                        decontamination=manifest["config"].get("decontamination"))
        task = load_task(task_dir.name, manifest["config"]["task_data"].get(task_dir.name))
        results.append(merge_task(task, task_dir, shard_cfg, task_dir.parent.name))
    if not results:
        raise UserError(f"{out}: nothing to merge (expected {out}/<model>/<task>/shard-I-of-N/)")
    return results


def results_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        for name, m in r["metrics"].items():
            ci = m.get("ci95")
            rows.append((r["model"], r["task"], name, f"{m['value']:.4f}" if m["value"] is not None else "-",
                         f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "", m["n"]))
    return format_table(["model", "task", "metric", "value", "95% CI", "n"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="base model directory or hub id")
    parser.add_argument("--adapter", metavar="DIR", help="LoRA adapter (from bioinstruct train)")
    parser.add_argument("--tasks", metavar="A,B", help="comma-separated task names (see bioinstruct/tasks/)")
    parser.add_argument("--shard", metavar="I/N", help="score every N-th example starting at I (1-based)")
    parser.add_argument("--run-dir", metavar="DIR", help="the run directory: results in RUN_DIR/evaluate/")
    parser.add_argument("--out", metavar="DIR", help="the results folder instead (overrides --run-dir's)")
    parser.add_argument("--merge", metavar="DIR", help="combine complete shards under DIR into results.json")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    flags = {"model": args.model, "adapter": args.adapter, "shard": args.shard, "run_dir": args.run_dir, "out": args.out,
             "tasks": args.tasks.split(",") if args.tasks else None}
    cfg = config_from_args(EvaluateConfig, args, flags)
    results = merge(args.merge, cfg) if args.merge else run(cfg, force=args.force)
    if results:
        print(results_table(results))
    else:
        print(f"shard {cfg.shard} done; the shard that completes a task writes its results.json")
    return 0


def shard_dirs(cfg: EvaluateConfig) -> list[Path]:
    """The folders of this config's shard: OUT/<model>/<task>/shard-I-of-N (merge: .../merge),
    per model x task."""
    i, n = shard_of(cfg.shard)
    folder = "merge" if cfg.merge else f"shard-{i}-of-{n}"
    return [cfg.out_dir() / label / task / folder for label, _ in cfg.models() for task in cfg.tasks]


def _quickstart(q) -> EvaluateConfig | list[EvaluateConfig]:
    if q.settings.real:
        return _real_quickstart(q)
    # Base and tuned tiny model on all nine tasks, on the synthetic demo data, offline judge.
    return EvaluateConfig(
        model=str(q.outputs["tiny-model"]), adapter=str(q.outputs["train"] / "adapter"), tasks=task_names(),
        out=str(q.folder), task_data=q.settings.demo_task_data(), batch_size=8, max_new_tokens=32, judge=True,
        judge_llm=LLMConfig(backend="offline"), decontamination=str(q.outputs["decontaminate"] / "decisions.jsonl"))


def _real_quickstart(q) -> list[EvaluateConfig]:
    # Base SmolLM2 and each tuned one (every subset trained) by log-likelihood: the first
    # medmcqa_questions MedMCQA dev questions (limit; the PubMedQA sample is smaller) and the
    # drawn PubMedQA sample. Base is scored once, with the first adapter.
    demo = q.settings.demo
    data = {"medmcqa": {"root": demo.root}, "pubmedqa": {"root": str(q.demo["pubmedqa_root"])}}
    adapters = sorted(q.run_dir.glob("train/*/adapter"))
    return [EvaluateConfig(model=str(q.model), adapter=str(a), tasks=list(q.settings.real_tasks), out=str(q.folder),
                           task_data=data, limit=max(demo.medmcqa_questions, demo.pubmedqa_questions),
                           generative=False, compare_base=k == 0,
                           decontamination=str(q.outputs["decontaminate"] / "decisions.jsonl"))
            for k, a in enumerate(adapters)]


# One launch task scores one shard of each of its models x tasks; the shard that completes a
# task's set writes its results.json, so no merge job is needed, except to judge (cpu_step).
STAGE = Stage(
    "evaluate", "score base and tuned models on the paper's nine tasks", __name__,
    config=EvaluateConfig, run=run, outputs=shard_dirs, identity=shard_identity, quickstart=_quickstart,
    hub_models=("model",), cpu_step=judge_after,
    resources={"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64, "time_limit_min": 8 * 60, "signal_delay_s": 300})
