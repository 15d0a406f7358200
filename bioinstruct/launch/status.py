"""The state of every task of the sweeps launched into a run directory.

    bioinstruct status runs/paper
    bioinstruct status runs/paper --sweep ablation-categories --json

Reads: RUN_DIR/sweeps/<sweep>.json (written by `bioinstruct launch`), each task's output
manifests and attempts file, and the scheduler: squeue for queued and running jobs, sacct
for ended ones.
Prints, per task: done; pending; running; requeued (preempted or at its time limit, state
saved, waiting to run again); waiting (generate's Batch API batch is at the provider, no job
runs: `bioinstruct launch RUN_DIR --resume` collects it); failed (with the stage's error, or Slurm's final state such
as TIMEOUT or OUT_OF_MEMORY); not submitted (its upstream did not complete). Also the job
id, restarts of that job and the log of rank 0 (other ranks: _1_, _2_, ... in the name).
Exit status 1 when a task failed (`bioinstruct launch RUN_DIR --resume` submits it again),
else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from ..errors import UserError
from ..io.rows import read_json, read_jsonl
from .executors import EXECUTORS
from ..runs.rundir import read_manifest
from ..reporting.tables import format_table

PENDING = {"PENDING", "CONFIGURING"}
REQUEUED = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}


def manifest_path(run_dir: Path, sweep: str) -> Path:
    return run_dir / "sweeps" / f"{sweep}.json"


def read_manifests(run_dir: Path) -> dict[str, dict]:
    """Every sweep manifest of a run directory, by sweep name."""
    return {p.stem: read_json(p) for p in sorted((run_dir / "sweeps").glob("*.json"))}


def _job_key(start: dict) -> str | None:
    """The id `bioinstruct launch` recorded for the job a start record comes from."""
    if start.get("array_job_id") and start.get("array_task_id"):
        return f"{start['array_job_id']}_{start['array_task_id']}"
    return start.get("job_id")


def task_rows(manifest: dict, executor) -> list[dict]:
    """One row per task: stage, index, label, state, detail, job id, restarts, log."""
    tasks = [(s["name"], t) for s in manifest["stages"] for t in s["tasks"]]
    ids = [t["job_id"] for _, t in tasks if t["job_id"]]
    live = executor.live(ids)
    attempts = {t["attempts"]: read_jsonl(t["attempts"], allow_torn_tail=True) if Path(t["attempts"]).exists()
                else [] for _, t in tasks}
    raw_ids = {}  # 123_4 -> the array task's own job id, for sacct without slurmdbd
    for records in attempts.values():
        for r in records:
            if r["event"] == "start" and r.get("array_job_id"):
                raw_ids[_job_key(r)] = r["job_id"]
    ended = executor.ended([i for i in ids if i not in live], raw_ids)

    rows = []
    for stage, t in tasks:
        job_id = t["job_id"]
        records = attempts[t["attempts"]]
        mine = [r for r in records if r["event"] == "start" and _job_key(r) == job_id]
        restarts = max([r.get("restart", 0) for r in mine] + [live[job_id].restarts if job_id in live else 0])
        outputs = [read_manifest(o) or {} for o in t["outputs"]]
        error = next((m["error"] for m in outputs if m.get("error") and m.get("status") != "complete"), None)
        detail = ""
        if all(m.get("status") == "complete" and m.get("config_hash") == t["config_hash"] for m in outputs):
            state = "done"
        elif job_id in live:
            job = live[job_id]
            if job.state in REQUEUED or (job.state in PENDING and restarts):
                state = "requeued"
            elif job.state in PENDING:
                state = "pending"
            else:
                state = "running" if job.state in {"RUNNING", "COMPLETING"} else job.state.lower()
            detail = job.reason if job.reason not in ("None", "") else ""
        elif not job_id:
            state, detail = "not submitted", t.get("at_launch", "")
        else:
            state = "failed"
            last_end = next((r for r in reversed(records) if r["event"] == "end"), None)
            if any(m.get("status") == "waiting" for m in outputs):
                state = "waiting"  # a Batch API batch at the provider; --resume collects it
                detail = error or ""
            elif error:
                detail = error
            elif last_end and last_end.get("outcome") == "requeue":
                detail = "stopped to be requeued, but no longer queued (see the log)"
            elif last_end and last_end.get("detail"):
                detail = last_end["detail"]
            else:
                detail = ended.get(job_id, "ended without completing")
        rows.append({"stage": stage, "index": t["index"], "label": t["label"], "state": state,
                     "detail": detail.splitlines()[-1] if detail else "", "job_id": job_id,
                     "restarts": restarts, "log": (t.get("log") or {}).get("err")})
    return rows


def print_status(run_dir: Path, executor, sweep: str | None, out: TextIO, as_json: bool = False) -> int:
    """Print the task table of each sweep (or one); 1 when a task failed, else 0. The
    executor asks the scheduler; None: the one each sweep was launched with."""
    manifests = read_manifests(run_dir)
    if sweep:
        if sweep not in manifests:
            raise UserError(f"{run_dir}: no sweep '{sweep}' (launched: {', '.join(manifests) or 'none'})")
        manifests = {sweep: manifests[sweep]}
    if not manifests:
        raise UserError(f"{run_dir}: no sweep launched here (no {run_dir / 'sweeps'}/*.json)")
    failed = False
    report = {}
    for name, manifest in manifests.items():
        ex = executor or EXECUTORS[manifest["cluster"]]()
        rows = task_rows(manifest, ex)
        failed |= any(r["state"] == "failed" for r in rows)
        report[name] = rows
        if as_json:
            continue
        counts = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        print(f"sweep '{name}' in {run_dir} ({manifest['cluster']}): {len(rows)} tasks, "
              + ", ".join(f"{n} {s}" for s, n in counts.items()), file=out)
        print(format_table(["stage", "task", "state", "job", "restarts", "log (rank 0 stderr)", "detail"],
                           [(r["stage"], f"{r['index']} {r['label']}", r["state"], r["job_id"] or "-",
                             r["restarts"], r["log"] or "-", r["detail"]) for r in rows]), file=out)
    if as_json:
        json.dump(report, out, indent=2)
        out.write("\n")
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of a launched sweep")
    parser.add_argument("--sweep", metavar="NAME", help="only this sweep (default: every sweep launched there)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def main(args: argparse.Namespace) -> int:
    return print_status(Path(args.run_dir).resolve(), None, args.sweep, sys.stdout, args.json)
