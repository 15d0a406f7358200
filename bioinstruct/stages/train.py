"""LoRA instruction tuning of a LLaMA model on one training subset, with DeepSpeed ZeRO.

    bioinstruct train --config configs/train/llama2/7b_lora.yaml run_dir=runs/v1 data.subset=qa+ie
    srun --ntasks-per-node=4 --gpus-per-task=1 bioinstruct train --config configs/train/llama2/13b_lora.yaml
    torchrun --nproc_per_node=8 -m bioinstruct train --config configs/train/llama1/7b_lora.yaml
    bioinstruct train --config configs/train/tiny/lora.yaml run_dir=runs/quickstart --nproc 2   # CPU

Input: a base model (model.path: a local directory, or a hub id when online; LLaMA weights
are gated, point at your copy; `bioinstruct get-model smollm2-135m DIR` makes a real small
one), training records from run_dir/subsets/<data.subset>/data.jsonl
(or data.path=FILE), a DeepSpeed config file (deepspeed=configs/deepspeed/zero2.json; null
for none) whose "auto" values are filled from this config, so the two never disagree.
Prompt format (prompt.format): alpaca, the paper's (default), or chat, the tokenizer's own chat
template (for an instruct model); the loss covers the response only in both.
Output (run_dir/train/<model.name>__<data.subset>/):
  adapter/        the LoRA adapter (save_pretrained; load with peft.PeftModel), its tokenizer,
                  and prompt.json: the prompt format, which evaluate prompts it with
  merged/         the merged model, when merge=true
  checkpoints/    checkpoint-N/ with optimizer, scheduler, RNG of every rank and the data
                  position; a COMPLETE file marks a whole one (keep-last-N)
  metrics.jsonl   per logging step: loss, learning rate, grad norm, tokens/s, MFU (real
                  tokens: padding is not counted)
  runs/           TensorBoard events
Preemption: SIGUSR2 (Slurm's warning, --signal=USR2@120) or SIGTERM makes every rank save
a full checkpoint at the next step and exit with status 75 ("requeue me"). The next run
(checkpoint.resume=auto) continues from the newest complete checkpoint, bit for bit: the
same adapter and the same per-step losses as a run that was never interrupted. A signal that
comes while the model loads is kept, and acted on at the end of the first step; one that comes
during the last step lets the run finish (exit 0), as there is nothing left to requeue.
Packing (data.packing=true, bioinstruct/modeling/packing.py) puts several short examples in one row of
up to data.max_length tokens, exactly (no attention or loss across examples); a sample is
then a row, so optim.effective_batch counts rows of several examples each.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Literal

from ..runs.config import FieldError, add_config_arguments, at_least, config_from_args, load_config, ranged, seed_field
from ..errors import ConfigError, StageStopped
from ..paths import SOURCE_TREE, source_path
from ..runs.identity import model_fingerprint, path_identity
from ..io.rows import read_json
from ..modeling.distributed import end_process_group
from ..modeling.deepspeed_setup import deepspeed_config, gradient_accumulation, skip_shm_comm_build
from ..modeling.examples import collator, tokenize
from ..modeling.trainer_callbacks import (RUN_CONFIG, catch_signals, complete_checkpoints, drop_steps_after,
                                          mean_loss, quiet_known_warnings, trainer_callbacks)
from ..modeling.models import check_model
from ..modeling.memory import OutOfMemory, is_out_of_memory, one_line
from ..modeling.precision import resolve_dtype
from ..modeling.packing import pack, packed_trainer
from ..io.records import read_records
from ..prompts import PromptConfig, record_format
from ..runs.rundir import check_resumable, check_writable, differences, is_complete, run_stage
from .stage import Stage

REQUEUE_EXIT = 75  # EX_TEMPFAIL: stopped by a signal after a complete checkpoint; run again
# Paths compared by the content they name (the stage's recorded inputs), not as strings.
IDENTITY_KEYS = ("run_dir", "model.path", "data.path", "deepspeed")
# Keys that cannot change the trained adapter: a resume or a complete run may differ in them.
NEUTRAL_KEYS = ("logging_steps", "peak_tflops", "checkpoint.every_steps", "checkpoint.keep_last",
                "checkpoint.resume")


@dataclasses.dataclass
class ModelConfig:
    path: str = "meta-llama/Llama-2-7b-hf"
    name: str = "llama2-7b"  # names the output folder
    # auto: bf16 where the GPU computes it natively (compute capability >= 8.0), else fp16 with
    # loss scaling; fp32 on CPU (bioinstruct/modeling/precision.py; `bioinstruct doctor` shows it)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    gradient_checkpointing: bool = False


@dataclasses.dataclass
class LoraSettings:
    # alpaca-lora's defaults; the paper did not publish its own.
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self):
        at_least(self, 1, "r", "alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise FieldError("dropout", f"must be within [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise FieldError("target_modules", "is empty: name the layers to adapt, e.g. [q_proj, v_proj]")


@dataclasses.dataclass
class DataConfig:
    subset: str = "all"  # a subset written by `bioinstruct subsets`
    path: str | None = None  # or any JSONL / JSON list of {instruction, input, output}
    max_length: int = 512  # tokens; `bioinstruct stats` shows what each cutoff truncates
    train_on_inputs: bool = False  # False: loss on the response only
    packing: bool = False  # several examples per row up to max_length; a sample is then a row

    def __post_init__(self):
        at_least(self, 1, "max_length")


@dataclasses.dataclass
class OptimConfig:
    lr: float = 3e-4
    warmup_steps: int = 100
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    epochs: float = 3.0
    max_steps: int = -1  # > 0: stop after this many optimizer steps (overrides epochs)
    effective_batch: int = 128  # = micro_batch x gradient accumulation x world size
    micro_batch: int = 4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self):
        at_least(self, 1, "effective_batch", "micro_batch")
        at_least(self, 0, "warmup_steps", "weight_decay", "max_grad_norm")
        for name in ("lr", "epochs"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"must be > 0, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise FieldError("max_steps", f"must be > 0, or -1 to train optim.epochs, got {self.max_steps}")


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: int = 200
    keep_last: int = 2
    resume: Literal["auto", "never"] = "auto"

    def __post_init__(self):
        at_least(self, 1, "every_steps", "keep_last")


@dataclasses.dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = seed_field(42)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    deepspeed: str | None = "configs/deepspeed/zero2.json"
    merge: bool = False  # also write the merged model (base + adapter) in the base dtype
    logging_steps: int = 10
    peak_tflops: float | None = ranged(None, above=0.0)  # per device, for MFU; None: from the GPU's name

    def __post_init__(self):
        at_least(self, 1, "logging_steps")

    def stage_name(self) -> str:
        subset = self.data.subset if self.data.path is None else Path(self.data.path).stem
        return f"{self.model.name}__{subset}"


# ---- data --------------------------------------------------------------------------------

def data_path(cfg: TrainConfig) -> Path:
    if cfg.data.path:
        return Path(cfg.data.path)
    path = Path(cfg.run_dir) / "subsets" / cfg.data.subset / "data.jsonl"
    if not path.exists():
        available = sorted(p.name for p in (Path(cfg.run_dir) / "subsets").glob("*") if p.is_dir())
        raise ConfigError(f"data.subset: no subset '{cfg.data.subset}' in {path.parent.parent}"
                          + (f" (have: {', '.join(available)})" if available else
                             " (run `bioinstruct subsets` first, or set data.path=FILE)"))
    return path


# ---- inputs and checkpoints ------------------------------------------------------------

def train_inputs(cfg: TrainConfig) -> dict:
    """What a training run consumes, by content: the base model's fingerprint, the records'
    sha256, the DeepSpeed config file's sha256."""
    ds = None
    if cfg.deepspeed is not None:
        ds = path_identity(source_path(cfg.deepspeed))
    return {"model": model_fingerprint(cfg.model.path), "data": path_identity(data_path(cfg)), "deepspeed": ds}


