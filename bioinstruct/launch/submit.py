"""Launch a sweep: the pipeline's stages as Slurm jobs and arrays (or local processes).

    bioinstruct launch launch/paper.yaml --dry-run            # jobs, arrays, dependencies, sbatch scripts
    bioinstruct launch launch/paper.yaml run_dir=/scratch/$USER/paper defaults.all.resources.account=lab
    bioinstruct launch launch/quickstart-local.yaml --cluster local   # no Slurm: processes, stage by stage
    bioinstruct status /scratch/$USER/paper                    # per task: pending, running, done, failed
    bioinstruct launch /scratch/$USER/paper --resume           # submit again what is not done

Input: a sweep YAML (launch/*.yaml) and key=value overrides of it. A sweep has a name, a run
directory and stages; each stage has a kind (KINDS), the stages it runs after, a config file
of that kind (`config`), overrides for every task (`set`), a grid (one task per point:
`{data.subset: [qa, ie]}`, a mapping of labels to several keys at once, or a list of such
blocks), and its own resources and container over the sweep's `defaults` (per kind, or
`all`). Strings may use {run_dir}, {repo} (this checkout) and {label} (the task's label).

What happens: every task's config is resolved and checked before anything is submitted.
A task whose output is complete with the same config is skipped; one that a queued or
running job of this run directory already produces is not submitted twice (dependents wait
for that job). The rest go to the executor: one job, or one array per stage (several when the stage
has more tasks than the site's MaxArraySize; `max_jobs` caps the sweep's jobs in the queue),
with afterok dependencies on the stages named in `after`; the local and debug executors run
stage after stage. Each submission is recorded before sbatch runs and once it has answered, so
`--resume` after a launch cut off anywhere adopts the job sbatch made instead of a second copy.
Models named by hub id are pinned first (hub.py): jobs get the snapshot's folder, offline. Work
a GPU job must not do runs in a CPU job after the stage (Stage.cpu_step): evaluate's judge=true
becomes stage <name>-judge, which merges and judges the shards. Jobs get Slurm's warning (--signal=B:USR2@signal_delay_s), save their state, exit 75
and are requeued from the batch script's host side; they resume where they stopped.

Output (RUN_DIR/sweeps/): <sweep>.json (per task: config file, output folder, job id, log
paths), <sweep>.yaml (the sweep as launched, for --resume), <sweep>/<stage>/ with each task's
config file, its attempts.jsonl (start and end of every run) and logs/ (sbatch scripts,
submitit's pickles, stdout and stderr per rank).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from ..runs.config import dump_config, load_config
from ..errors import UserError
from ..io.rows import atomic_write_json, atomic_write_text, read_json
from ..runs.rundir import config_hash, utc_now
from ..stages.pipeline import KINDS
from .executors import EXECUTORS, log_paths
from .hub import PinnedModels
from .jobs import done as task_done
from .status import manifest_path, print_status, read_manifests
from .sweep import Plan, Sweep, make_plan, no_account, print_plan

__doc__ = __doc__.replace("(KINDS)", f"({', '.join(KINDS)})")  # the registry's, in pipeline order


# ---- the sweep manifest -------------------------------------------------------------------

def _producers(run_dir: Path, executor) -> dict[str, dict]:
    """Outputs that a queued or running job of any sweep in this run directory produces:
    output folder -> that sweep's task entry (with its job id)."""
    entries = [t for m in read_manifests(run_dir).values() if m.get("cluster") == executor.name
               for s in m["stages"] for t in s["tasks"] if t.get("job_id")]
    live = executor.live([t["job_id"] for t in entries])
    return {o: t for t in entries if t["job_id"] in live for o in t["outputs"]}


# ---- launching ----------------------------------------------------------------------------

def _set_job(entry: dict, job_id: str | None, **fields: Any) -> None:
    """Point a task entry at another job; the one it pointed at goes to its history."""
    if entry["job_id"] and entry["job_id"] != job_id:
        entry["history"].append(entry["job_id"])
    entry.update(job_id=job_id, **fields)


