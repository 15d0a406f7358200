"""The evaluation tasks, one folder per task as in lm-evaluation-harness: ``<name>/<name>.yaml``
and the loader module ``<name>/__init__.py``, over the shared reader :mod:`bioinstruct.tasks.reader`.

    task = load_task("medmcqa", {"cop_base": 0, "path": "/data/medmcqa/validation.jsonl"})
    examples = load_examples(task)        # [{"id", "context", "choices", "gold", ...}, ...]

A task YAML holds ``name``, ``kind`` (multiple_choice | generation | extraction),
``metrics``, a one-line ``description``, ``obtain`` (where and how to get the data), the
``loader`` (a function in the task's module, ``bioinstruct.tasks.<name>``) and ``data``: the
loader's options, which users override (keys must exist in the YAML; ``data.`` prefixes are
accepted); a loader module's ``OPTION_CHOICES`` lists the allowed values of enumerated
options. See :mod:`bioinstruct.tasks.reader` for what each kind of example holds.

Paths: every ``data`` option named ``path`` or ending in ``_path`` is a file or folder;
a relative one (the YAML defaults, and overrides alike) is taken under the data root:
``data.root`` if set, else ``$BIOINSTRUCT_DATA``, else ``data/`` in the working directory.
Put every data set under one root (``medqa/``, ``medmcqa/``, ``pubmedqa/``, ``bioasq/``,
``mednli/``, ``clinical_ie/``, ``mts_dialog/``, ``icliniq/``) and set
``BIOINSTRUCT_DATA`` once; ``load_task`` stores the resolved absolute paths in
``task.data`` so results record what was read.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, DataError
from ..io.rows import load_yaml, read_yaml
from .reader import MissingData

TASK_DIR = Path(__file__).parent
KINDS = ("multiple_choice", "generation", "extraction")
DATA_ROOT_ENV = "BIOINSTRUCT_DATA"
DEFAULT_DATA_ROOT = "data"


@dataclasses.dataclass
class Task:
    name: str
    kind: Literal["multiple_choice", "generation", "extraction"]
    metrics: list[str]
    description: str
    obtain: str
    data: dict[str, Any]
    loader: str


def task_names() -> list[str]:
    """Every registered task (a folder holding ``<name>.yaml``), sorted."""
    return sorted(p.parent.name for p in TASK_DIR.glob("*/*.yaml") if p.stem == p.parent.name)


def _loader_module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def _is_path_key(key: str) -> bool:
    return key == "path" or key.endswith("_path")


def data_root(data: dict[str, Any] | None = None) -> Path:
    """``data.root``, else ``$BIOINSTRUCT_DATA``, else ``data`` (absolute)."""
    root = (data or {}).get("root") or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(os.path.abspath(os.path.expanduser(str(root))))


def _resolve(value: Any, root: Path) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return [_resolve(v, root) for v in value]
    p = Path(os.path.expanduser(str(value)))
    return str(p if p.is_absolute() else root / p)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """An override as the CLI hands it (a string) in the type of the YAML default."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none", "~"):
        return None
    if isinstance(value, str) and default is not None and not isinstance(default, str):
        value = load_yaml(value) if value.strip() else None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"data.{key} expects true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool) and value is not None \
            and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"data.{key} expects an integer, got {value!r}")
    return value


def unknown_task(name: str) -> str:
    """What to say about a task name that is not in the registry: the closest one, and all."""
    names = task_names()
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown task '{name}'{hint} (tasks: {', '.join(names)})"


