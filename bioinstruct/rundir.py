"""The run directory contract.

Stages talk to each other only through files under one run directory::

    runs/<name>/
        generate/   instructions.jsonl ...       (each stage writes only its own folder)
        filter/     kept.jsonl decisions.jsonl ...
        train/<model>__<subset>/ adapter/ ...
        <stage>/manifest.json                     status, config, versions, times
        <stage>/config.yaml                       the resolved config the stage ran with

A stage whose manifest says ``complete`` with the same config is skipped, which is
what makes re-running a whole sweep (or a requeued Slurm job) safe. A complete stage
asked to run with a *different* config is refused unless ``force`` is given, so
results are never silently mixed from two configs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from . import __version__, environment
from .config import default_instance, dump_config, to_dict
from .errors import ConfigError, StageConflict, StageStopped
from .io import atomic_write_json, atomic_write_text, read_json

MANIFEST = "manifest.json"
CONFIG = "config.yaml"


def utc_now() -> str:
    """Now, as the manifests and attempt records write times (UTC, to the second)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_revision() -> str | None:
    """The commit of the bioinstruct source tree, with ``-dirty`` if it has local edits."""
    src = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, ensure_ascii=False)


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(_canonical(to_dict(cfg)).encode()).hexdigest()[:16]


def read_manifest(stage_dir: str | os.PathLike) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    return read_json(path) if path.exists() else None


def is_complete(stage_dir: str | os.PathLike) -> bool:
    manifest = read_manifest(stage_dir)
    return bool(manifest) and manifest.get("status") == "complete"


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return keys


def _with_new_keys(recorded: dict, default: Any) -> dict:
    """A recorded config plus the keys its class gained since, at their defaults. A new key's
    default keeps the old behaviour (the rule for adding one), so a run made before the key
    existed ran as if with that default."""
    filled = dict(recorded)
    for field in dataclasses.fields(default):
        value = getattr(default, field.name)
        if field.name not in filled:
            filled[field.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
        elif dataclasses.is_dataclass(value) and isinstance(filled[field.name], dict):
            filled[field.name] = _with_new_keys(filled[field.name], value)
    return filled


def finished(stage_dir: str | os.PathLike, stage: str, cfg: Any, *, force: bool = False) -> dict | None:
    """The manifest of a complete run of this stage with this config, or None when the
    stage must run; a complete run with another config raises StageConflict (unless
    ``force``). Keys added to the config since the run count at their defaults. Every rank
    of a distributed stage asks, so all of them decide alike."""
    previous = read_manifest(stage_dir)
    if not previous or previous.get("status") != "complete" or force:
        return None
    if previous.get("config_hash") == config_hash(cfg):
        return previous
    recorded, default = previous.get("config", {}), default_instance(type(cfg))
    if default is not None:
        recorded = _with_new_keys(recorded, default)
        if _canonical(recorded) == _canonical(to_dict(cfg)):
            return previous
    changes = "\n  ".join(_changed_keys(recorded, to_dict(cfg)))
    raise StageConflict(
        f"{stage_dir} holds a complete '{stage}' made with another config:\n  {changes}\n"
        f"Use a new run directory, or --force to redo it with the new config.")


def check_writable(path: str | os.PathLike, key: str) -> None:
    """Fail before any work (a model load can take minutes) when ``path``, a folder a stage will
    write in, cannot be one: an existing file, a path under a file, or a folder this user may
    not write in. ``key`` is the option or config key that named it."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file; a folder is needed here")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}: {path} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot write in {existing} (permission denied)")


def run_stage(stage_dir: str | os.PathLike, stage: str, cfg: Any,
              body: Callable[[Path], dict | None], *, force: bool = False) -> dict:
    """Run ``body(stage_dir)`` under the contract; return the final manifest.

    ``body`` writes the stage's outputs into ``stage_dir`` and may return a small
    summary (counts, metrics) kept in the manifest. If it raises, the manifest says
    ``failed`` with the error and the exception propagates. A stage left ``running``
    by a killed process simply runs again: bodies resume from their own files.
    """
    stage_dir = Path(stage_dir)
    check_writable(stage_dir, f"the {stage} folder")
    previous = read_manifest(stage_dir)
    if done := finished(stage_dir, stage, cfg, force=force):
        print(f"[{stage}] already complete in {stage_dir}; nothing to do", file=sys.stderr)
        return done

    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / CONFIG, dump_config(cfg))
    manifest = {
        "stage": stage,
        "status": "running",
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "version": __version__,
        "git_revision": git_revision(),
        "environment": environment.describe(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "attempt": (previous or {}).get("attempt", 0) + 1,
        "started": utc_now(),
        "ended": None,
    }
    atomic_write_json(stage_dir / MANIFEST, manifest)
    try:
        summary = body(stage_dir)
    except BaseException as e:
        # A signal or Ctrl-C is not a failure of the stage: it will be run again.
        # A stage may name its own kind of stop (generate's `waiting` for a Batch API batch).
        status = (getattr(e, "manifest_status", "stopped") if isinstance(e, StageStopped) else
                  "failed" if isinstance(e, Exception) else "interrupted")
        manifest.update(status=status, ended=utc_now(), environment=environment.describe(),
                        error="".join(traceback.format_exception_only(type(e), e)).strip())
        atomic_write_json(stage_dir / MANIFEST, manifest)
        raise
    # Again at the end: a GPU stage has imported torch by now, so CUDA is known.
    manifest.update(status="complete", ended=utc_now(), summary=summary or {}, environment=environment.describe())
    atomic_write_json(stage_dir / MANIFEST, manifest)
    return manifest
