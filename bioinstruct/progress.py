"""Progress bars that suit both a terminal and a Slurm log file."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """tqdm on stderr; in a log file (no TTY) it prints a line every 30 s instead of
    redrawing, so a day-long Slurm job's log stays readable. BIOINSTRUCT_PROGRESS=0 hides it."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.2 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    kwargs.setdefault("disable", os.environ.get("BIOINSTRUCT_PROGRESS", "1") == "0")
    return tqdm(iterable, file=sys.stderr, **kwargs)
