"""Process-group environment from whatever started us: torchrun, srun, or ``--nproc``.

    srun --ntasks-per-node=4 --gpus-per-task=1 bioinstruct train --config ...   # one task per GPU
    torchrun --nproc_per_node=4 -m bioinstruct train --config ...                 # one node
    bioinstruct train --config ... --nproc 2                                      # CPU ranks (tests)
    bioinstruct train --config ...                                                # one process

torch.distributed reads RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Under
``srun`` none of them is set, so they are derived from Slurm's SLURM_PROCID, SLURM_LOCALID,
SLURM_NTASKS and the first host of SLURM_JOB_NODELIST; the port comes from the job id, so
every task of one job picks the same port and two jobs on one node do not collide. A process
that no launcher started is rank 0 of 1 on a free local port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list ("gpu[01-03,07],cpu5") as host names, in order."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            hosts += [f"{prefix}{n:0{len(lo)}d}" for n in range(int(lo), int(hi or lo) + 1)]
    return hosts


def slurm_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables a Slurm task implies (empty outside srun or when
    a launcher already set them)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    hosts = expand_nodelist(nodelist) or ["127.0.0.1"]
    job = int(env.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or env.get("SLURM_NTASKS"),
        "MASTER_ADDR": env.get("MASTER_ADDR", hosts[0]),
        "MASTER_PORT": env.get("MASTER_PORT", str(20000 + job % 20000)),
    }


def standalone_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """Rank 0 of 1 for a process no launcher started (an interactive GPU node, a laptop):
    without these DeepSpeed falls back to MPI discovery and fails asking for mpi4py."""
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_PROCID" in env:
        return {}
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}


def setup_environment() -> list[str]:
    """Fill in torch.distributed's variables from Slurm (or rank 0 of 1 without a launcher),
    and CPU defaults without a GPU. Returns the distributed variables it set."""
    added = slurm_environment() or standalone_environment()
    os.environ.update(added)
    if not _has_gpu():
        # DeepSpeed otherwise guesses its accelerator and warns on stdout; one OpenMP thread
        # per rank, or two ranks on two cores fight over them.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            import torch

            # OpenMP read the variable when torch was loaded (by _has_gpu, if not before):
            # apply it. Otherwise each rank runs as many threads as cores, and a loaded
            # machine's BLAS picks other thread counts, and reduction orders, step to step.
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return list(added)


def end_process_group() -> None:
    """Tear this rank's process group down before the interpreter does. Left to exit, gloo's
    threads are destroyed while still joinable, and a rank that finished its work can abort
    with "terminate called without an active exception" (status -6; pytorch/pytorch#190489).
    Call it where the process is about to end (an in-process caller keeps accelerate's state,
    which assumes the group lives on), and only after a clean end: while a peer may still wait
    in a collective, destroying can deadlock (pytorch/torchtitan#1342)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(nproc: int, argv: list[str]) -> int:
    """Run ``python -m bioinstruct <argv>`` as ``nproc`` ranks on this machine, as srun would:
    one process per rank, signals (SIGTERM, SIGUSR2, SIGINT) forwarded to every rank.
    Returns the first non-zero exit status, else 0."""
    port = str(_free_port())
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "bioinstruct", *argv], env=env))

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return next((c for c in codes if c), 0)
