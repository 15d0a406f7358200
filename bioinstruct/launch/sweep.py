"""A sweep file and its plan: every task of every stage, its resolved config, its output
folders and whether it is complete, before anything is submitted (``bioinstruct launch``'s
first half; :mod:`.submit` submits the plan).

A sweep has a name, a run directory and stages; each stage has a kind (a stage of
bioinstruct.stages.pipeline.KINDS), the stages it runs after, a config file of that kind
(`config`), overrides for every task (`set`), a grid (one task per point) and its own
resources and container over the sweep's `defaults` (per kind, or `all`).
"""

from __future__ import annotations

import dataclasses
import graphlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, TextIO

from ..runs.config import at_least, load_config
from ..errors import ConfigError, StageConflict
from ..llm import LLMConfig
from ..paths import SOURCE_TREE, source_path
from ..stages.pipeline import KINDS
from .executors import Container, Job, Resources
from .hub import is_hub_id
from .jobs import done as task_done


# Built-in resources: BASE under every kind, then the kind's own (its Stage.resources; a sweep's
# `defaults` and each stage's `resources` go on top).
BASE = Resources(nodes=1, gpus_per_node=0, tasks_per_node=1, cpus_per_task=2, time_limit_min=60,
                 array_parallelism=32, signal_delay_s=120, max_requeues=20, sbatch={})
KIND_RESOURCES = {name: Resources(**stage.resources) for name, stage in KINDS.items()}


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
    # The most jobs of this sweep in the queue at once (an array task counts one), for a site's
    # MaxSubmitJobs; launch --resume submits the rest once some have ended. None: no cap.
    max_jobs: int | None = None
    # Where `launch` keeps the snapshots of models named by hub id (launch/hub.py): a folder the
    # compute nodes also see. None: huggingface_hub's cache ($HF_HUB_CACHE, $HF_HOME/hub).
    hub_cache: str | None = None
    defaults: dict[str, StageDefaults] = dataclasses.field(default_factory=dict)  # per kind, or "all"
    stages: dict[str, StageSpec] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        at_least(self, 1, "max_jobs")


@dataclasses.dataclass
class Task:
    index: int
    label: str
    config: str | None  # the kind's config file the overrides apply to
    overrides: list[str]  # key=value
    cfg: Any  # the resolved config
    outputs: list[Path]  # folders whose manifests mark the task complete
    done: bool  # complete with this config: skipped
    # (name, all overrides) of the CPU step after this task's job (Stage.cpu_step), or None
    then: tuple[str, list[str]] | None = None

    @property
    def slug(self) -> str:
        label = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", self.label).strip("-")
        return f"{self.index:03d}" + (f"-{label}" if label else "")


@dataclasses.dataclass
class PlannedStage:
    """A stage of the sweep (its own name; `kind` names the registry's Stage it runs) with its tasks."""
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
    stages: list[PlannedStage]  # in dependency order

    @property
    def dir(self) -> Path:
        return self.run_dir / "sweeps" / self.sweep.name

    def task_files(self, stage: PlannedStage, task: Task) -> tuple[Path, Path]:
        base = self.dir / stage.name / task.slug
        return Path(f"{base}.yaml"), Path(f"{base}.attempts.jsonl")

    def job(self, stage: PlannedStage, tasks: list[Task], after: list[str]) -> Job:
        calls = [(stage.kind, str(self.task_files(stage, t)[0]), str(self.task_files(stage, t)[1])) for t in tasks]
        # No GPU job talks to an API (Stage.cpu_step moves the calls to a CPU job): none gets a key.
        keys = sorted({LLMConfig.api_key_env, *(k for t in tasks for k in api_key_names(t.cfg))}) \
            if stage.resources.gpus_per_node else []
        return Job(name=f"{self.sweep.name}-{stage.name}", folder=self.dir / stage.name / "logs", calls=calls,
                   resources=stage.resources, container=stage.container, binds=[str(self.run_dir)], after=after,
                   unset=keys)