def _adopt_unrecorded(manifest: dict, executor) -> None:
    """Tasks whose submission was recorded as begun but not as done (the launch was killed,
    or its terminal closed, between sbatch and the record): the job sbatch made, if it is in
    the queue, is theirs, so --resume waits for it instead of submitting a second copy.
    One submission is in flight at a time, so a stage has at most one such job."""
    started = [t for s in manifest.get("stages", []) for t in s["tasks"] if "submitting" in t]
    known = {i for s in manifest.get("stages", []) for t in s["tasks"] for i in [t["job_id"], *t["history"]] if i}
    for folder in dict.fromkeys(t["submitting"]["folder"] for t in started):
        found = executor.unrecorded(Path(folder), known)
        if len(found) > 1:
            raise UserError(f"jobs {', '.join(found)} write to {folder} but no launch recorded them: cancel "
                            f"those you do not want (scancel ID), then launch --resume again")
        for entry in (t for t in started if t["submitting"]["folder"] == folder):
            for base, array in found.items():
                job_id = f"{base}_{entry['submitting']['position']}" if array else base
                _set_job(entry, job_id, log=log_paths(Path(folder), job_id), submitted=entry["submitting"]["time"])
            del entry["submitting"]


def _queued_by(manifest: dict, launch_time: str) -> list[tuple[str, str]]:
    """(stage, base job id) of what this launch submitted."""
    return list(dict.fromkeys((s["name"], t["job_id"].split("_")[0]) for s in manifest["stages"]
                              for t in s["tasks"] if t.get("job_id") and t.get("submitted") == launch_time))


