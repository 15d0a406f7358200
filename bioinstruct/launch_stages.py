"""Stage kinds a sweep can name, and the one function every launched job runs.

A kind is a config dataclass, the stage's ``run(cfg)`` and the folders whose manifests say
the task is complete (the run-directory contract). A new stage plugs into sweeps by adding
one entry to :data:`KINDS`.

:func:`run_task` is what a job executes, on every rank of a multi-task job: it loads one
task's config file (written by ``bioinstruct launch``), runs the stage and turns a clean stop
after Slurm's warning signal into exit status 75, which the host side of the batch script
(slurm/common.sh) answers with ``scontrol requeue``. The image the job runs in has no
scontrol, so nothing in here requeues anything.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from . import classify, decontaminate, evaluate, generate, report, subsets, train
from . import filter as filter_stage
from .config import load_config
from .io import append_jsonl
from .llm import BatchPending
from .rundir import utc_now
from .tiny_model import TinyModelConfig, make_tiny_model

REQUEUE_EXIT = train.REQUEUE_EXIT  # 75: "state saved, run me again" (slurm/common.sh)
# submitit's local executor restarts a job's tasks when one exits with this status.
LOCAL_REQUEUE_EXIT = 144


@dataclasses.dataclass
class TinyModelJob:
    """make-tiny-model as a stage: where to write the model, and its config."""
    out: str = "runs/default/tiny-model"
    model: TinyModelConfig = dataclasses.field(default_factory=TinyModelConfig)


@dataclasses.dataclass(frozen=True)
class StageKind:
    config: type  # the stage's config dataclass
    run: Callable[[Any], dict]  # run(cfg) -> the stage's manifest
    outputs: Callable[[Any], list[Path]]  # the folders whose manifest.json mark the task complete
    stage: str  # the stage name its manifest records
    # Every rank of a multi-task job runs it (srun starts one per GPU); other kinds run once.
    distributed: bool = False
    # Raised after a clean stop on SIGUSR2/SIGTERM (state saved): exit 75 and be requeued.
    preempted: tuple[type[BaseException], ...] = ()
    # A short task name from the config (else the grid labels name it).
    name: Callable[[Any], str] | None = None
    # The part of the config the stage's manifest records (and hashes), when not all of it.
    recorded: Callable[[Any], Any] = lambda cfg: cfg
    # (inputs, keys compared through them) of an output folder, for stages that record their
    # inputs by content: a complete output made from other inputs is not done.
    identity: Callable[[Any, Path], tuple[dict, tuple[str, ...]]] | None = None


def done(kind: StageKind, cfg: Any, output: Path) -> bool:
    """Whether ``output`` holds this task complete, made from the same config and inputs
    (StageConflict when made from others). Inputs are fingerprinted only for a complete output:
    a later stage's inputs may not exist yet when a sweep is planned."""
    from .rundir import finished, is_complete

    if not is_complete(output):
        return False
    inputs, ignore = kind.identity(cfg, output) if kind.identity else (None, ())
    return finished(output, kind.stage, kind.recorded(cfg), inputs=inputs, ignore=ignore) is not None


def _evaluate_shards(cfg: evaluate.EvaluateConfig) -> list[Path]:
    i, n = evaluate.shard_of(cfg.shard)
    return [Path(cfg.out) / label / task / f"shard-{i}-of-{n}" for label, _ in cfg.models() for task in cfg.tasks]


KINDS: dict[str, StageKind] = {
    "tiny-model": StageKind(config=TinyModelJob, run=lambda c: make_tiny_model(c.out, c.model),
                            outputs=lambda c: [Path(c.out)], stage="make-tiny-model", recorded=lambda c: c.model),
    "generate": StageKind(config=generate.GenerateConfig, run=generate.run,
                          outputs=lambda c: [Path(c.run_dir) / "generate"], stage="generate",
                          identity=lambda c, _: generate.identity(c)),
    "filter": StageKind(config=filter_stage.FilterConfig, run=filter_stage.run,
                        outputs=lambda c: [Path(c.output).parent], stage="filter",
                        identity=lambda c, _: filter_stage.identity(c)),
    "decontaminate": StageKind(config=decontaminate.DecontaminateConfig, run=decontaminate.run,
                               outputs=lambda c: [Path(c.run_dir) / "decontaminate"], stage="decontaminate"),
    "classify": StageKind(config=classify.ClassifyConfig, run=classify.run,
                          outputs=lambda c: [Path(c.run_dir) / "classify"], stage="classify",
                          identity=lambda c, _: classify.identity(c)),
    "subsets": StageKind(config=subsets.SubsetsConfig, run=subsets.run,
                         outputs=lambda c: [Path(c.run_dir) / "subsets"], stage="subsets",
                         identity=lambda c, _: subsets.identity(c)),
    "train": StageKind(config=train.TrainConfig, run=train.run,
                       outputs=lambda c: [Path(c.run_dir) / "train" / c.stage_name()], stage="train",
                       distributed=True, preempted=(train.Preempted,), name=lambda c: c.stage_name(),
                       identity=lambda c, _: (train.train_inputs(c), train.IDENTITY_KEYS + train.NEUTRAL_KEYS)),
    # One task scores one shard of each of its models x tasks; the shard that completes a
    # task's set writes its results.json, so no merge job is needed.
    "evaluate": StageKind(config=evaluate.EvaluateConfig, run=evaluate.run, outputs=_evaluate_shards,
                          stage="evaluate", identity=evaluate.shard_identity),
    # A sweep skips a complete report with the same config even when results were added
    # since; `bioinstruct report` redoes it (it compares its inputs), in seconds on a CPU.
    "report": StageKind(config=report.ReportConfig, run=report.run, outputs=lambda c: [c.out_dir()],
                        stage="report", recorded=lambda c: dataclasses.replace(c, out=str(c.out_dir()))),
}


