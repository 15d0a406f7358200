"""Where the package's own files are: its data folder, and the source tree around it
(configs/, slurm/) when it runs from a checkout or an image that copies one."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
DATA = PACKAGE / "data"  # seeds, prompts, demo tasks, the tiny corpus
SOURCE_TREE = PACKAGE.parent


def source_path(path: str | Path) -> Path:
    """``path`` as given when it is absolute or names something from here; else the same
    relative path in the source tree when it is there: a shipped config
    (configs/deepspeed/zero2.json) is found wherever a job runs from."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (SOURCE_TREE / p).exists():
        return p
    return SOURCE_TREE / p
