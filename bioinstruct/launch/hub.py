"""Models named by hub id, pinned on the login node for compute nodes without a network.

    models = PinnedModels(run_dir / "sweeps" / "hub" / "models.json", cache=None)   # None: huggingface_hub's cache
    path = models.snapshot("meta-llama/Llama-2-7b-hf")   # .../models--meta-llama--Llama-2-7b-hf/snapshots/<commit>

`launch` runs where the network is. The first time a sweep of this run directory names a hub
id, the snapshot is fetched into the shared cache (or found there: a pre-filled cache works
with every network route dead) and recorded in RUN_DIR/sweeps/hub/models.json: the revision (its
commit) and each file's sha256. Jobs get the snapshot's folder instead of the id, and run
with HF_HUB_OFFLINE=1 (executors.py). A later launch uses the recorded revision and checks the
files; a file replaced or changed under the same id is refused, naming the model. Files whose
size, mtime and inode are as recorded are not hashed again (13B weights take minutes).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import UserError
from ..io.rows import atomic_write_json, read_json

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(value: object) -> bool:
    """An org/name that is no path here (a relative path that exists is a local model)."""
    return isinstance(value, str) and HUB_ID.fullmatch(value) is not None and not Path(value).exists()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat(path: Path) -> list[int]:
    s = path.stat()  # through the cache's blob symlinks: the file itself
    return [s.st_size, s.st_mtime_ns, s.st_ino]


class PinnedModels:
    def __init__(self, record: Path, cache: str | None):
        self.record, self.cache = record, cache
        self.models = read_json(record) if record.exists() else {}

    def snapshot(self, repo_id: str) -> str:
        entry = self.models.get(repo_id)
        if entry:
            self._check(repo_id, entry)
            return entry["path"]
        path = Path(self._download(repo_id))
        files = sorted(p for p in path.rglob("*") if p.is_file())
        self.models[repo_id] = {
            "revision": path.name, "path": str(path),
            "files": {str(p.relative_to(path)): {"sha256": _sha256(p), "stat": _stat(p)} for p in files}}
        atomic_write_json(self.record, self.models)
        return str(path)

    def _download(self, repo_id: str) -> str:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            # Falls back to a snapshot already in the cache when the hub cannot be reached.
            return snapshot_download(repo_id, cache_dir=self.cache, token=os.environ.get("HF_TOKEN"))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            raise UserError(f"model {repo_id}: no snapshot in {self.cache or 'the hub cache'} and the hub "
                            f"cannot give one ({' '.join(str(e).split())[:200]}); run launch where the network "
                            f"is, or point model paths at local copies") from None

    def _check(self, repo_id: str, entry: dict) -> None:
        path = Path(entry["path"])
        for name, recorded in entry["files"].items():
            file = path / name
            if not file.is_file():
                why = f"{name} is gone"
            elif _stat(file) == recorded["stat"] or _sha256(file) == recorded["sha256"]:
                continue
            else:
                why = f"{name} changed"
            raise UserError(f"model {repo_id}: the snapshot at {path} is not the one recorded (revision "
                            f"{entry['revision']}) in {self.record}: {why}. Restore it, or delete its entry "
                            f"there to pin the new one (results made with the old one stay theirs)")