def api_key_names(cfg: Any) -> list[str]:
    """The variables that hold API keys for a config: every LLMConfig's api_key_env in it."""
    if isinstance(cfg, LLMConfig):
        return [cfg.api_key_env]
    if dataclasses.is_dataclass(cfg):
        return [k for f in dataclasses.fields(cfg) for k in api_key_names(getattr(cfg, f.name))]
    return []


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
    return str(source_path(path).resolve())


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


def _dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _tasks(name: str, spec: StageSpec, names: dict[str, str], where: str, models=None) -> list[Task]:
    """A stage's tasks: one per grid point, each config resolved and checked for completion.
    ``models`` (hub.PinnedModels) turns hub ids into pinned snapshot folders."""
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
            pinned = [_override(key, models.snapshot(value)) for key in kind.hub_models
                      if models and is_hub_id(value := _dotted(cfg, key))]
            step = kind.cpu_step(cfg) if kind.cpu_step else None
            overrides += pinned
            then = (step[0], overrides + step[2]) if step else None
            if pinned or step:
                overrides += step[1] if step else []
                cfg = load_config(kind.config, task_config, overrides)
            label = kind.task_name(cfg) if kind.task_name else label
            outputs = [p.resolve() for p in kind.outputs(cfg)]
            done = all(task_done(kind, cfg, o) for o in outputs)
        except (ConfigError, StageConflict) as e:  # a conflict: complete, but made with another config
            raise type(e)(f"{where}, task {index} ({label}): {e}") from None
        tasks.append(Task(index, label, task_config, overrides, cfg, outputs, done,
                          then))
    return tasks


def _cpu_step(stage: PlannedStage, resources: Resources, where: str) -> PlannedStage | None:
    """The CPU job(s) after a stage whose tasks hand work on (Stage.cpu_step: evaluate's judge),
    one task per distinct config (the shards of one set share one), with the sweep's resources
    less any GPU, and the stage's container."""
    kind = KINDS[stage.kind]
    tasks: dict[tuple, Task] = {}
    for t in (t for t in stage.tasks if t.then):
        overrides = t.then[1]
        try:
            cfg = load_config(kind.config, t.config, overrides)
            outputs = [p.resolve() for p in kind.outputs(cfg)]
            done = all(task_done(kind, cfg, o) for o in outputs)
        except (ConfigError, StageConflict) as e:
            raise type(e)(f"{where}, {t.then[0]} after task {t.index} ({t.label}): {e}") from None
        tasks.setdefault(tuple(outputs), Task(len(tasks), t.label, t.config, overrides, cfg, outputs, done))
    if not tasks:
        return None
    name = next(t.then[0] for t in stage.tasks if t.then)
    return PlannedStage(f"{stage.name}-{name}", stage.kind, [stage.name], resources, stage.container,
                        list(tasks.values()))