def load_task(name: str, overrides: dict[str, Any] | None = None) -> Task:
    """The task ``name`` with its ``data`` options overridden by ``overrides``.

    An unknown task or option raises ConfigError naming the closest valid one.
    """
    if name not in task_names():
        raise ConfigError(unknown_task(name))
    path = TASK_DIR / name / f"{name}.yaml"
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a task file must be a mapping")
    fields = {f.name for f in dataclasses.fields(Task)}
    unknown = set(raw) - fields
    missing = fields - set(raw)
    if unknown or missing:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if raw["name"] != name:
        raise ConfigError(f"{path}: name '{raw['name']}' does not match the file name")
    if raw["kind"] not in KINDS:
        raise ConfigError(f"{path}: kind must be one of {', '.join(KINDS)}, got {raw['kind']!r}")
    module = _loader_module(name)
    if not callable(getattr(module, str(raw["loader"]), None)):
        raise ConfigError(f"{path}: loader '{raw['loader']}' is not a function in {module.__name__}")

    data = dict(raw["data"] or {})
    data.setdefault("root", None)
    for key, value in (overrides or {}).items():
        key = key[len("data."):] if key.startswith("data.") else key
        if key not in data:
            close = difflib.get_close_matches(key, list(data), n=1, cutoff=0.5)
            hint = f" (closest: data.{close[0]})" if close else ""
            raise ConfigError(f"task {name}: unknown data option '{key}'{hint}; "
                              f"options: {', '.join(sorted(data))}")
        data[key] = _coerce(key, value, data[key])
    for key, allowed in getattr(module, "OPTION_CHOICES", {}).items():
        if key in data and str(data[key]) not in {str(a) for a in allowed}:
            raise ConfigError(f"task {name}: data.{key} must be one of "
                              f"{', '.join(str(a) for a in allowed)}, got {data[key]!r}")
    root = data_root(data)
    data["root"] = str(root)
    for key in data:
        if _is_path_key(key):
            data[key] = _resolve(data[key], root)
    return Task(name=name, kind=raw["kind"], metrics=list(raw["metrics"]),
                description=str(raw["description"]).strip(), obtain=" ".join(str(raw["obtain"]).split()),
                data=data, loader=str(raw["loader"]))


_REQUIRED = {
    "multiple_choice": {"context": str, "choices": list, "gold": int, "labels": list,
                        "option_texts": list, "instruction": str, "input": str},
    "generation": {"instruction": str, "input": str, "reference": str},
    "extraction": {"instruction": str, "input": str, "gold": list},
}


def _check(task: Task, examples: list[dict]) -> None:
    """The contract every loader keeps (a loader bug, not a data problem, if it fails)."""
    need = {"id": str, **_REQUIRED[task.kind]}
    for i, ex in enumerate(examples):
        for key, tp in need.items():
            if not isinstance(ex.get(key), tp) or (tp is int and isinstance(ex.get(key), bool)):
                raise AssertionError(f"task {task.name}: example {i} ({ex.get('id')!r}): "
                                     f"'{key}' should be {tp.__name__}")
        if task.kind == "multiple_choice":
            n = len(ex["choices"])
            if not (len(ex["labels"]) == len(ex["option_texts"]) == n and 0 <= ex["gold"] < n):
                raise AssertionError(f"task {task.name}: example {ex['id']!r}: choices, labels, "
                                     "option_texts and gold do not agree")


class TaskDataMissing(DataError):
    """A task's data file is not there (``path``); the message says how to obtain it."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def load_examples(task: Task) -> list[dict]:
    """The task's examples, in file order. A missing file raises TaskDataMissing (a
    DataError) saying where it was looked for and how to obtain it; a malformed record,
    DataError naming file:line (or file: record KEY)."""
    fn = getattr(_loader_module(task.name), task.loader)
    try:
        examples = fn(task.data)
    except MissingData as e:
        raise TaskDataMissing(
            f"{e.path}: not found (task {task.name}, data.{e.key}). To obtain it: {task.obtain} "
            f"Then put it at {e.path} (the data root is {task.data.get('root')}: set "
            f"{DATA_ROOT_ENV}=DIR or data.root=DIR), or point data.{e.key} at your copy.", e.path) from None
    _check(task, examples)
    return examples


__all__ = ["Task", "TaskDataMissing", "task_names", "load_task", "load_examples", "data_root", "KINDS"]