def check_checkpoint(cfg: TrainConfig, inputs: dict, stage_dir: Path) -> None:
    """A resume continues a checkpoint only when it was made with the same result-affecting
    config and inputs: a changed lr, schedule, step count, LoRA shape, seed or data is refused,
    naming the keys (a changed LoRA shape would otherwise fail with a size mismatch)."""
    if cfg.checkpoint.resume != "auto" or not complete_checkpoints(stage_dir / "checkpoints"):
        return
    newest = complete_checkpoints(stage_dir / "checkpoints")[-1]
    recorded = read_json(newest / RUN_CONFIG) if (newest / RUN_CONFIG).exists() else None
    if recorded is None:
        return  # made before checkpoints recorded their config: the stage manifest decides
    changes = differences(recorded, cfg, inputs, IDENTITY_KEYS + NEUTRAL_KEYS)
    if changes:
        raise ConfigError(f"{newest} was made with another config or inputs ("
                          + "; ".join(changes) + "): rerun with them to resume, or --force to start clean")


# ---- the recipe --------------------------------------------------------------------------

def check_target_modules(cfg: TrainConfig) -> None:
    """Every name in lora.target_modules is a layer of the model, found on a weightless copy
    built from config.json (a second, even for 13B): peft adapts the names that match and
    skips the others without a word, so one typo gave an adapter with fewer layers. And
    lora.r is within the adapted layers' dimensions (a rank above them trains, but is no
    low-rank adapter and only costs memory)."""
    import difflib

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.model.path))
    names = [name for name, module in model.named_modules() if not list(module.children())]
    for target in cfg.lora.target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            layers = sorted({name.rsplit(".", 1)[-1] for name in names})
            close = difflib.get_close_matches(target, layers, n=1)
            hint = f" (closest: '{close[0]}')" if close else ""
            raise ConfigError(f"lora.target_modules: '{target}' is no layer of {cfg.model.path}{hint}; "
                              f"its layers: {', '.join(layers)}")
    shapes = {name.rsplit(".", 1)[-1]: (m.in_features, m.out_features) for name, m in model.named_modules()
              if hasattr(m, "in_features") and any(name == t or name.endswith("." + t) for t in cfg.lora.target_modules)}
    smallest = min(shapes.items(), key=lambda kv: min(kv[1]))
    if cfg.lora.r > min(smallest[1]):
        raise ConfigError(f"key 'lora.r' must be within 1..{min(smallest[1])} for {cfg.model.path} "
                          f"(its {smallest[0]} layers are {smallest[1][0]}x{smallest[1][1]}), got {cfg.lora.r}")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:  # LLaMA ships none; alpaca-lora pads with <unk> (id 0)
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, dtype):
    """The base model for training, its KV cache off: training never reads one, and while one
    exists transformers 5 skips the mask it derives from packed position_ids (only without
    past_key_values), so packed examples would silently attend to each other."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    model.config.use_cache = False
    return model


def train(cfg: TrainConfig, stage_dir: Path, records: list[dict], inputs: dict | None = None,
          fresh: bool = False) -> dict:
    """Train into ``stage_dir``, resuming from its newest complete checkpoint unless ``fresh``
    (--force: every rank starts at step 1, whenever rank 0 sets the old folder aside)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    quiet_known_warnings()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    gpu = torch.cuda.is_available()
    precision, ds, amp = mixed_precision(cfg, world_size, warn=rank == 0)
    grad_accum = gradient_accumulation(cfg.optim, world_size)
    if ds is not None and not gpu:
        skip_shm_comm_build()

    tokenizer = load_tokenizer(cfg.model.path)
    examples, dropped = tokenize(records, tokenizer, cfg.data, cfg.prompt.format)
    if not examples:
        raise ConfigError(f"data.max_length={cfg.data.max_length}: no example keeps any of its response")
    rows = pack(examples, cfg.data.max_length) if cfg.data.packing else examples

    dtype = precision.torch_dtype
    model = load_model(cfg.model, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    set_seed(cfg.seed)  # LoRA's A matrices are drawn here, before the Trainer seeds anything
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need a grad input
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                             lora_dropout=cfg.lora.dropout,
                                             target_modules=list(cfg.lora.target_modules)))

    checkpoints = stage_dir / "checkpoints"
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(stage_dir / "runs")  # not under checkpoints/, rotated away
    resume = None
    if cfg.checkpoint.resume == "auto" and not fresh and complete_checkpoints(checkpoints):
        resume = str(complete_checkpoints(checkpoints)[-1])
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=cfg.optim.micro_batch,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=cfg.optim.epochs,
        max_steps=cfg.optim.max_steps,
        learning_rate=cfg.optim.lr,
        warmup_steps=cfg.optim.warmup_steps,
        lr_scheduler_type=cfg.optim.scheduler,
        weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.optim.max_grad_norm,
        optim="adamw_torch",
        **amp,
        use_cpu=not gpu,  # without it accelerate takes every CPU rank for rank 0 of 1
        deepspeed=ds,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.checkpoint.every_steps,
        save_total_limit=None,  # rotation is the Checkpoints callback's, after the COMPLETE mark
        report_to=["tensorboard"],
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # In a log file (Slurm) tqdm's redraws are a storm of carriage returns; the Trainer's
        # one line per logging step ({'loss': ...}) is the progress there.
        disable_tqdm=rank != 0 or not sys.stderr.isatty(),
    )
    if resume and rank == 0:
        drop_steps_after(stage_dir / "metrics.jsonl", int(Path(resume).name.split("-")[1]))
    preemption, marker, metrics = trainer_callbacks(cfg, stage_dir, n_params, world_size, inputs)
    trainer_class = packed_trainer() if cfg.data.packing else Trainer
    collate = collator(tokenizer.pad_token_id, cfg.data.packing, cfg.model.attn_implementation)
    trainer = trainer_class(model=model, args=args, train_dataset=rows, data_collator=collate,
                            callbacks=[preemption, marker, metrics])
    if rank == 0 and resume:
        print(f"resuming from {resume}", file=sys.stderr)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise OutOfMemory(out_of_memory_advice(cfg, trainer.state.global_step + 1, e)) from None
    if preemption.stopped:
        raise Preempted(f"signalled at step {trainer.state.global_step}: complete checkpoint saved, "
                        f"exiting with {REQUEUE_EXIT} to be requeued")
    trainer.save_model(str(stage_dir / "adapter"))
    if rank == 0:
        tokenizer.save_pretrained(stage_dir / "adapter")
        record_format(stage_dir / "adapter", cfg.prompt.format)
        if cfg.merge:
            merge(cfg.model.path, stage_dir / "adapter", stage_dir / "merged", dtype)
    return {"examples": len(examples), "rows": len(rows), "dropped_prompt_too_long": dropped,
            "steps": trainer.state.global_step, "world_size": world_size, "gradient_accumulation": grad_accum,
            "dtype": precision.dtype,
            "train_loss": mean_loss(stage_dir / "metrics.jsonl") if rank == 0 else None,
            "parameters": n_params, "trainable_parameters": sum(p.numel() for p in model.parameters()
                                                                 if p.requires_grad)}