def launch(plan: Plan, executor, *, source: str, out: TextIO) -> dict:
    """Submit what is neither complete nor already being produced. The sweep manifest records
    each submission before sbatch runs and again once it has answered, so a launch cut at any
    point leaves a manifest that --resume completes without a second copy of any job."""
    for stage in plan.stages:
        if stage.container.image and not Path(stage.container.image).exists():
            raise UserError(f"stage '{stage.name}': container image {stage.container.image} not found "
                            f"(build it with containers/build.sh)")
        cache = stage.container.cache
        if cache:
            try:
                Path(cache).mkdir(parents=True, exist_ok=True)
            except OSError:
                pass
            if not os.access(cache, os.W_OK | os.X_OK):
                raise UserError(f"stage '{stage.name}': {cache} (bound at /cache, where the image keeps its caches) "
                                f"is not a writable folder: set container.cache, or bind one with "
                                f"container.binds [\"/scratch/you/cache:/cache\"]")
    path = manifest_path(plan.run_dir, plan.sweep.name)
    manifest = read_json(path) if path.exists() else {"sweep": plan.sweep.name, "launches": []}
    if manifest.get("cluster", executor.name) == executor.name:
        _adopt_unrecorded(manifest, executor)
        if path.exists():
            atomic_write_json(path, manifest)
    producers = _producers(plan.run_dir, executor)
    previous = {(s["name"], tuple(t["outputs"])): t for s in manifest.get("stages", []) for t in s["tasks"]}
    # Stages left out of this launch (--stages) keep their entries, so status still shows them.
    launched = {stage.name for stage in plan.stages}
    manifest.update(run_dir=str(plan.run_dir), cluster=executor.name,
                    stages=[s for s in manifest.get("stages", []) if s["name"] not in launched])
    now = utc_now()
    manifest["launches"].append({"time": now, "source": source})
    # The sweep as launched (overrides applied), for `launch RUN_DIR --resume`.
    atomic_write_text(plan.dir.with_suffix(".yaml"),
                      dump_config(dataclasses.replace(plan.sweep, run_dir=str(plan.run_dir), cluster=executor.name)))
    order = list(plan.sweep.stages)
    for stage in plan.stages:  # a CPU step (Stage.cpu_step) goes right after its stage
        if stage.name not in order:
            order.insert(order.index(stage.after[0]) + 1, stage.name)
    # The per-sweep job cap counts this sweep's jobs still in the queue (an array task is a job).
    live = {t["job_id"] for t in producers.values()}
    budget = None if plan.sweep.max_jobs is None else \
        plan.sweep.max_jobs - sum(t.get("job_id") in live for t in previous.values())
    max_array = executor.max_array_size()

    job_ids: dict[str, list[str]] = {}  # stage -> the jobs its dependents wait for
    failed: dict[str, str] = {}  # stage -> why its dependents cannot be submitted now
    for stage in plan.stages:
        kind = KINDS[stage.kind]
        entries, to_run, waiting_on = [], [], []
        blocked = {u: failed[u] for u in stage.after if u in failed}
        for task in stage.tasks:
            config, attempts = plan.task_files(stage, task)
            outputs = [str(o) for o in task.outputs]
            old = previous.get((stage.name, tuple(outputs)), {})
            entry = {"index": task.index, "label": task.label, "kind": stage.kind, "config": str(config),
                     "attempts": str(attempts), "outputs": outputs,
                     "config_hash": config_hash(kind.recorded(task.cfg)), "job_id": old.get("job_id"),
                     "log": old.get("log"), "submitted": old.get("submitted"), "history": old.get("history", [])}
            producer = next((producers[o] for o in outputs if o in producers), None)
            if task.done:  # keeps the job that made it, if this sweep ran it
                entry["at_launch"] = "complete"
            elif producer:  # this sweep's own job from before, or another sweep's
                _set_job(entry, producer["job_id"], log=producer["log"], attempts=producer["attempts"],
                         submitted=producer["submitted"], at_launch="queued")
                waiting_on.append(producer["job_id"])
            elif blocked:
                _set_job(entry, None, log=None, submitted=None, at_launch="not run: " + "; ".join(
                    f"{u} {why}" for u, why in blocked.items()))
            else:
                header = (f"# bioinstruct launch: sweep {plan.sweep.name}, stage {stage.name}, task {task.index} "
                          f"({task.label}), kind {stage.kind}\n")
                atomic_write_text(config, header + dump_config(task.cfg))
                to_run.append((task, entry))
            entries.append(entry)
        manifest["stages"].append({"name": stage.name, "kind": stage.kind, "after": stage.after,
                                   "log_dir": str(plan.dir / stage.name / "logs"), "tasks": entries})
        manifest["stages"].sort(key=lambda s: order.index(s["name"]) if s["name"] in order else len(order))
        after = [j for u in stage.after for j in job_ids.get(u, [])]
        # One array per chunk of at most MaxArraySize tasks (and what the job cap leaves).
        submitted, bases = [], []
        while len(submitted) < len(to_run) and (budget is None or budget > 0):
            size = min(max_array or len(to_run), len(to_run) if budget is None else budget)
            part = to_run[len(submitted):len(submitted) + size]
            job = plan.job(stage, [t for t, _ in part], after)
            for position, (_, entry) in enumerate(part):
                entry["submitting"] = {"folder": str(job.folder), "position": position, "time": now}
            atomic_write_json(path, manifest)
            try:
                ids = executor.submit(job)
            except UserError as e:
                for _, entry in part:
                    del entry["submitting"]
                atomic_write_json(path, manifest)
                queued = _queued_by(manifest, now)
                raise UserError(f"{e}. " + (
                    f"Already queued by this launch: {', '.join(f'{s} (job {j})' for s, j in queued)}; cancel "
                    f"them with `scancel {' '.join(j for _, j in queued)}`, or fix the cause and submit the "
                    f"rest with `bioinstruct launch {plan.run_dir} --resume`" if queued else "Nothing was queued"
                )) from None
            for (_, entry), job_id in zip(part, ids):
                del entry["submitting"]
                _set_job(entry, job_id, log=job.log_paths(job_id), submitted=now, at_launch="submitted")
            atomic_write_json(path, manifest)
            submitted += part
            # An array is one dependency (123 covers 123_0, 123_1, ...).
            bases += dict.fromkeys(i.split("_")[0] for i in ids)
            if budget is not None:
                budget -= len(part)
        for _, entry in to_run[len(submitted):]:
            entry["at_launch"] = f"not submitted: max_jobs={plan.sweep.max_jobs} reached"
        waiting_on += bases
        if to_run:
            print(f"{stage.name}: {len(submitted)} task(s) submitted"
                  + ("" if executor.blocking or not bases else
                     f" as job{'s' * (len(bases) > 1)} {', '.join(bases)}")
                  + (f"; {len(to_run) - len(submitted)} not (max_jobs={plan.sweep.max_jobs} jobs of this sweep "
                     f"queued at once): `bioinstruct launch {plan.run_dir} --resume` submits them once some have "
                     f"ended" if len(submitted) < len(to_run) else ""), file=out)
        job_ids[stage.name] = waiting_on
        atomic_write_json(path, manifest)
        if len(submitted) < len(to_run):
            failed[stage.name] = "is not all submitted (max_jobs)"
        elif executor.blocking and any(not task_done(kind, t.cfg, o) for t in stage.tasks for o in t.outputs):
            failed[stage.name] = "did not complete"
    return manifest


