"""What the recipe hands the HF Trainer besides the model and data: callbacks that stop on
Slurm's warning signal with a complete checkpoint, mark checkpoints complete and keep the
newest, and write metrics.jsonl (with the helpers that trim and average it); and the filters
for warnings every run would print."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from ..runs.config import to_dict
from ..io.rows import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl

COMPLETE = "COMPLETE"
RUN_CONFIG = "bioinstruct_config.json"  # in each checkpoint: the resolved config and inputs it was made with

# Dense bf16 peak per GPU (FLOP/s) for MFU when training.peak_tflops is not set.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}
# Set by SIGUSR2 / SIGTERM from the moment `bioinstruct train` starts (see catch_signals).
SIGNALLED = threading.Event()


def catch_signals() -> None:
    """Remember Slurm's warning (or a SIGTERM) instead of dying of it: model loading takes
    minutes, and a process killed then leaves its manifest "running" and nothing saved."""
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: SIGNALLED.set())

def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints marked complete, oldest first; a torn one (killed while saving) is ignored."""
    found = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def trainer_callbacks(cfg, stage_dir: Path, n_params: int, world_size: int, inputs: dict | None = None):
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    rank = int(os.environ.get("RANK", 0))

    class Preemption(TrainerCallback):
        """Signals set a flag; ranks agree on it at each step end, then save and stop together
        (a ZeRO checkpoint needs every rank, so nothing is saved inside the handler)."""

        def __init__(self):
            self.stopped = False
            catch_signals()

        def on_step_end(self, args, state, control, **kwargs):
            flag = torch.tensor([1.0 if SIGNALLED.is_set() else 0.0])
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            # After the last step the run ends anyway: finishing beats a requeue that would
            # resume from a checkpoint at max_steps (the Trainer then trains one step more).
            if flag.item() > 0 and state.global_step < state.max_steps:
                self.stopped = True
                control.should_save = True
                control.should_training_stop = True
            return control

    class Checkpoints(TrainerCallback):
        """Mark a checkpoint complete once every rank has written its part, then keep the
        newest ``keep_last`` complete ones (never deleting before the new one is marked)."""

        def on_save(self, args, state, control, **kwargs):
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if rank == 0:
                folder = Path(args.output_dir)
                atomic_write_json(folder / f"checkpoint-{state.global_step}" / RUN_CONFIG,
                                  {"config": to_dict(cfg), "inputs": inputs})
                atomic_write_text(folder / f"checkpoint-{state.global_step}" / COMPLETE, f"{state.global_step}\n")
                for old in complete_checkpoints(folder)[:-cfg.checkpoint.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
            return control

    class Metrics(TrainerCallback):
        """metrics.jsonl on rank 0: loss, lr, grad norm, tokens/s and MFU per logging step;
        tokens are the attention_mask's real ones, packed or not, never padding."""

        def __init__(self):
            self.last = (time.perf_counter(), None)
            self.peak = peak_flops(cfg)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if rank != 0 or not logs or "loss" not in logs:
                return control
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            then, tokens_then = self.last
            self.last = (now, tokens)
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "loss": logs["loss"],
                   "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}
            if tokens_then is not None and now > then:
                per_device = (tokens - tokens_then) / (now - then) / world_size
                row["tokens_per_s_per_device"] = round(per_device, 1)
                if self.peak:  # LoRA: forward 2N + backward through activations 2N FLOPs per token
                    row["mfu"] = round(4 * n_params * per_device / self.peak, 4)
            with JsonlAppender(stage_dir / "metrics.jsonl") as out:
                out.write(row)
            return control

    return Preemption(), Checkpoints(), Metrics()


def peak_flops(cfg) -> float | None:
    import torch

    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def _not_accumulation_mismatch(record) -> bool:
    return "Gradient accumulation steps mismatch" not in record.getMessage()


def quiet_known_warnings() -> None:
    """Warnings every run would print that ask nothing of the user, so a Slurm log shows the
    ones that do. peft asks a deprecated transformers property; DeepSpeed's CPU all-gather
    calls a deprecated torch function; and transformers sets accelerate's accumulation to 1 on
    purpose (it accumulates itself), so accelerate reports a "mismatch" with the DeepSpeed
    config and takes DeepSpeed's value, which is ours (optim.effective_batch)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`torch.distributed.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)
    logging.getLogger("accelerate.accelerator").addFilter(_not_accumulation_mismatch)  # once, however often called
    if not sys.stderr.isatty():  # "Loading weights" bars: carriage returns in a log file
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def drop_steps_after(metrics: Path, step: int) -> None:
    """metrics.jsonl as it was at the checkpoint a resume starts from: the steps logged after
    it by the killed process are trained again, and would otherwise appear twice."""
    if not metrics.exists():
        return
    rows = read_jsonl(metrics, allow_torn_tail=True)
    kept = [row for row in rows if row["step"] <= step]
    if len(kept) != len(rows) or not metrics.read_bytes().endswith(b"\n"):
        atomic_write_text(metrics, "".join(json.dumps(row) + "\n" for row in kept))


def mean_loss(metrics: Path) -> float | None:
    """The mean training loss over every step, from metrics.jsonl (each logged loss stands for
    the steps since the one before). The Trainer's own figure covers only the steps this
    process ran, so a resumed run reported a wrong one (0.0 when nothing was left to do)."""
    if not metrics.exists():  # logging_steps beyond the last step
        return None
    by_step = {row["step"]: row["loss"] for row in read_jsonl(metrics)}  # a repeated step: the last counts
    total, previous = 0.0, 0
    for step in sorted(by_step):
        total, previous = total + by_step[step] * (step - previous), step
    return total / previous if previous else None
