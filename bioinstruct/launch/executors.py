"""The executors of ``bioinstruct launch``: submitit's slurm, local and debug executors behind
one small interface.

    executor = EXECUTORS["slurm"]()
    print(executor.script(job))          # the exact sbatch script, without submitting
    ids = executor.submit(job)           # one job id per task ("123_4" inside an array)
    executor.live(ids)                   # queued or running jobs, with restart counts
    executor.ended(ids)                  # the scheduler's final state of the others

A :class:`Job` is the tasks of one stage that run now: one Slurm job, or one array (submitit's
``executor.batch()``) when there are several, each task calling
:func:`bioinstruct.launch.jobs.run_task`. Slurm orders stages with ``afterok`` dependencies;
the local and debug executors have none, so their ``submit`` returns only when the tasks have
ended (``blocking``) and the launcher runs stages one after the other.

Every Slurm job runs its Python through ``bi_run`` (slurm/common.sh) on the host side of the
batch script: Slurm's warning signal goes to the batch shell (``--signal=B:USR2@...``), which
forwards it to srun and requeues the job with scontrol when the program exits 75. submitit's
own requeue runs scontrol inside the job, where a container has none, and decides between
timeout and preemption from the elapsed time; neither is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import io
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..paths import SOURCE_TREE
from ..runs.config import ranged
from .jobs import run_task
from .submitit_env import load_submitit as _submitit

COMMON_SH = SOURCE_TREE / "slurm" / "common.sh"


@dataclasses.dataclass
class Resources:
    """What one task of a stage gets. ``None`` inherits from the layer below (see launch/sweep.py);
    after merging, ``None`` leaves the option out (the partition's default)."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int | None = ranged(None, low=1)
    gpus_per_node: int | None = ranged(None, low=0)
    tasks_per_node: int | None = ranged(None, low=1)  # ranks per node: one per GPU for training
    cpus_per_task: int | None = ranged(None, low=1)
    mem_gb: float | None = ranged(None, above=0.0)  # per node
    time_limit_min: int | None = ranged(None, low=1)  # sbatch --time
    # sbatch --time-min: Slurm may lower the limit down to this to start the job sooner in a
    # backfill hole. Cheap here: a job at its limit saves, requeues and resumes exactly.
    min_time_limit_min: int | None = ranged(None, low=1)
    array_parallelism: int | None = ranged(None, low=1)  # array tasks running at once
    signal_delay_s: int | None = ranged(None, low=0)  # USR2 this long before the time limit (save and requeue)
    max_requeues: int | None = ranged(None, low=0)  # restarts of one job before it is left stopped
    sbatch: dict[str, str] | None = None  # any other sbatch option, e.g. {exclude: node7}
    time_min: int | None = ranged(None, low=1)  # deprecated: the time limit, now time_limit_min

    def __post_init__(self):
        if self.time_min is not None:
            _deprecated("resources.time_min", "resources.time_limit_min (it is the time limit; sbatch's "
                        "--time-min is resources.min_time_limit_min)")
            if self.time_limit_min is None:
                self.time_limit_min = self.time_min
            self.time_min = None


@functools.cache
def _deprecated(old: str, new: str) -> None:
    """One line on stderr, once per process, however many layers of a sweep use ``old``."""
    print(f"bioinstruct: {old} is deprecated: write {new}", file=sys.stderr)


@dataclasses.dataclass
class Container:
    """The Apptainer image a stage's Python runs in; no image: the launching Python, on the host."""
    image: str | None = None
    binds: list[str] | None = None  # "src[:dst[:opts]]" besides the run directory, always bound
    nv: bool | None = None  # --nv (host GPU driver); None: when the stage asks for GPUs
    python: str | None = None  # inside the image; default python3
    # A writable host folder bound at /cache, where the images keep every cache (HF_HOME,
    # Triton, torch extensions); default RUN_DIR/cache, unless `binds` already bind /cache.
    cache: str | None = None


@dataclasses.dataclass
class Job:
    """The tasks of one stage that run now."""
    name: str  # the Slurm job name
    folder: Path  # submitit's folder: scripts, pickles, logs
    calls: list[tuple[str, str, str]]  # run_task(kind, config, attempts) per task
    resources: Resources  # merged: every field but the optional ones is set
    container: Container
    binds: list[str]  # always bound (the run directory)
    after: list[str]  # job ids to wait for (afterok)
    unset: list[str] = dataclasses.field(default_factory=list)  # variables the job must not inherit (API keys)

    @property
    def array(self) -> bool:
        # submitit submits a batch of one as a plain job, not an array of one.
        return len(self.calls) > 1

    def log_paths(self, job_id: str) -> dict[str, str]:
        return log_paths(self.folder, job_id)


def log_paths(folder: Path, job_id: str) -> dict[str, str]:
    """Rank 0's stdout and stderr of one task, as submitit names them (rank r: _r_)."""
    return {"out": str(Path(folder) / f"{job_id}_0_log.out"), "err": str(Path(folder) / f"{job_id}_0_log.err")}


@dataclasses.dataclass
class Live:
    """A job the scheduler still holds."""
    state: str  # PENDING, RUNNING, COMPLETING, ... (squeue's words)
    reason: str
    restarts: int
    raw_id: str  # the job's own id (array tasks have one besides 123_4)


def python_in_container(job: Job) -> list[str]:
    """The command that starts Python for a task: the host's, or the image's via apptainer.
    Never --cleanenv: it would drop SLURM_* (ranks, node list) that the stages read."""
    c = job.container
    if not c.image:
        return [sys.executable]
    nv = c.nv if c.nv is not None else bool(job.resources.gpus_per_node)
    binds = ",".join(dict.fromkeys([*job.binds, *(c.binds or []), *([f"{c.cache}:/cache"] if c.cache else [])]))
    return ["apptainer", "exec", *(["--nv"] if nv else []), "--bind", binds, c.image, c.python or "python3"]


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


class SlurmExecutor:
    name = "slurm"
    blocking = False

    def python(self, job: Job) -> str:
        """submitit's ``python``: what precedes ``-u -m submitit.core._submit FOLDER``. srun
        starts the ranks, so each gets SLURM_PROCID; bi_run keeps the host side in charge.
        Since Slurm 22.05 srun does not inherit --cpus-per-task from sbatch: passed again."""
        ids = "%A_%a" if job.array else "%j"
        srun = ["srun", "--unbuffered", "--open-mode=append", f"--cpus-per-task={job.resources.cpus_per_task}",
                f"--output={job.folder / f'{ids}_%t_log.out'}", f"--error={job.folder / f'{ids}_%t_log.err'}"]
        return shlex.join(["bi_run", *srun, *python_in_container(job)])

    def parameters(self, job: Job) -> dict:
        """submitit SlurmExecutor parameters (each becomes an #SBATCH line)."""
        r = job.resources
        params = {
            "job_name": job.name, "partition": r.partition, "account": r.account, "qos": r.qos,
            "constraint": r.constraint, "nodes": r.nodes, "ntasks_per_node": r.tasks_per_node,
            "cpus_per_task": r.cpus_per_task, "gpus_per_node": r.gpus_per_node or None,
            "mem": _mem(r.mem_gb) if r.mem_gb else None, "time": r.time_limit_min,
            "array_parallelism": r.array_parallelism,
            "dependency": "afterok:" + ":".join(job.after) if job.after else None,
            # Compute nodes may have no network: models come pinned (launch/hub.py), nothing is fetched.
            "setup": [f"source {shlex.quote(str(COMMON_SH))}", f"export BI_MAX_REQUEUES={r.max_requeues}",
                      "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1",
                      *([f"unset {' '.join(job.unset)}"] if job.unset else [])],
            # Python is started by our own srun line, inside bi_run (see python()).
            "use_srun": False,
            "additional_parameters": {
                # B: the batch shell gets the warning and forwards it (bi_run); submitit
                # would otherwise write USR2@delay, which skips the host side.
                "signal": f"B:USR2@{r.signal_delay_s}",
                "requeue": True,
                # A dependent of a failed task is cancelled, not left pending forever:
                # `bioinstruct launch --resume` submits it again.
                "kill-on-invalid-dep": "yes",
                "time-min": r.min_time_limit_min,
                **(r.sbatch or {}),
            },
        }
        params["additional_parameters"] = {k: v for k, v in params["additional_parameters"].items() if v is not None}
        params = {k: v for k, v in params.items() if v is not None}
        params["wckey"] = None  # submitit's default tags every job "submitit"
        return params

    def command(self, job: Job) -> str:
        # As submitit's SlurmExecutor._submitit_command_str writes it.
        return " ".join([self.python(job), "-u -m submitit.core._submit", shlex.quote(str(job.folder))])

    def script(self, job: Job) -> str:
        """The sbatch script ``submit`` would write, byte for byte. submitit has no public call
        for it: its private ``_make_sbatch_string`` is pinned by the lock, and the golden
        scripts in tests/test_launch.py fail if its output changes."""
        _make_sbatch_string = _submitit().slurm.slurm._make_sbatch_string
        return _make_sbatch_string(command=self.command(job), folder=job.folder,
                                   map_count=len(job.calls) if job.array else None, **self.parameters(job))

    def submit(self, job: Job) -> list[str]:
        submitit = _submitit()
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        job.folder.mkdir(parents=True, exist_ok=True)
        ex = submitit.SlurmExecutor(folder=job.folder, python=self.python(job))
        ex.update_parameters(**self.parameters(job))
        try:
            # submitit prints sbatch's refusal too; it goes into the one line below instead.
            with contextlib.redirect_stderr(io.StringIO()), ex.batch():
                jobs = [ex.submit(run_task, *call) for call in job.calls]
        except (FailedJobError, FailedSubmissionError) as e:  # sbatch said no: a partition, an account...
            raise UserError(f"sbatch refused job {job.name}: {'; '.join(str(e).strip().splitlines())}") from None
        return [j.job_id for j in jobs]

    def site_config(self, key: str) -> str | None:
        """A setting of the site's Slurm (``scontrol show config``), None where scontrol cannot
        tell (no Slurm here: a dry run on a laptop)."""
        if not hasattr(self, "_site_config"):
            try:
                out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
                lines = out.stdout.splitlines() if not out.returncode else []
            except (FileNotFoundError, subprocess.TimeoutExpired):
                lines = []
            self._site_config = dict(m.groups() for m in map(re.compile(r"^(\w+)\s*=\s*(.*?)\s*$").match, lines) if m)
        return self._site_config.get(key)

    def max_array_size(self) -> int | None:
        """The site's MaxArraySize (an array's task indices are below it), or None."""
        found = self.site_config("MaxArraySize")
        return int(found) if found and found.isdigit() else None

    def enforced_accounts(self) -> str | None:
        """AccountingStorageEnforce where it makes jobs need an account (associations or limits)."""
        value = self.site_config("AccountingStorageEnforce") or ""
        return value if re.search(r"associations|limits", value) else None

    def unrecorded(self, folder: Path, known: set[str]) -> dict[str, bool]:
        """Jobs in the queue that write their logs to ``folder`` and are none of ``known``
        (array tasks as 123_4): base job id -> whether it is an array. What a launch killed
        between sbatch and its record left behind."""
        out = subprocess.run(["squeue", "--noheader", "--array", f"--user={getpass.getuser()}",
                              "--Format=JobArrayID:|,STDOUT:"], capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise UserError(f"squeue failed: {out.stderr.strip()}")
        found: dict[str, bool] = {}
        for line in out.stdout.splitlines():
            job_id, _, stdout = (f.strip() for f in line.partition("|"))
            if Path(stdout).parent == Path(folder) and job_id not in known:
                found[job_id.split("_")[0]] = "_" in job_id
        return found

    def live(self, job_ids: list[str]) -> dict[str, Live]:
        """squeue's view of the given jobs (array tasks as 123_4), those it still holds."""
        bases = sorted({j.split("_")[0] for j in job_ids})
        if not bases:
            return {}
        try:
            out = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={','.join(bases)}",
                                  "--Format=JobArrayID:|,JobID:|,State:|,Reason:|,RestartCnt:"],
                                 capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise UserError("squeue not found: ask where Slurm's commands are (a login node)") from None
        if out.returncode:
            if "Invalid job id" in out.stderr:  # every one of them has left the queue
                return {}
            raise UserError(f"squeue failed: {out.stderr.strip()}")
        found = {}
        for line in out.stdout.splitlines():
            fields = [f.strip() for f in line.split("|")]
            if len(fields) == 5:
                array_id, raw_id, state, reason, restarts = fields
                found[array_id] = Live(state, reason, int(restarts or 0), raw_id)
        return {j: found[j] for j in job_ids if j in found}

    def ended(self, job_ids: list[str], raw_ids: dict[str, str]) -> dict[str, str]:
        """The final state (and exit code) the accounting holds for each job, where it has one.
        Without slurmdbd, sacct -c reads the job completion file (jobcomp/filetxt), which
        knows array tasks only by their own ids (``raw_ids``: 123_4 -> 130)."""
        if not job_ids:
            return {}
        fmt = ["--noheader", "--parsable2", "--format=JobID,State,ExitCode"]
        out = subprocess.run(["sacct", "-X", *fmt, f"--jobs={','.join(sorted({j.split('_')[0] for j in job_ids}))}"],
                             capture_output=True, text=True, timeout=60)
        by_raw = False
        if out.returncode:
            out = subprocess.run(["sacct", "-c", *fmt], capture_output=True, text=True, timeout=60)
            by_raw = True
            if out.returncode:
                return {}
        states = {}
        for line in out.stdout.splitlines():  # in time order: a later record of a job wins
            fields = line.split("|")
            if len(fields) == 3:
                states[fields[0]] = f"{fields[1]} (exit {fields[2]})"
        if by_raw:
            return {j: states[raw_ids.get(j, j)] for j in job_ids if raw_ids.get(j, j) in states}
        return {j: states[j] for j in job_ids if j in states}


class LocalExecutor:
    """Tasks as processes on this machine (submitit's local executor); ``submit`` waits."""
    name = "local"
    blocking = True

    def script(self, job: Job) -> None:
        return None

    def max_array_size(self) -> None:
        return None

    def enforced_accounts(self) -> None:
        return None

    def unrecorded(self, folder: Path, known: set[str]) -> dict[str, bool]:
        return {}  # submit waits for its jobs: a killed launch takes them with it

    def _executor(self, job: Job):
        submitit = _submitit()
        r = job.resources
        ex = submitit.LocalExecutor(folder=job.folder, python=shlex.join(python_in_container(job)))
        ex.update_parameters(timeout_min=r.time_limit_min, tasks_per_node=r.nodes * r.tasks_per_node,
                             gpus_per_node=r.gpus_per_node, signal_delay_s=r.signal_delay_s)
        return ex

    def submit(self, job: Job) -> list[str]:
        job.folder.mkdir(parents=True, exist_ok=True)
        ex, ids = self._executor(job), []
        step = max(1, job.resources.array_parallelism)
        for start in range(0, len(job.calls), step):
            with ex.batch():
                jobs = [ex.submit(run_task, *call) for call in job.calls[start:start + step]]
            while not all(j.done() for j in jobs):
                time.sleep(0.5)
            ids += [j.job_id for j in jobs]
        return ids

    def live(self, job_ids: list[str]) -> dict[str, Live]:
        # A local job id is the pid of submitit's controller process.
        return {j: Live("RUNNING", "", 0, j) for j in job_ids if j.isdigit() and _controller_alive(int(j))}

    def ended(self, job_ids: list[str], raw_ids: dict[str, str]) -> dict[str, str]:
        return {}


class DebugExecutor(LocalExecutor):
    """Tasks one after the other inside this process (submitit's debug executor: an error
    opens pdb). One rank per task, whatever tasks_per_node says."""
    name = "debug"

    def _executor(self, job: Job):
        return _submitit().DebugExecutor(folder=job.folder)

    def submit(self, job: Job) -> list[str]:
        job.folder.mkdir(parents=True, exist_ok=True)
        ex = self._executor(job)
        with ex.batch():
            jobs = [ex.submit(run_task, *call) for call in job.calls]
        for j in jobs:
            j.result()
        return [j.job_id for j in jobs]

    def live(self, job_ids: list[str]) -> dict[str, Live]:
        return {}


def _controller_alive(pid: int) -> bool:
    """Whether pid is still submitit's local controller (pids are reused by other programs)."""
    try:
        return b"submitit.local._local" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


EXECUTORS = {"slurm": SlurmExecutor, "local": LocalExecutor, "debug": DebugExecutor}
