"""Which model a bench runs on: SmolLM2-135M-Instruct (the real one) when it is there, else the
bench's tiny model with a printed note.

    bioinstruct get-model smollm2-135m models/smollm2-135m     # once: the default folder below
    python bench/eval_throughput.py                            # finds it there
    python bench/eval_throughput.py --model /scratch/smollm2   # or any Hugging Face folder
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# get-model's folder as the README makes it; $BIOINSTRUCT_SMOLLM2 (the realmodel tests' folder) first.
DEFAULT = REPO / "models" / "smollm2-135m"
MAKE_IT = "make smollm2 && .venv/bin/bioinstruct get-model smollm2-135m models/smollm2-135m"


def smollm2_dir() -> Path | None:
    """A complete get-model folder of SmolLM2-135M, or None."""
    from bioinstruct.runs.rundir import is_complete

    for folder in (os.environ.get("BIOINSTRUCT_SMOLLM2"), DEFAULT):
        if folder and is_complete(Path(folder)) and (Path(folder) / "config.json").is_file():
            return Path(folder)
    return None


def note_fallback(what: str) -> None:
    print(f"note: SmolLM2-135M not found (models/smollm2-135m or $BIOINSTRUCT_SMOLLM2): {what}; "
          f"for the real model: {MAKE_IT}", file=sys.stderr, flush=True)