def mixed_precision(cfg: TrainConfig, world_size: int, warn: bool = True) -> tuple:
    """(the resolved precision, the DeepSpeed config for it, the Trainer's bf16 / fp16 flags):
    one decision for the weights' dtype, the Trainer and DeepSpeed's bf16 / fp16 sections.
    fp16 trains with a dynamic loss scale (torch.amp's GradScaler, or DeepSpeed's under ZeRO);
    the LoRA weights, the only trained ones, stay float32 (peft's autocast_adapter_dtype)."""
    precision = resolve_dtype(cfg.model.dtype, warn=warn)
    amp = {"bf16": precision.dtype == "bfloat16", "fp16": precision.loss_scaling}
    return precision, deepspeed_config(cfg, world_size, precision.dtype), amp


def out_of_memory_advice(cfg: TrainConfig, step: int, error: BaseException) -> str:
    """One line: where memory ran out, and the three settings that lower it, with their values."""
    off = "" if cfg.model.gradient_checkpointing else ", or set model.gradient_checkpointing=true"
    return (f"out of memory at step {step} ({one_line(error)[:200]}): lower optim.micro_batch (now "
            f"{cfg.optim.micro_batch}; gradient accumulation keeps optim.effective_batch) or data.max_length "
            f"(now {cfg.data.max_length}){off}, and rerun with --force (the run starts over with them)")