class Interrupted(BaseException):
    """SIGUSR2 or SIGTERM reached a stage that does not handle them itself. A BaseException,
    so run_stage records the stage as interrupted (not failed) and nothing swallows it."""


def _rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _local_ranks_environment() -> None:
    """torch.distributed's variables for the tasks of submitit's local executor (under Slurm,
    bioinstruct.distributed derives them from SLURM_*). Every task of one job agrees on the
    port because it comes from the job id (the local controller's pid)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or "RANK" in os.environ:
        return
    ntasks = os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")
    if ntasks == "1":
        return
    os.environ.update(RANK=os.environ["SUBMITIT_LOCAL_GLOBALID"], LOCAL_RANK=os.environ["SUBMITIT_LOCAL_LOCALID"],
                      WORLD_SIZE=ntasks, LOCAL_WORLD_SIZE=ntasks, MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(20000 + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % 20000))


def _job_record() -> dict:
    env = os.environ
    return {"time": utc_now(), "host": socket.gethostname(),
            "job_id": env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID"),
            "array_job_id": env.get("SLURM_ARRAY_JOB_ID"), "array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
            "restart": int(env.get("SLURM_RESTART_COUNT", "0"))}


def run_task(kind: str, config: str, attempts: str) -> str:
    """Run one task of a sweep: the stage ``kind`` with the config file ``config``.

    Rank 0 appends a start and an end record to ``attempts`` (JSONL) for ``bioinstruct
    status``. Exits 75 (144 under submitit's local executor, which restarts on that) when
    the stage stopped cleanly on a signal, so the job is requeued and resumes.
    """
    spec = KINDS[kind]
    rank = _rank()
    # submitit's own handlers guess timeout vs preemption from the elapsed time and requeue
    # with scontrol from in here; replace them: every stop is a clean stop and a requeue,
    # decided on the host side. A stage that handles the signals itself (train's checkpoint
    # at the next step) installs its own handlers over these.
    raised = False

    def interrupt(signum, _frame):
        nonlocal raised
        if not raised:  # once: a second signal must not break the clean-up after the first
            raised = True
            raise Interrupted(f"signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGUSR2, signal.SIGTERM)}
    _local_ranks_environment()
    if rank == 0:
        append_jsonl(attempts, [{"event": "start", **_job_record()}])
    outcome, detail = "failed", None
    try:
        cfg = load_config(spec.config, config)
        spec.run(cfg)
        outcome = "complete"
    except (Interrupted, *spec.preempted) as e:
        outcome, detail = "requeue", str(e)
    except BatchPending as e:
        # Not a failure, but not done either: the job ends (its dependents with it) and
        # `bioinstruct launch RUN_DIR --resume` collects the batch; status shows `waiting`.
        outcome, detail = "waiting", str(e)
        raise
    except BaseException as e:
        detail = f"{type(e).__name__}: {e}"
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if rank == 0:
            append_jsonl(attempts, [{"event": "end", "time": utc_now(), "outcome": outcome,
                                     **({"detail": detail} if detail else {})}])
    if outcome == "requeue":
        print(f"bioinstruct launch: {kind} stopped cleanly ({detail}); exiting to be requeued", file=sys.stderr)
        local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
        # SystemExit passes through submitit (it catches Exception only), so the process
        # exits with this status and no result file claims the task finished.
        raise SystemExit(LOCAL_REQUEUE_EXIT if local else REQUEUE_EXIT)
    return outcome
