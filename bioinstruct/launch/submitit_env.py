"""submitit, imported quietly, and its view of the job this process runs in."""

from __future__ import annotations

import os
import sys


def load_submitit():
    """submitit, imported without its import-time ``logging.config.dictConfig``, which closes
    every logging handler already in the process: a library must leave its caller's logging
    alone (under pytest it closed absl's handler and, with it, the captured stderr). Its
    warnings still reach stderr through logging's last-resort handler; its jobs, new
    processes, configure submitit's logging as usual. SUBMITIT_LOG_LEVEL=<level> is honoured."""
    if "submitit" not in sys.modules:
        previous = os.environ.get("SUBMITIT_LOG_LEVEL")
        os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
        try:
            import submitit  # noqa: F401
        finally:
            if previous is None:
                del os.environ["SUBMITIT_LOG_LEVEL"]
            else:
                os.environ["SUBMITIT_LOG_LEVEL"] = previous
        if previous and previous.upper() != "NOCONFIG":
            import logging

            logging.getLogger("submitit").setLevel(int(previous) if previous.isdigit() else previous.upper())
    return sys.modules["submitit"]


def job_environment():
    """submitit's JobEnvironment of this Slurm or local-executor job (ranks, job and array
    ids from the environment), None in a process neither started (the debug executor's
    in-process jobs included)."""
    try:
        env = load_submitit().JobEnvironment()
    except RuntimeError:  # no submitit job around this process
        return None
    return env if env.cluster in ("slurm", "local") else None