def merge(base: str, adapter: Path, out: Path, dtype) -> None:
    """Base + adapter as one model. Reloaded from disk rather than taken from the trainer:
    under ZeRO-3 the in-memory weights are partitioned across ranks."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)


class Preempted(StageStopped):
    """Stopped by SIGUSR2/SIGTERM after a complete checkpoint: run the same command again."""


def output_dir(cfg: TrainConfig) -> Path:
    """RUN_DIR/train/<model>__<subset>: this run's folder (adapter, checkpoints, manifest)."""
    return Path(cfg.run_dir) / "train" / cfg.stage_name()


def run(cfg: TrainConfig, *, force: bool = False) -> dict:
    from ..modeling.distributed import setup_environment

    added = setup_environment()
    try:
        return _run(cfg, force)
    finally:
        # A caller that goes on (the quickstart, a notebook) must not hand this run's rank and
        # port to its later child processes: the port stays held by this process's group.
        for key in added:
            os.environ.pop(key, None)


def _run(cfg: TrainConfig, force: bool) -> dict:
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    # Everything that can be wrong with the inputs fails here, before a model is loaded.
    gradient_accumulation(cfg.optim, world_size)
    deepspeed_config(cfg, world_size, resolve_dtype(cfg.model.dtype, warn=False).dtype)
    records = read_records(data_path(cfg))
    check_model(cfg.model.path, "model.path")
    check_target_modules(cfg)
    stage_dir = output_dir(cfg)
    check_writable(stage_dir, "run_dir")
    inputs, ignore = train_inputs(cfg), IDENTITY_KEYS + NEUTRAL_KEYS
    if not force and not is_complete(stage_dir):
        check_checkpoint(cfg, inputs, stage_dir)
    if int(os.environ.get("RANK", 0)) != 0:
        # Only rank 0 keeps the manifest; the others make the same skip decision, then train.
        return (check_resumable(stage_dir, "train", cfg, force=force, inputs=inputs, ignore=ignore)
                or {"summary": train(cfg, stage_dir, records, inputs, fresh=force)})
    return run_stage(stage_dir, "train", cfg, lambda d: train(cfg, d, records, inputs, fresh=force), force=force,
                     inputs=inputs, ignore=ignore)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="start N ranks on this machine (CPU tests, one-GPU-per-rank boxes); "
                             "under srun or torchrun leave it at 1")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "RANK" not in os.environ:
        from ..modeling.distributed import spawn

        argv = ["train", *(["--config", args.config] if args.config else []), *args.overrides,
                *(["--force"] if args.force else [])]
        return spawn(args.nproc, argv)
    catch_signals()
    cfg = config_from_args(TrainConfig, args)
    try:
        manifest = run(cfg, force=args.force)
    except Preempted as e:
        end_process_group()  # every rank stopped at the same step, its checkpoint saved
        print(f"bioinstruct train: {e}", file=sys.stderr)
        return REQUEUE_EXIT
    end_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        s = manifest["summary"]
        packed = f" in {s['rows']} packed rows" if cfg.data.packing else ""
        loss = "n/a" if s["train_loss"] is None else f"{s['train_loss']:.4f}"
        dropped = s.get("dropped_prompt_too_long")
        dropped = f", {dropped} dropped (prompt over data.max_length={cfg.data.max_length})" if dropped else ""
        print(f"trained {s['steps']} steps on {s['examples']} examples{packed}{dropped} (loss {loss}) -> "
              f"{output_dir(cfg) / 'adapter'}")
    return 0


