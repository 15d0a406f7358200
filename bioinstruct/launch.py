"""Launch a sweep: the pipeline's stages as Slurm jobs and arrays (or local processes).

    bioinstruct launch launch/paper.yaml --dry-run            # jobs, arrays, dependencies, sbatch scripts
    bioinstruct launch launch/paper.yaml run_dir=/scratch/$USER/paper defaults.all.resources.account=lab
    bioinstruct launch launch/quickstart-local.yaml --cluster local   # no Slurm: processes, stage by stage
    bioinstruct status /scratch/$USER/paper                    # per task: pending, running, done, failed
    bioinstruct launch /scratch/$USER/paper --resume           # submit again what is not done

Input: a sweep YAML (launch/*.yaml) and key=value overrides of it. A sweep has a name, a run
directory and stages; each stage has a kind (tiny-model, generate, filter, classify, subsets,
train, evaluate, report), the stages it runs after, a config file
of that kind (`config`), overrides for every task (`set`), a grid (one task per point:
`{data.subset: [qa, ie]}`, a mapping of labels to several keys at once, or a list of such
blocks), and its own resources and container over the sweep's `defaults` (per kind, or
`all`). Strings may use {run_dir}, {repo} (this checkout) and {label} (the task's label).

What happens: every task's config is resolved and checked before anything is submitted.
A task whose output is complete with the same config is skipped; one that a queued or
running job of this run directory already produces is not submitted twice (dependents wait
for that job). The rest go to the executor: one job, or one array per stage, with afterok
dependencies on the stages named in `after`; the local and debug executors run stage after
stage. Jobs get Slurm's warning (--signal=B:USR2@signal_delay_s), save their state, exit 75
and are requeued from the batch script's host side; they resume where they stopped.

Output (RUN_DIR/sweeps/): <sweep>.json (per task: config file, output folder, job id, log
paths), <sweep>.yaml (the sweep as launched, for --resume), <sweep>/<stage>/ with each task's
config file, its attempts.jsonl (start and end of every run) and logs/ (sbatch scripts,
submitit's pickles, stdout and stderr per rank).
"""

from __future__ import annotations

import argparse
import dataclasses
import graphlib
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, TextIO

from .config import dump_config, load_config
from .errors import ConfigError, StageConflict, UserError
from .io import atomic_write_json, atomic_write_text, read_json
from .launch_executors import EXECUTORS, Container, Job, Resources
from .launch_stages import KINDS, done as task_done
from .launch_status import manifest_path, print_status, read_manifests
from .rundir import config_hash, utc_now

REPO = Path(__file__).resolve().parent.parent

# Built-in resources: BASE under every kind, then the kind's own (a sweep's `defaults`
# and each stage's `resources` go on top).
BASE = Resources(nodes=1, gpus_per_node=0, tasks_per_node=1, cpus_per_task=2, time_min=60,
                 array_parallelism=32, signal_delay_s=120, max_requeues=20, sbatch={})
KIND_RESOURCES = {
    "tiny-model": Resources(time_min=30),
    "generate": Resources(cpus_per_task=4, mem_gb=8, time_min=48 * 60),  # API-bound: hours of waiting
    "filter": Resources(cpus_per_task=4, mem_gb=16, time_min=12 * 60),
    "decontaminate": Resources(cpus_per_task=2, mem_gb=16, time_min=2 * 60),  # minutes for 1M instructions
    "classify": Resources(cpus_per_task=4, mem_gb=8, time_min=24 * 60),
    "subsets": Resources(mem_gb=8, time_min=60),
    "train": Resources(gpus_per_node=1, tasks_per_node=1, cpus_per_task=8, mem_gb=64, time_min=24 * 60,
                       signal_delay_s=300),  # a 13B ZeRO checkpoint takes minutes to write
    "evaluate": Resources(gpus_per_node=1, cpus_per_task=8, mem_gb=64, time_min=8 * 60, signal_delay_s=300),
    "report": Resources(mem_gb=8, time_min=60),
}


@dataclasses.dataclass
class StageDefaults:
    resources: Resources = dataclasses.field(default_factory=Resources)
    container: Container = dataclasses.field(default_factory=Container)


