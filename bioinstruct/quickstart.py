"""Run the pipeline end to end on this machine: CPU, a tiny model, no network, no API key.

    bioinstruct quickstart                           # into runs/quickstart
    bioinstruct quickstart run_dir=/scratch/$USER/qs tiny_model.pretrain_steps=100

It runs every stage, each in its own folder of the run directory (see README "Run
directories"); a second run finds them complete and does nothing. The same pipeline as
Slurm jobs (arrays, dependencies, requeue): bioinstruct launch launch/quickstart-local.yaml.

Output (run_dir), one folder per stage, each with manifest.json and config.yaml:
  tiny-model/   tokenizer + LLaMA weights (make-tiny-model)
  generate/     self-instruct with the offline responder (synthetic text, no API key)
  filter/       the standalone filter over the generated instructions, pool = seeds
  decontaminate/ clean.jsonl: the kept instructions that hold no item of the nine tasks'
                demo data (the same data evaluate scores)
  classify/     categories from the offline rule-based classifier, on the clean set
  agreement/    sheet.csv: 20 instructions to label by hand, then compare with
                bioinstruct agreement --labels classify/labelled.jsonl agreement/sheet.csv
  stats/        the dataset card (card.md), token lengths with the tiny model's tokenizer
  subsets/      the ablation subsets (categories, pairs, sizes, size-matched)
  train/        LoRA on the tiny model over subset 'all', 2 CPU ranks, DeepSpeed ZeRO-2
                (configs/train/tiny/lora.yaml)
  evaluate/     base and tuned tiny model on all nine tasks, on the synthetic demo data
                (bioinstruct/data/demo_tasks), with the offline judge; each score also over
                the items no generated instruction touched
  report/       the paper's tables and figures for this run (index.html)
The numbers are those of a 0.2M-parameter model on synthetic text: they show the pipeline
works end to end, nothing about BioInstruct.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from . import agreement, classify, decontaminate, evaluate, generate, report, stats, subsets
from .distributed import spawn
from .errors import UserError
from .rundir import read_manifest
from . import filter as filter_stage
from .config import add_config_arguments, config_from_args
from .llm import LLMConfig
from .tasks import task_names
from .tiny_model import TinyModelConfig, make_tiny_model


def _offline_generation() -> generate.GenerateConfig:
    return generate.GenerateConfig(target=60, llm=LLMConfig(backend="offline"))


@dataclasses.dataclass
class QuickstartConfig:
    run_dir: str = "runs/quickstart"
    tiny_model: TinyModelConfig = dataclasses.field(default_factory=TinyModelConfig)
    # generate.run_dir is ignored: every stage writes under run_dir.
    generate: generate.GenerateConfig = dataclasses.field(default_factory=_offline_generation)
    subset_sizes: list[int] = dataclasses.field(default_factory=lambda: [20, 40])
    train_ranks: int = 2  # CPU ranks (gloo) for the training step


DEMO_TASKS = Path(__file__).resolve().parent / "data" / "demo_tasks"
TINY_TRAIN = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny" / "lora.yaml"


def run(cfg: QuickstartConfig, *, force: bool = False) -> dict[str, dict]:
    run_dir = Path(cfg.run_dir)
    manifests = {}
    t0 = time.perf_counter()
    manifests["tiny-model"] = make_tiny_model(run_dir / "tiny-model", cfg.tiny_model, force=force)
    gen = dataclasses.replace(cfg.generate, run_dir=str(run_dir))
    manifests["generate"] = generate.run(gen, force=force)
    filt = filter_stage.FilterConfig.with_criteria(
        gen.filter,
        input=str(run_dir / "generate" / "instructions.jsonl"),
        output=str(run_dir / "filter" / "kept.jsonl"),
        pool=gen.seed_tasks or str(generate.DEFAULT_SEEDS))
    manifests["filter"] = filter_stage.run(filt, force=force)
    demo_data = {t: {"root": str(DEMO_TASKS)} for t in task_names()}
    manifests["decontaminate"] = decontaminate.run(
        decontaminate.DecontaminateConfig(run_dir=str(run_dir), task_data=demo_data), force=force)
    manifests["classify"] = classify.run(
        classify.ClassifyConfig(run_dir=str(run_dir), llm=LLMConfig(backend="offline")), force=force)
    labelled = str(run_dir / "classify" / "labelled.jsonl")
    sheet = run_dir / "agreement" / "sheet.csv"
    if force or not sheet.exists():  # a sheet may hold someone's labels: never redone silently
        agreement.write_sheet(agreement.AgreementConfig(sample=20, sample_from=labelled, sheet=str(sheet)),
                              force=force)
    manifests["stats"] = stats.run(
        stats.StatsConfig(input=labelled, run_dir=str(run_dir), tokenizer=str(run_dir / "tiny-model"),
                          max_lengths=[128, 256, 512]), force=force)
    manifests["subsets"] = subsets.run(
        subsets.SubsetsConfig(run_dir=str(run_dir), sizes=cfg.subset_sizes), force=force)
    # Training runs as its own ranks, exactly as a Slurm job would start it.
    code = spawn(cfg.train_ranks, ["train", "--config", str(TINY_TRAIN), f"run_dir={run_dir}",
                                   f"model.path={run_dir / 'tiny-model'}", *(["--force"] if force else [])])
    if code:
        raise UserError(f"training exited with status {code}; see the messages above")
    manifests["train"] = read_manifest(run_dir / "train" / "tiny__all")
    evaluation = evaluate.EvaluateConfig(
        model=str(run_dir / "tiny-model"), adapter=str(run_dir / "train" / "tiny__all" / "adapter"),
        tasks=task_names(), out=str(run_dir / "evaluate"), task_data=demo_data,
        batch_size=8, max_new_tokens=32, judge=True, judge_llm=LLMConfig(backend="offline"),
        decontamination=str(run_dir / "decontaminate" / "decisions.jsonl"))
    results = evaluate.run(evaluation, force=force)
    manifests["evaluate"] = {"status": "complete", "summary": {"results": len(results)}}
    manifests["report"] = report.run(report.ReportConfig(run_dir=str(run_dir)), force=force)
    print(f"quickstart: {len(manifests)} stage(s) complete in {run_dir} "
          f"({time.perf_counter() - t0:.1f} s)")
    for name, m in manifests.items():
        print(f"  {name:<12} {m['status']:<9} {run_dir / name}")
    print(f"open {run_dir / 'report' / 'index.html'} to see the tables and figures")
    print("the same pipeline as Slurm jobs (or local processes): bioinstruct launch launch/quickstart-local.yaml")
    return manifests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    run(config_from_args(QuickstartConfig, args), force=args.force)
    return 0