TINY_TRAIN = SOURCE_TREE / "configs" / "train" / "tiny" / "lora.yaml"
SMOLLM2_TRAIN = SOURCE_TREE / "configs" / "train" / "smollm2" / "135m_lora.yaml"


def _quickstart(q) -> TrainConfig | list[TrainConfig]:
    # LoRA on the tiny model over subset 'all'; the quickstart starts its ranks as srun would.
    # The real-model quickstart trains SmolLM2 on each size-N subset and on all (Figure 3's points).
    if not q.settings.real:
        return load_config(TrainConfig, TINY_TRAIN, [f"run_dir={q.run_dir}", f"model.path={q.model}"])
    return [load_config(TrainConfig, SMOLLM2_TRAIN, [f"run_dir={q.run_dir}", f"model.path={q.model}",
                                                     f"data.subset={subset}"])
            for subset in [f"size-{n}" for n in q.settings.sizes()] + ["all"]]


STAGE = Stage(
    "train", "LoRA instruction tuning with DeepSpeed (one model x one subset)", __name__,
    config=TrainConfig, run=run, outputs=lambda c: [output_dir(c)], distributed=True, preempted=(Preempted,),
    task_name=lambda c: c.stage_name(), identity=lambda c, _: (train_inputs(c), IDENTITY_KEYS + NEUTRAL_KEYS),
    quickstart=_quickstart,
    hub_models=("model.path",),
    resources={"gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 8, "mem_gb": 64, "time_limit_min": 24 * 60,
               "signal_delay_s": 300})  # a 13B ZeRO checkpoint takes minutes to write
