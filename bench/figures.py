"""The figures a bench hands to bench/gpu_check.sh: one JSON line each, appended to the file
named by $BENCH_FIGURES (nothing when it is unset), and the one table they make.

    BENCH_FIGURES=/tmp/f.jsonl python bench/eval_throughput.py --gpu-7b
    python bench/figures.py /tmp/f.jsonl          # the table
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def record(bench: str, setting: str, figure: str, value) -> None:
    path = os.environ.get("BENCH_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"bench": bench, "setting": setting, "figure": figure, "value": value}) + "\n")


def table(path: str) -> str:
    from bioinstruct.reporting.tables import format_table

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return format_table(["bench", "setting", "figure", "value"],
                        [[r["bench"], r["setting"], r["figure"], r["value"]] for r in rows])


if __name__ == "__main__":
    print(table(sys.argv[1]))