# ---- the verb -----------------------------------------------------------------------------

def _sweep_source(args: argparse.Namespace) -> tuple[Sweep, str]:
    target = Path(args.sweep)
    if target.is_dir():
        if not args.resume:
            raise UserError(f"{target} is a directory: give a sweep YAML, or --resume to relaunch "
                            f"the sweep recorded in this run directory")
        stored = sorted((target / "sweeps").glob("*.yaml"))
        if args.name:
            stored = [p for p in stored if p.stem == args.name]
        if len(stored) != 1:
            names = ", ".join(p.stem for p in sorted((target / "sweeps").glob("*.yaml"))) or "none"
            raise UserError(f"{target}: {'no sweep' if not stored else 'several sweeps'} to resume "
                            f"(recorded: {names}); choose one with --sweep NAME")
        return load_config(Sweep, stored[0], args.overrides), str(stored[0])
    return load_config(Sweep, target, args.overrides), str(target)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", metavar="SWEEP.yaml|RUN_DIR",
                        help="a sweep file (launch/*.yaml), or with --resume a run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the sweep, e.g. run_dir=/scratch/x defaults.all.resources.account=lab")
    parser.add_argument("--cluster", choices=sorted(EXECUTORS), help="where tasks run (default: the sweep's `cluster`)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the jobs, arrays, dependencies and sbatch scripts; submit nothing")
    parser.add_argument("--resume", action="store_true",
                        help="relaunch a sweep launched before (a run directory: the sweep recorded there): "
                             "only tasks neither complete nor queued are submitted")
    parser.add_argument("--stages", metavar="A,B", help="only these stages (their `after` outside the list is ignored)")
    parser.add_argument("--sweep", dest="name", metavar="NAME", help="with --resume RUN_DIR: which recorded sweep")


def main(args: argparse.Namespace) -> int:
    sweep, source = _sweep_source(args)
    executor = EXECUTORS[args.cluster or sweep.cluster]()
    selected = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    # Hub ids become pinned snapshots here, on the login node; a dry run shows them as named.
    models = None if args.dry_run else PinnedModels(
        Path(sweep.run_dir).expanduser().resolve() / "sweeps" / "hub" / "models.json", sweep.hub_cache)
    plan = make_plan(sweep, source, selected, models)
    if args.dry_run:
        print_plan(plan, executor, sys.stdout, source)
        return 0
    if args.resume and not manifest_path(plan.run_dir, sweep.name).exists():
        raise UserError(f"--resume: sweep '{sweep.name}' was never launched in {plan.run_dir}")
    enforced = executor.enforced_accounts()
    if enforced and any(s.resources.account is None for s in plan.stages):
        why = f"this site enforces them (AccountingStorageEnforce={enforced})"
        print(f"bioinstruct launch: warning: {no_account(why)}", file=sys.stderr)
    launch(plan, executor, source=source, out=sys.stdout)
    return print_status(plan.run_dir, executor, sweep.name, sys.stdout)
