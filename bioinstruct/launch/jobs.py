"""The one function every launched job runs, and when a task is done.

A kind is a stage of the registry (bioinstruct.stages.pipeline.KINDS): its config
dataclass, its ``run(cfg)`` and the folders whose manifests say the task is complete (the
run-directory contract).

:func:`run_task` is what a job executes, on every rank of a multi-task job: it loads one
task's config file (written by ``bioinstruct launch``), runs the stage and turns a clean stop
after Slurm's warning signal into exit status 75, which the host side of the batch script
(slurm/common.sh) answers with ``scontrol requeue``. The image the job runs in has no
scontrol, so nothing in here requeues anything.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ..runs.config import load_config
from ..io.rows import append_jsonl
from ..llm import BatchPending
from ..modeling.distributed import end_process_group
from ..runs.rundir import finished, is_complete, utc_now
from ..stages.pipeline import KINDS
from ..stages.stage import Stage
from ..stages.train import REQUEUE_EXIT  # 75: "state saved, run me again" (slurm/common.sh)
from .submitit_env import job_environment

# submitit's local executor restarts a job's tasks when one exits with this status.
LOCAL_REQUEUE_EXIT = 144


def done(kind: Stage, cfg: Any, output: Path) -> bool:
    """Whether ``output`` holds this task complete, made from the same config and inputs
    (StageConflict when made from others). Inputs are fingerprinted only for a complete output:
    a later stage's inputs may not exist yet when a sweep is planned."""
    if not is_complete(output):
        return False
    inputs, ignore = kind.identity(cfg, output) if kind.identity else (None, ())
    return finished(output, kind.manifest_stage, kind.recorded(cfg), inputs=inputs, ignore=ignore) is not None


class Interrupted(BaseException):
    """SIGUSR2 or SIGTERM reached a stage that does not handle them itself. A BaseException,
    so run_stage records the stage as interrupted (not failed) and nothing swallows it."""


def _rank() -> int:
    if "RANK" in os.environ:  # torchrun, spawn, or _local_ranks_environment
        return int(os.environ["RANK"])
    env = job_environment()
    return env.global_rank if env else 0


def _local_ranks_environment() -> None:
    """torch.distributed's variables for the tasks of submitit's local executor (under Slurm,
    bioinstruct.modeling.distributed derives them from SLURM_*). Every task of one job agrees on the
    port because it comes from the job id (the local controller's pid)."""
    env = job_environment()
    if env is None or env.cluster != "local" or "RANK" in os.environ or env.num_tasks == 1:
        return
    ntasks = str(env.num_tasks)
    os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=ntasks,
                      LOCAL_WORLD_SIZE=ntasks, MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(20000 + int(env.raw_job_id) % 20000))


def _job_record() -> dict:
    env = job_environment()
    return {"time": utc_now(), "host": socket.gethostname(), "job_id": env.raw_job_id if env else None,
            "array_job_id": env.array_job_id if env else None, "array_task_id": env.array_task_id if env else None,
            # Slurm's requeue count: submitit's environment does not carry it.
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}


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
    outcome, detail, clean = "failed", None, False
    try:
        cfg = load_config(spec.config, config)
        spec.run(cfg)
        outcome, clean = "complete", True
    except (Interrupted, *spec.preempted) as e:
        outcome, detail = "requeue", str(e)
        clean = isinstance(e, spec.preempted)  # every rank stopped at the same step
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
    if clean and spec.distributed and os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        end_process_group()  # the job's process ends after this task
    if outcome == "requeue":
        print(f"bioinstruct launch: {kind} stopped cleanly ({detail}); exiting to be requeued", file=sys.stderr)
        local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
        # SystemExit passes through submitit (it catches Exception only), so the process
        # exits with this status and no result file claims the task finished.
        raise SystemExit(LOCAL_REQUEUE_EXIT if local else REQUEUE_EXIT)
    return outcome