@dataclasses.dataclass
class StageSpec:
    kind: str
    after: list[str] = dataclasses.field(default_factory=list)
    config: str | None = None  # a config file of this kind; tasks apply `set`, then their grid point
    set: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: Any = None  # {key: [values]}, {axis: {label: {key: value, ...}}}, or a list of such blocks
    resources: Resources = dataclasses.field(default_factory=Resources)
    container: Container = dataclasses.field(default_factory=Container)


@dataclasses.dataclass
class Sweep:
    name: str = "sweep"
    run_dir: str = "runs/sweep"
    cluster: Literal["slurm", "local", "debug"] = "slurm"
    defaults: dict[str, StageDefaults] = dataclasses.field(default_factory=dict)  # per kind, or "all"
    stages: dict[str, StageSpec] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Task:
    index: int
    label: str
    config: str | None  # the kind's config file the overrides apply to
    overrides: list[str]  # key=value
    cfg: Any  # the resolved config
    outputs: list[Path]  # folders whose manifests mark the task complete
    done: bool  # complete with this config: skipped

    @property
    def slug(self) -> str:
        label = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", self.label).strip("-")
        return f"{self.index:03d}" + (f"-{label}" if label else "")


@dataclasses.dataclass
class Stage:
    name: str
    kind: str
    after: list[str]
    resources: Resources
    container: Container
    tasks: list[Task]


@dataclasses.dataclass
class Plan:
    sweep: Sweep
    run_dir: Path
    stages: list[Stage]  # in dependency order

    @property
    def dir(self) -> Path:
        return self.run_dir / "sweeps" / self.sweep.name

    def task_files(self, stage: Stage, task: Task) -> tuple[Path, Path]:
        base = self.dir / stage.name / task.slug
        return Path(f"{base}.yaml"), Path(f"{base}.attempts.jsonl")

    def job(self, stage: Stage, tasks: list[Task], after: list[str]) -> Job:
        calls = [(stage.kind, str(self.task_files(stage, t)[0]), str(self.task_files(stage, t)[1])) for t in tasks]
        return Job(name=f"{self.sweep.name}-{stage.name}", folder=self.dir / stage.name / "logs", calls=calls,
                   resources=stage.resources, container=stage.container, binds=[str(self.run_dir)], after=after)


# ---- the sweep file -----------------------------------------------------------------------

def merge(*layers: Any) -> Any:
    """Fields set (not None) in later layers win; dicts are merged, bind lists added up."""
    out = {}
    for layer in layers:
        for f in dataclasses.fields(layer):
            value = getattr(layer, f.name)
            if value is None:
                continue
            if isinstance(value, dict):
                value = {**(out.get(f.name) or {}), **value}
            elif isinstance(value, list):
                value = list(dict.fromkeys([*(out.get(f.name) or []), *value]))
            out[f.name] = value
    return type(layers[0])(**out)


def _fill(value: Any, names: dict[str, str]) -> Any:
    """{run_dir}, {repo} and {label} in every string of a value."""
    if isinstance(value, str):
        for key, text in names.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _label(value: Any) -> str:
    """A task label from a grid value, usable in a file name: a path (or a shard I/N)
    gives its last two parts, configs/train/llama2/7b_lora.yaml -> llama2-7b_lora."""
    text = str(value)
    if "/" in text:
        return "-".join(Path(text).with_suffix("").parts[-2:])
    return text