def make_plan(sweep: Sweep, where: str, selected: list[str] | None = None, models=None) -> Plan:
    """Every task of every (selected) stage with its resolved config and whether it is done.
    Raises ConfigError (or StageConflict) for anything wrong, before a job exists."""
    run_dir = Path(sweep.run_dir).expanduser().resolve()
    names = {"run_dir": str(run_dir), "repo": str(SOURCE_TREE)}
    for key in sweep.defaults:
        if key != "all" and key not in KINDS:
            raise ConfigError(f"{where}: defaults.{key}: not a stage kind (or 'all')")
    everywhere = sweep.defaults.get("all", StageDefaults())
    stages, writers = [], {}
    steps: dict[str, str] = {}  # stage -> its CPU step, which the stage's dependents wait for too
    for name in _order(sweep, selected, where):
        spec = sweep.stages[name]
        here = f"{where}: stage '{name}'"
        if spec.kind not in KINDS:
            raise ConfigError(f"{here}: unknown kind '{spec.kind}' (kinds: {', '.join(KINDS)})")
        own = sweep.defaults.get(spec.kind, StageDefaults())
        resources = merge(BASE, KIND_RESOURCES[spec.kind], everywhere.resources, own.resources,
                          spec.resources)
        kind = KINDS[spec.kind]
        if not kind.distributed and resources.nodes * resources.tasks_per_node > 1:
            raise ConfigError(f"{here}: kind '{spec.kind}' runs as one process; nodes x tasks_per_node "
                              f"must be 1 (got {resources.nodes} x {resources.tasks_per_node})")
        container = merge(everywhere.container, own.container, spec.container)
        if container.image:
            container.image = _resolve_path(_fill(container.image, names))
        container.binds = [os.path.expandvars(_fill(b, names)) for b in container.binds or []]
        binds_cache = any(b.split(":")[1:2] == ["/cache"] for b in container.binds)
        container.cache = None if not container.image or binds_cache else \
            os.path.expandvars(_fill(container.cache or "{run_dir}/cache", names))
        tasks = _tasks(name, spec, names, here, models)
        for task in tasks:
            for output in task.outputs:
                if output in writers:
                    raise ConfigError(f"{here}: task {task.index} ({task.label}) writes to {output}, as does "
                                      f"{writers[output]}: give each task its own output")
                writers[output] = f"stage '{name}' task {task.index}"
        after = [a for a in spec.after if not selected or a in selected]
        stages.append(PlannedStage(name, spec.kind, after + [steps[a] for a in after if a in steps],
                                   resources, container, tasks))
        step = _cpu_step(stages[-1], merge(BASE, everywhere.resources, Resources(gpus_per_node=0)), here)
        if step:
            stages.append(step)
            steps[name] = step.name
    return Plan(sweep, run_dir, stages)


# ---- printing -----------------------------------------------------------------------------

def _resource_line(r: Resources) -> str:
    fields = ["partition", "account", "qos", "constraint", "nodes", "tasks_per_node", "gpus_per_node",
              "cpus_per_task", "mem_gb", "time_limit_min", "min_time_limit_min", "array_parallelism", "signal_delay_s", "max_requeues"]
    text = " ".join(f"{f}={getattr(r, f):g}" if isinstance(getattr(r, f), float) else f"{f}={getattr(r, f)}"
                    for f in fields if getattr(r, f) is not None)
    return text + "".join(f" --{k}={v}" for k, v in (r.sbatch or {}).items())


def no_account(why: str) -> str:
    """The line that says a sweep names no Slurm account, and why that matters here."""
    return (f"no Slurm account set, and {why}: defaults.all.resources.account=NAME "
            f"(sacctmgr show associations user=$USER lists yours)")


def print_plan(plan: Plan, executor, out: TextIO, source: str) -> None:
    """The dry run: stages, tasks, dependencies and, for Slurm, the exact sbatch scripts.
    Upstream job ids are unknown before submission: dependencies name the stage in <...>."""
    n = sum(len(s.tasks) for s in plan.stages)
    todo = sum(not t.done for s in plan.stages for t in s.tasks)
    print(f"sweep '{plan.sweep.name}' from {source}: {len(plan.stages)} stages, {n} tasks "
          f"({todo} to run, {n - todo} complete); run directory {plan.run_dir}; cluster {executor.name}", file=out)
    if executor.name == "slurm" and any(s.resources.account is None for s in plan.stages):
        print(f"note: {no_account('most sites require one')}", file=out)
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
        # Arrays larger than the site's MaxArraySize go as chunks; the script is the first one's.
        size = min(executor.max_array_size() or len(run), len(run))
        script = executor.script(plan.job(stage, run[:size], [f"<{a}>" for a in stage.after])) if run else None
        if script:
            chunks = -(-len(run) // size)
            shape = f"array of {len(run)}" if len(run) > 1 else "one job"
            if chunks > 1:
                shape += f", as {chunks} arrays of at most {size} (MaxArraySize); the first"
            print(f"  sbatch script ({shape}):", file=out)
            for line in script.rstrip("\n").splitlines():
                print(f"    | {line}".rstrip(), file=out)
