"""Progress bars that suit both a terminal and a Slurm log file."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


class _Lines:
    """A log file's view of a bar: each refresh on a line of its own. tqdm redraws in place
    with carriage returns, which a log file keeps, so `less` shows one line of them all."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """tqdm on stderr; in a log file (no TTY) a line every 30 s instead of redrawing, so a
    day-long Slurm job's log stays readable. BIOINSTRUCT_PROGRESS=0 hides it."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.2 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    kwargs.setdefault("disable", os.environ.get("BIOINSTRUCT_PROGRESS", "1") == "0")
    return tqdm(iterable, file=sys.stderr if interactive else _Lines(sys.stderr), **kwargs)
