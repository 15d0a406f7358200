"""The run directory contract.

Stages talk to each other only through files under one run directory::

    runs/<name>/
        generate/   instructions.jsonl ...       (each stage writes only its own folder)
        filter/     kept.jsonl decisions.jsonl ...
        train/<model>__<subset>/ adapter/ ...
        <stage>/manifest.json                     status, config, versions, times
        <stage>/config.yaml                       the resolved config the stage ran with

A stage whose manifest says ``complete`` with the same config and the same input
identities (content hashes and fingerprints from :mod:`bioinstruct.runs.identity`, recorded
as ``inputs``) is skipped, which is what makes re-running a whole sweep (or a requeued
Slurm job) safe; paths are compared by what they name, not how they are spelled. A
stage asked to run with a *different* config or inputs is refused, naming what changed,
whether its output is complete or partial, unless ``force`` is given, which starts clean:
results are never silently mixed from two configs or two inputs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..paths import SOURCE_TREE
from . import environment
from .config import default_instance, dump_config, to_dict
from ..errors import ConfigError, StageConflict, StageStopped
from ..io.rows import atomic_write_json, atomic_write_text, read_json

MANIFEST = "manifest.json"
CONFIG = "config.yaml"


def utc_now() -> str:
    """Now, as the manifests and attempt records write times (UTC, to the second)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_revision() -> str | None:
    """The commit of the bioinstruct source tree, with ``-dirty`` if it has local edits."""
    try:
        rev = subprocess.run(["git", "-C", str(SOURCE_TREE), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(SOURCE_TREE), "status", "--porcelain", "--untracked-files=no"],
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


def _without(config: dict, keys: tuple[str, ...]) -> dict:
    """``config`` less the dotted ``keys`` (the ones compared through recorded identities)."""
    return {k: (_without(v, tuple(x[len(k) + 1:] for x in keys if x.startswith(k + ".")))
                if isinstance(v, dict) else v) for k, v in config.items() if k not in keys}


def differences(previous: dict, cfg: Any, inputs: dict | None = None, ignore: tuple[str, ...] = ()) -> list[str]:
    """What differs between a recorded manifest and a run about to start: config keys (less
    ``ignore``: paths compared as identities and keys that cannot change the result) and
    recorded input identities. Keys added to the config since the run count at their defaults."""
    recorded, default = previous.get("config", {}), default_instance(type(cfg))
    if default is not None:
        recorded = _with_new_keys(recorded, default)
    changes = _changed_keys(_without(recorded, ignore), _without(to_dict(cfg), ignore))
    if inputs is not None:
        if "inputs" not in previous:  # made before identities were recorded: paths as strings
            return _changed_keys(recorded, to_dict(cfg))
        changes += _changed_keys(previous["inputs"], inputs, "inputs.")
    return changes


def finished(stage_dir: str | os.PathLike, stage: str, cfg: Any, *, force: bool = False,
             inputs: dict | None = None, ignore: tuple[str, ...] = ()) -> dict | None:
    """The manifest of a complete run of this stage with this config and these ``inputs``
    (identities: content hashes, fingerprints), or None when the stage must run; a complete
    run made otherwise raises StageConflict naming what changed (unless ``force``). Keys in
    ``ignore`` (paths, whose identity is in ``inputs``; keys that cannot change the result)
    are not compared, so a symlinked, relative or moved path is the same input. Every rank
    of a distributed stage asks, so all of them decide alike."""
    previous = read_manifest(stage_dir)
    if not previous or previous.get("status") != "complete" or force:
        return None
    if inputs is None and not ignore and previous.get("config_hash") == config_hash(cfg):
        return previous
    changes = differences(previous, cfg, inputs, ignore)
    if not changes:
        return previous
    raise StageConflict(  # one line, as every bad-input error (a Slurm log greps well)
        f"{stage_dir} holds a complete '{stage}' made from other inputs or config ({'; '.join(changes)}): "
        f"use a new run directory, or --force to redo it from scratch")


def check_resumable(stage_dir: str | os.PathLike, stage: str, cfg: Any, *, force: bool = False,
                    inputs: dict | None = None, ignore: tuple[str, ...] = ()) -> dict | None:
    """What ``run_stage`` decides, without running: the manifest of a complete run to skip,
    None to run (or resume), StageConflict for output, complete or partial (a killed or
    failed run), made from other inputs. Stages ask before loading a model."""
    if done := finished(stage_dir, stage, cfg, force=force, inputs=inputs, ignore=ignore):
        return done
    previous = read_manifest(stage_dir)
    if force or not previous or previous.get("status") == "complete":
        return None
    changes = differences(previous, cfg, inputs, ignore)
    if changes:
        raise StageConflict(
            f"{stage_dir} holds partial '{stage}' output made from other inputs or config ({'; '.join(changes)}): "
            f"rerun with the same ones to resume it, or --force to start clean")
    return None


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
              body: Callable[[Path], dict | None], *, force: bool = False, redo: bool = False,
              inputs: dict | None = None, ignore: tuple[str, ...] = ()) -> dict:
    """Run ``body(stage_dir)`` under the contract; return the final manifest.

    ``body`` writes the stage's outputs into ``stage_dir`` and may return a small
    summary (counts, metrics) kept in the manifest. If it raises, the manifest says
    ``failed`` with the error and the exception propagates. A stage left ``running``
    by a killed process runs again and its body resumes from its own files, but only
    when the config and ``inputs`` match the ones recorded (see ``finished``).

    ``force`` starts clean: the old folder is set aside as ``.<folder>.previous`` and the
    body starts in an empty one, so nothing made from other inputs is reused. The old
    folder comes back if the body fails, and is removed when it completes (a stopped or
    interrupted run keeps its new partial output, which the next run resumes). ``redo`` runs the
    body again in place, unchecked, for stages that rebuild their outputs from their own
    files (generate --reparse, report).
    """
    stage_dir = Path(stage_dir)
    check_writable(stage_dir, f"the {stage} folder")
    previous = read_manifest(stage_dir)
    if not redo and (done := check_resumable(stage_dir, stage, cfg, force=force, inputs=inputs, ignore=ignore)):
        print(f"[{stage}] already complete in {stage_dir}; nothing to do", file=sys.stderr)
        return done
    # Hidden, so that globs over stage folders (evaluate's shard-*-of-*) never take it for one.
    aside = stage_dir.with_name(f".{stage_dir.name}.previous")
    if force and stage_dir.exists():
        if aside.exists():  # a forced run killed before: its folder is the one to keep aside
            shutil.rmtree(stage_dir)
        else:
            stage_dir.rename(aside)

    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / CONFIG, dump_config(cfg))
    manifest = {
        "stage": stage,
        "status": "running",
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        **({"inputs": inputs} if inputs is not None else {}),
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
        if status == "failed" and aside.exists():  # a failed --force keeps the old output
            shutil.rmtree(stage_dir)
            aside.rename(stage_dir)
        raise
    # Again at the end: a GPU stage has imported torch by now, so CUDA is known.
    manifest.update(status="complete", ended=utc_now(), summary=summary or {}, environment=environment.describe())
    atomic_write_json(stage_dir / MANIFEST, manifest)
    if aside.exists():
        shutil.rmtree(aside)
    return manifest
