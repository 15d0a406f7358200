"""Table cells: a score, a mean of scores or a relative gain, each with where it came from."""

from __future__ import annotations

import math
from typing import Any

from .results import Result

# A cell is None (missing), a str (a label), or a dict with a "value" and where it came from:
#   score: one metric of one results.json   {type, value, ci95, n, metric, task, model, source}
#   mean:  the mean of score cells          {type, value, tasks, expected, of: [score cells]}
#   gain:  (tuned - base) / base            {type, value, tuned, base, tasks, expected, sources}

MISSING = "–"
LIMITED = "†"  # marks a number from (or averaged over) a run with evaluate's limit=N


def score_cell(r: Result | None, metric: str) -> dict | None:
    if r is None:
        return None
    m = r.metrics.get(metric)
    if not isinstance(m, dict) or not isinstance(m.get("value"), (int, float)) or isinstance(m["value"], bool) \
            or not math.isfinite(m["value"]):
        return None
    ci = m.get("ci95")
    ci = [float(ci[0]), float(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None
    return {"type": "score", "value": float(m["value"]), "ci95": ci, "n": m.get("n", r.n), "metric": metric,
            "task": r.task, "model": r.label, "source": r.source, "limited": r.limit is not None}


def mean_cell(cells: list[dict | None], expected: int | None = None) -> dict | None:
    present = [c for c in cells if c is not None]
    if not present:
        return None
    return {"type": "mean", "value": sum(c["value"] for c in present) / len(present),
            "tasks": [c["task"] for c in present], "expected": expected or len(cells),
            "limited": any(c.get("limited") for c in present),
            "of": [{k: c[k] for k in ("task", "metric", "value", "source")} for c in present]}


def gain_cell(tuned: dict | None, base: dict | None) -> dict | None:
    if tuned is None or base is None or base["value"] == 0:
        return None
    return {"type": "gain", "value": (tuned["value"] - base["value"]) / base["value"],
            "tuned": tuned["value"], "base": base["value"], "tasks": [tuned.get("task")], "expected": 1,
            "limited": bool(tuned.get("limited") or base.get("limited")),
            "sources": [tuned["source"], base["source"]]}


def gain_of_means(tuned: list[dict | None], base: list[dict | None]) -> dict | None:
    """Relative gain of the mean over the tasks both models have."""
    pairs = [(t, b) for t, b in zip(tuned, base) if t is not None and b is not None]
    if not pairs:
        return None
    t_mean = sum(t["value"] for t, _ in pairs) / len(pairs)
    b_mean = sum(b["value"] for _, b in pairs) / len(pairs)
    if b_mean == 0:
        return None
    return {"type": "gain", "value": (t_mean - b_mean) / b_mean, "tuned": t_mean, "base": b_mean,
            "tasks": [t["task"] for t, _ in pairs], "expected": len(tuned),
            "limited": any(c.get("limited") for pair in pairs for c in pair),
            "sources": [c["source"] for pair in pairs for c in pair]}


def fmt(value: float) -> str:
    return f"{value:.3f}"


def cell_text(cell: Any, *, ci: bool = True) -> str:
    if cell is None:
        return MISSING
    if isinstance(cell, str):
        return cell
    partial = f" ({len(cell['tasks'])}/{cell['expected']})" if cell["type"] != "score" and \
        len(cell["tasks"]) < cell["expected"] else ""
    mark = LIMITED if cell.get("limited") else ""
    if cell["type"] == "gain":
        return f"{100 * cell['value']:+.1f}%{mark}{partial}"
    text = fmt(cell["value"]) + mark
    if ci and cell["type"] == "score" and cell["ci95"]:
        text += f" [{fmt(cell['ci95'][0])}, {fmt(cell['ci95'][1])}]"
    return text + partial


def cell_csv(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, str):
        return cell
    return repr(cell["value"])
