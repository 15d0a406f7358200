"""What a stage consumed, by content, so that skip / resume / merge decisions never trust names.

    file_sha256("/data/medmcqa/dev.json")          # hex digest, hashed once per (real path, size, mtime)
    path_identity("/data/bioasq")                  # a file's sha256, or a folder's files' sha256s
    model_fingerprint("/models/llama2-7b")         # {"fingerprint": ...} or {"hub": "org/name"}
    adapter_identity("runs/v1/train/x/adapter")    # {"fingerprint": ..., "base": "..."}

Paths are identities: the same file reached through a symlink, a relative path or a moved
run directory has the same identity, and a file changed in place (corrected answer keys)
has another.

Cache: a digest is kept in-process and in ``$XDG_CACHE_HOME/bioinstruct/sha256.json`` (else
``~/.cache/bioinstruct/sha256.json``; ``BIOINSTRUCT_HASH_CACHE=FILE`` moves it, ``=off`` keeps
it in-process only), keyed by real path and reused only while the file's size and mtime (ns)
are unchanged. An edit changes mtime, so a stale digest is never reused; a lost or corrupt
cache only costs a re-hash; entries of deleted files are dropped when the cache is written.

A model folder's fingerprint is the sha256 over the digests of the files transformers loads
(config.json, tokenizer files, every weight shard; not READMEs, not bioinstruct's manifest). Headers and sizes alone do not suffice: a fine-tuned
or merged model has exactly the shapes, dtypes and offsets of its base, and LLaMA-1 and
LLaMA-2 7B share them too; only the bytes tell them apart. The bytes are hashed once per file
(bench/fingerprint.py: 3 GB in 5-6 s on one loaded core here, 0.5-0.6 GB/s) and then cost a stat()
per file from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..io.rows import atomic_write_json

CHUNK = 1 << 22
_memory: dict[str, dict] = {}
_lock = threading.Lock()
# The files of a model folder that transformers and peft load: config, tokenizer, weights
# (top level only: a checkpoints/ or runs/ folder beside them is not the model).
_MODEL_SUFFIXES = {".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken", ".pt", ".pth", ".py"}
# bioinstruct's own records of how a folder was made (times, attempts): not the model.
_RUN_RECORDS = {"manifest.json", "pretrain_log.json"}


def cache_file() -> Path | None:
    setting = os.environ.get("BIOINSTRUCT_HASH_CACHE")
    if setting == "off":
        return None
    if setting:
        return Path(setting)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "bioinstruct" / "sha256.json"


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a corrupt cache is only a re-hash


def _save(real: str, entry: dict) -> None:
    path = cache_file()
    if path is None:
        return
    try:
        # Entries of files since deleted (temporary copies, old runs) go, so the cache stays small.
        data = {k: v for k, v in _load_cache(path).items() if os.path.exists(k)}
        data[real] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data)
    except OSError:
        pass  # a read-only home: hashing still works, it just is not remembered


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, hashed once per (real path, size, mtime_ns)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with _lock:
        hit = _memory.get(real) or _load_cache(cache_file()).get(real)
        if isinstance(hit, dict) and {k: hit.get(k) for k in key} == key and "sha256" in hit:
            _memory[real] = hit
            return hit["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    entry = {**key, "sha256": h.hexdigest()}
    with _lock:
        _memory[real] = entry
        _save(real, entry)
    return entry["sha256"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def _digest(named: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()


def path_identity(path: str | os.PathLike | None) -> Any:
    """A data file's sha256; a folder's {relative path: sha256}; None for no path; "absent"
    for a path that does not exist (an optional file)."""
    if path is None:
        return None
    if isinstance(path, (list, tuple)):
        return [path_identity(p) for p in path]
    p = Path(os.path.realpath(path))
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        return {str(f.relative_to(p)): file_sha256(f) for f in _files(p)}
    return "absent"


def model_fingerprint(path: str) -> dict:
    """A local model folder by the content of its files (see the module docstring); a hub id
    by name (the hub's revision is not pinned here)."""
    local = Path(os.path.expanduser(path))
    if not local.is_dir():
        return {"hub": path}
    real = Path(os.path.realpath(local))
    files = {f.name: file_sha256(f) for f in sorted(real.iterdir()) if f.is_file() and not f.name.startswith(".")
             and f.suffix.lower() in _MODEL_SUFFIXES and f.name not in _RUN_RECORDS}
    return {"fingerprint": _digest(files)[:32]}


def adapter_base(path: str) -> str | None:
    """The base model a peft adapter records (adapter_config.json's base_model_name_or_path)."""
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def adapter_identity(path: str) -> dict:
    """An adapter by its files' content and the base it records."""
    return {**model_fingerprint(path), "base": adapter_base(path)}


def base_matches(adapter: str, model: str) -> tuple[bool, str]:
    """Whether ``adapter`` was made on ``model``: by fingerprint when its recorded base is a
    local folder, by name otherwise (the hub id, or the model folder's name or recorded
    _name_or_path). Returns (match, the recorded base as text for a message)."""
    base = adapter_base(adapter)
    if not base:
        return False, "no base_model_name_or_path in adapter_config.json"
    if Path(os.path.expanduser(base)).is_dir():
        return model_fingerprint(base) == model_fingerprint(model), base
    names = {model.rstrip("/"), Path(os.path.realpath(model)).name}
    try:
        names.add(json.loads((Path(model) / "config.json").read_text()).get("_name_or_path") or "")
    except (OSError, ValueError):
        pass
    return base.rstrip("/") in names or base.rstrip("/").split("/")[-1] in names, base