def expand_grid(grid: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The points of a grid as (label, {key: value}). A block maps each axis to a list of
    values for the key of that name, or to {label: {key: value, ...}} to set several keys at
    once (a model and its adapter); a block is the product of its axes, a list of blocks
    their concatenation."""
    if grid is None:
        return [("", {})]
    points = []
    for block in grid if isinstance(grid, list) else [grid]:
        if not isinstance(block, dict) or not block:
            raise ConfigError(f"{where}: grid: each block is a mapping of axes to values, got {block!r}")
        axes = []
        for axis, values in block.items():
            if isinstance(values, dict):
                if not all(isinstance(keys, dict) for keys in values.values()):
                    raise ConfigError(f"{where}: grid axis '{axis}': a mapping axis maps labels to "
                                      f"mappings of keys, e.g. {{llama2-7b: {{model.path: ...}}}}")
                axes.append([(str(label), dict(keys)) for label, keys in values.items()])
            elif isinstance(values, list):
                if not values:
                    raise ConfigError(f"{where}: grid axis '{axis}' has no values")
                axes.append([(_label(v), {axis: v}) for v in values])
            else:
                axes.append([("", {axis: values})])
        for combo in itertools.product(*axes):
            assignment: dict[str, Any] = {}
            for _, keys in combo:
                assignment.update(keys)
            points.append(("__".join(label for label, _ in combo if label), assignment))
    return points


def _override(key: str, value: Any) -> str:
    # JSON is YAML: parse_override reads back exactly this value ("true" stays a string).
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def _resolve_path(path: str) -> str:
    """A relative path from the current directory, else from this checkout (configs/...)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (REPO / p).exists():
        return str(p.resolve())
    return str(REPO / p)


def _order(sweep: Sweep, selected: list[str] | None, where: str) -> list[str]:
    """Stage names in dependency order, keeping the file's order where dependencies allow."""
    names = list(sweep.stages)
    for name, spec in sweep.stages.items():
        for up in spec.after:
            if up not in sweep.stages:
                raise ConfigError(f"{where}: stage '{name}' runs after '{up}', which is not a stage "
                                  f"(stages: {', '.join(names)})")
    for name in selected or []:
        if name not in sweep.stages:
            raise ConfigError(f"--stages: no stage '{name}' in {where} (stages: {', '.join(names)})")
    try:
        graphlib.TopologicalSorter({n: s.after for n, s in sweep.stages.items()}).prepare()
    except graphlib.CycleError as e:
        raise ConfigError(f"{where}: stages depend on each other in a cycle: {' -> '.join(e.args[1])}") from None
    order: list[str] = []
    while len(order) < len(names):
        order.append(next(n for n in names if n not in order and all(u in order for u in sweep.stages[n].after)))
    return [n for n in order if not selected or n in selected]


def _tasks(name: str, spec: StageSpec, names: dict[str, str], where: str) -> list[Task]:
    """A stage's tasks: one per grid point, each config resolved and checked for completion."""
    kind = KINDS[spec.kind]
    config = _resolve_path(_fill(spec.config, names)) if spec.config else None
    tasks = []
    for index, (label, point) in enumerate(expand_grid(spec.grid, where)):
        label = label or name
        point = _fill(point, {**names, "label": label})
        task_config = _resolve_path(point.pop("config")) if "config" in point else config
        settings = {**_flatten(_fill(spec.set, {**names, "label": label})), **_flatten(point)}
        if "run_dir" in {f.name for f in dataclasses.fields(kind.config)}:
            settings = {"run_dir": names["run_dir"], **settings}
        overrides = [_override(k, v) for k, v in settings.items()]
        try:
            cfg = load_config(kind.config, task_config, overrides)
            label = kind.name(cfg) if kind.name else label
            outputs = [p.resolve() for p in kind.outputs(cfg)]
            done = all(task_done(kind, cfg, o) for o in outputs)
        except (ConfigError, StageConflict) as e:  # a conflict: complete, but made with another config
            raise type(e)(f"{where}, task {index} ({label}): {e}") from None
        tasks.append(Task(index, label, task_config, overrides, cfg, outputs, done))
    return tasks


def make_plan(sweep: Sweep, where: str, selected: list[str] | None = None) -> Plan:
    """Every task of every (selected) stage with its resolved config and whether it is done.
    Raises ConfigError (or StageConflict) for anything wrong, before a job exists."""
    run_dir = Path(sweep.run_dir).expanduser().resolve()
    names = {"run_dir": str(run_dir), "repo": str(REPO)}
    for key in sweep.defaults:
        if key != "all" and key not in KINDS:
            raise ConfigError(f"{where}: defaults.{key}: not a stage kind (or 'all')")
    everywhere = sweep.defaults.get("all", StageDefaults())
    stages, writers = [], {}
    for name in _order(sweep, selected, where):
        spec = sweep.stages[name]
        here = f"{where}: stage '{name}'"
        if spec.kind not in KINDS:
            raise ConfigError(f"{here}: unknown kind '{spec.kind}' (kinds: {', '.join(KINDS)})")
        own = sweep.defaults.get(spec.kind, StageDefaults())
        resources = merge(BASE, KIND_RESOURCES.get(spec.kind, Resources()), everywhere.resources, own.resources,
                          spec.resources)
        kind = KINDS[spec.kind]
        if not kind.distributed and resources.nodes * resources.tasks_per_node > 1:
            raise ConfigError(f"{here}: kind '{spec.kind}' runs as one process; nodes x tasks_per_node "
                              f"must be 1 (got {resources.nodes} x {resources.tasks_per_node})")
        container = merge(everywhere.container, own.container, spec.container)
        if container.image:
            container.image = _resolve_path(_fill(container.image, names))
        container.binds = [os.path.expandvars(_fill(b, names)) for b in container.binds or []]
        tasks = _tasks(name, spec, names, here)
        for task in tasks:
            for output in task.outputs:
                if output in writers:
                    raise ConfigError(f"{here}: task {task.index} ({task.label}) writes to {output}, as does "
                                      f"{writers[output]}: give each task its own output")
                writers[output] = f"stage '{name}' task {task.index}"
        stages.append(Stage(name, spec.kind, [a for a in spec.after if not selected or a in selected],
                            resources, container, tasks))
    return Plan(sweep, run_dir, stages)


# ---- the sweep manifest -------------------------------------------------------------------

def _producers(run_dir: Path, executor) -> dict[str, dict]:
    """Outputs that a queued or running job of any sweep in this run directory produces:
    output folder -> that sweep's task entry (with its job id)."""
    entries = [t for m in read_manifests(run_dir).values() if m.get("cluster") == executor.name
               for s in m["stages"] for t in s["tasks"] if t.get("job_id")]
    live = executor.live([t["job_id"] for t in entries])
    return {o: t for t in entries if t["job_id"] in live for o in t["outputs"]}


# ---- printing -----------------------------------------------------------------------------

def _resource_line(r: Resources) -> str:
    fields = ["partition", "account", "qos", "constraint", "nodes", "tasks_per_node", "gpus_per_node",
              "cpus_per_task", "mem_gb", "time_min", "array_parallelism", "signal_delay_s", "max_requeues"]
    text = " ".join(f"{f}={getattr(r, f):g}" if isinstance(getattr(r, f), float) else f"{f}={getattr(r, f)}"
                    for f in fields if getattr(r, f) is not None)
    return text + "".join(f" --{k}={v}" for k, v in (r.sbatch or {}).items())


def print_plan(plan: Plan, executor, out: TextIO, source: str) -> None:
    """The dry run: stages, tasks, dependencies and, for Slurm, the exact sbatch scripts.
    Upstream job ids are unknown before submission: dependencies name the stage in <...>."""
    n = sum(len(s.tasks) for s in plan.stages)
    todo = sum(not t.done for s in plan.stages for t in s.tasks)
    print(f"sweep '{plan.sweep.name}' from {source}: {len(plan.stages)} stages, {n} tasks "
          f"({todo} to run, {n - todo} complete); run directory {plan.run_dir}; cluster {executor.name}", file=out)
    for stage in plan.stages:
        run = [t for t in stage.tasks if not t.done]
        print(f"\nstage {stage.name} (kind {stage.kind}): {len(stage.tasks)} task(s), "
              f"after: {', '.join(stage.after) or '-'}", file=out)
        print(f"  resources: {_resource_line(stage.resources)}", file=out)
        if stage.container.image:
            print(f"  container: {stage.container.image}", file=out)
        for t in stage.tasks:
            state = "complete: skipped" if t.done else "to run"
            config = plan.task_files(stage, t)[0]
            print(f"  [{t.index}] {t.label}: {state}" + (f" -> {', '.join(map(str, t.outputs))}"
                                                           if t.outputs else ""), file=out)
            settings = ([f"--config {t.config}"] if t.config else []) + t.overrides
            print(f"      {config}: {' '.join(settings) or '(defaults)'}", file=out)
        script = executor.script(plan.job(stage, run, [f"<{a}>" for a in stage.after])) if run else None
        if script:
            print(f"  sbatch script ({'array of ' + str(len(run)) if len(run) > 1 else 'one job'}):", file=out)
            for line in script.rstrip("\n").splitlines():
                print(f"    | {line}".rstrip(), file=out)


# ---- launching ----------------------------------------------------------------------------

def _set_job(entry: dict, job_id: str | None, **fields: Any) -> None:
    """Point a task entry at another job; the one it pointed at goes to its history."""
    if entry["job_id"] and entry["job_id"] != job_id:
        entry["history"].append(entry["job_id"])
    entry.update(job_id=job_id, **fields)


def launch(plan: Plan, executor, *, source: str, out: TextIO) -> dict:
    """Submit what is neither complete nor already being produced; write the sweep manifest
    after each stage (a launcher killed halfway leaves a manifest of what it submitted)."""
    for stage in plan.stages:
        if stage.container.image and not Path(stage.container.image).exists():
            raise UserError(f"stage '{stage.name}': container image {stage.container.image} not found "
                            f"(build it with containers/build.sh)")
    producers = _producers(plan.run_dir, executor)
    path = manifest_path(plan.run_dir, plan.sweep.name)
    manifest = read_json(path) if path.exists() else {"sweep": plan.sweep.name, "launches": []}
    previous = {(s["name"], tuple(t["outputs"])): t for s in manifest.get("stages", []) for t in s["tasks"]}
    # Stages left out of this launch (--stages) keep their entries, so status still shows them.
    launched = {stage.name for stage in plan.stages}
    manifest.update(run_dir=str(plan.run_dir), cluster=executor.name,
                    stages=[s for s in manifest.get("stages", []) if s["name"] not in launched])
    manifest["launches"].append({"time": utc_now(), "source": source})
    # The sweep as launched (overrides applied), for `launch RUN_DIR --resume`.
    atomic_write_text(plan.dir.with_suffix(".yaml"),
                      dump_config(dataclasses.replace(plan.sweep, run_dir=str(plan.run_dir), cluster=executor.name)))

    job_ids: dict[str, list[str]] = {}  # stage -> the jobs its dependents wait for
    failed: set[str] = set()  # stages with a task that did not complete (blocking executors)
    for stage in plan.stages:
        kind = KINDS[stage.kind]
        entries, to_run, waiting_on = [], [], []
        blocked = [u for u in stage.after if u in failed]
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
                _set_job(entry, None, log=None, submitted=None,
                         at_launch=f"not run: {', '.join(blocked)} did not complete")
            else:
                header = (f"# bioinstruct launch: sweep {plan.sweep.name}, stage {stage.name}, task {task.index} "
                          f"({task.label}), kind {stage.kind}\n")
                atomic_write_text(config, header + dump_config(task.cfg))
                to_run.append((task, entry))
            entries.append(entry)
        if to_run:
            job = plan.job(stage, [t for t, _ in to_run], [j for u in stage.after for j in job_ids.get(u, [])])
            ids = executor.submit(job)
            now = utc_now()
            for (task, entry), job_id in zip(to_run, ids):
                _set_job(entry, job_id, log=job.log_paths(job_id), submitted=now, at_launch="submitted")
            # An array is one dependency (123 covers 123_0, 123_1, ...).
            waiting_on += sorted({i.split("_")[0] for i in ids})
            print(f"{stage.name}: {len(ids)} task(s) submitted"
                  + ("" if executor.blocking else f" as job {ids[0].split('_')[0]}"), file=out)
        job_ids[stage.name] = waiting_on
        manifest["stages"].append({"name": stage.name, "kind": stage.kind, "after": stage.after,
                                   "log_dir": str(plan.dir / stage.name / "logs"), "tasks": entries})
        order = list(plan.sweep.stages)
        manifest["stages"].sort(key=lambda s: order.index(s["name"]) if s["name"] in order else len(order))
        atomic_write_json(path, manifest)
        if executor.blocking and any(not task_done(kind, t.cfg, o) for t in stage.tasks for o in t.outputs):
            failed.add(stage.name)
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
    plan = make_plan(sweep, source, selected)
    if args.dry_run:
        print_plan(plan, executor, sys.stdout, source)
        return 0
    if args.resume and not manifest_path(plan.run_dir, sweep.name).exists():
        raise UserError(f"--resume: sweep '{sweep.name}' was never launched in {plan.run_dir}")
    launch(plan, executor, source=source, out=sys.stdout)
    return print_status(plan.run_dir, executor, sweep.name, sys.stdout)
