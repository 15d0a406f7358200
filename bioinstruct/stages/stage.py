"""The Stage record: everything the CLI, ``launch`` and ``quickstart`` need to know about
one stage. It imports no stage, so every stage module can declare its own record."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping


def _whole(cfg: Any) -> Any:
    return cfg


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # its folder in the run directory, its `launch` kind and its quickstart step
    summary: str  # its line in `bioinstruct --help`
    module: str  # the verb: its __doc__ is the verb's --help; add_arguments(parser), main(args)
    config: type  # the stage's config dataclass
    run: Callable[..., Any]  # run(cfg, *, force=False); a dict return is the stage's manifest
    # The folders whose manifest.json mark a task of this config complete, under the run dir.
    outputs: Callable[[Any], list[Path]]
    verb: str | None = None  # the CLI verb when not the name (make-tiny-model)
    recorded_as: str | None = None  # the stage name its manifests record, when not the name
    job: bool = True  # a `launch` kind (agreement needs people's labels: not a job)
    # Every rank of a multi-task job runs it (srun starts one per GPU); others run once.
    distributed: bool = False
    # Raised after a clean stop on SIGUSR2/SIGTERM (state saved): exit 75 and be requeued.
    preempted: tuple[type[BaseException], ...] = ()
    # A short task name from the config (else the sweep's grid labels name it).
    task_name: Callable[[Any], str] | None = None
    # The part of the config the stage's manifest records (and hashes), when not all of it.
    recorded: Callable[[Any], Any] = _whole
    # (inputs, keys compared through them) of an output folder, for stages that record their
    # inputs by content: a complete output made from other inputs is not done.
    identity: Callable[[Any, Path], tuple[dict, tuple[str, ...]]] | None = None
    # `launch`'s built-in resources for its jobs (bioinstruct.launch.executors.Resources fields).
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Config keys naming a model that may be a hub id: `launch` pins it to a snapshot's folder.
    hub_models: tuple[str, ...] = ()
    # Work a GPU job must not do (evaluate's judge: API calls from nodes that may have no network):
    # cpu_step(cfg) -> (the step's name, overrides for the stage's own task, overrides that make
    # the config of a CPU job of this kind run after the stage's jobs), or None. `launch`
    # submits one such job per distinct config.
    cpu_step: Callable[[Any], tuple[str, list[str], list[str]] | None] | None = None
    # The stage's config in `bioinstruct quickstart` from its QuickstartConfig (whose run_dir
    # is a Path there); None: the quickstart skips the step this time.
    quickstart: Callable[[Any], Any] | None = None

    @property
    def cli_verb(self) -> str:
        return self.verb or self.name

    @property
    def manifest_stage(self) -> str:
        return self.recorded_as or self.name
