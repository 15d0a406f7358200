"""Every figure of the report (Figures 2 and 3) and of the dataset card, on bare matplotlib
Figures (no pyplot: no global backend or display), written atomically."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Literal

import numpy as np

from ..io.rows import atomic_open
from ..io.records import PAPER_SHARES
from .card import TOP_OBJECTS
from .cells import MISSING, fmt
from .results import KIND_LABELS, METRIC_LABELS, TASK_LABELS

DPI = 120
PANEL = (5.0, 4.2)  # inches per Figure 2 panel
FIG3_PANEL = (5.5, 4.5)
LEGEND_HEIGHT = 0.6
FIGSIZE = {"categories": (8.0, 4.5), "words": (12.0, 4.0), "tokens": (9.0, 4.5),
           "similarity": (8.0, 4.5), "verbs": (9.0, 9.0)}  # the dataset card's figures


def new_figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def save_figure(fig, stem: Path, formats: tuple[str, ...] = ("png",)) -> list[str]:
    """The figure in each format, side by side; no dates in a PDF, so a re-run writes the same bytes."""
    names = []
    for kind in formats:
        path = stem.with_suffix(f".{kind}")
        options = {"dpi": DPI} if kind == "png" else {"metadata": {"CreationDate": None, "ModDate": None}}
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=kind, **options)
        names.append(path.name)
    return names


# ---- the report: Figures 2 and 3 -------------------------------------------------------------

def figure_size(figure: Literal["figure2", "figure3"], panels: int) -> tuple[float, float]:
    """Width and height in inches of a figure with ``panels`` panels."""
    if figure == "figure2":
        cols = min(3, panels)
        rows = math.ceil(panels / cols)
        return PANEL[0] * cols, PANEL[1] * rows + LEGEND_HEIGHT
    return FIG3_PANEL[0] * panels, FIG3_PANEL[1] + LEGEND_HEIGHT


GROUP_STYLE = {"single": ("C0", "o", "single category"), "pair": ("C1", "s", "category pair"),
               "other": ("C2", "^", "other subset")}


def _yerr(points: list[dict]) -> list[list[float]] | None:
    if not any(p.get("ci95") for p in points):
        return None
    return [[p["value"] - p["ci95"][0] if p.get("ci95") else 0.0 for p in points],
            [p["ci95"][1] - p["value"] if p.get("ci95") else 0.0 for p in points]]


def plot_figure2(family: str, panels: list[dict], tuned_subset: str, stem: Path) -> list[str]:
    from matplotlib.lines import Line2D

    fig = new_figure(figure_size("figure2", len(panels)))
    cols = min(3, len(panels))
    axes = fig.subplots(math.ceil(len(panels) / cols), cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        x, names = 0.0, []
        for group in ("single", "pair", "other"):
            points = [p for p in panel["points"] if p["group"] == group]
            if not points:
                continue
            xs = [x + i for i in range(len(points))]
            color, marker, _ = GROUP_STYLE[group]
            ax.errorbar(xs, [p["value"] for p in points], yerr=_yerr(points), fmt=marker, color=color,
                        ecolor=color, elinewidth=0.8, capsize=2, markersize=6, alpha=0.9)
            names += [(xx, p["subset"]) for xx, p in zip(xs, points)]
            x = xs[-1] + 1.6  # a gap between groups
        for cell, style in ((panel["base"], {"color": "0.35", "linestyle": "--"}),
                            (panel["tuned"], {"color": "C3", "linestyle": "-"})):
            if cell:
                ax.axhline(cell["value"], linewidth=1.4, **style)
        ax.set_xticks([xx for xx, _ in names], [n for _, n in names], rotation=50, ha="right",
                      rotation_mode="anchor", fontsize=7.5)
        ax.set_xlim(-0.8, max(xx for xx, _ in names) + 0.8)
        ax.set_ylabel(METRIC_LABELS.get(panel["metric"], panel["metric"]), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        best = {g: next((p for p in panel["points"] if p["subset"] == panel[f"best_{g}"]), None)
                for g in ("single", "pair")}
        line = "   ".join(f"best {g}: {p['subset']} ({fmt(p['value'])})" if p else f"best {g}: {MISSING}"
                           for g, p in best.items())
        ax.set_title(f"{TASK_LABELS.get(panel['task'], panel['task'])}\n{line}", fontsize=9.5)
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=label) for c, m, label in GROUP_STYLE.values()]
    handles += [Line2D([], [], color="0.35", linestyle="--", label=f"{family} base"),
                Line2D([], [], color="C3", linestyle="-", label=f"{family}__{tuned_subset} (all tasks)"
                       if tuned_subset == "all" else f"{family}__{tuned_subset}")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"Figure 2. Training subsets of {family} on each evaluation task", fontsize=11)
    return save_figure(fig, stem, ("png", "pdf"))


def _size_label(size: int) -> str:
    return f"{size / 1000:g}k" if size >= 1000 and size % 100 == 0 else f"{size:,}"


def plot_figure3(family: str, panels: list[dict], tuned_subset: str, stem: Path) -> list[str]:
    from matplotlib.lines import Line2D

    fig = new_figure(figure_size("figure3", len(panels)))
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        ticks: dict[int, str] = {}
        for i, line in enumerate(panel["lines"]):
            color = f"C{i % 10}"
            points = line["points"]
            ax.errorbar([p["size"] for p in points], [p["value"] for p in points], yerr=_yerr(points),
                        color=color, marker="o", markersize=5, capsize=2, elinewidth=0.8, linewidth=1.5,
                        label=TASK_LABELS.get(line["task"], line["task"]))
            for p in points:
                ticks[p["size"]] = (f"{tuned_subset}\n{_size_label(p['size'])}" if p["subset"] == tuned_subset
                                    else _size_label(p["size"]))
            if line["base"]:
                ax.axhline(line["base"]["value"], color=color, linestyle=":", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [ticks[s] for s in sorted(ticks)], fontsize=8)
        ax.minorticks_off()
        lo, hi = min(ticks), max(ticks)
        ax.set_xlim(lo / 1.25, hi * 1.25)
        metrics = sorted({line["metric"] for line in panel["lines"]})
        ax.set_ylabel(", ".join(METRIC_LABELS.get(m, m) for m in metrics), fontsize=9)
        ax.set_xlabel("training instructions (log scale)", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(KIND_LABELS[panel["kind"]], fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.legend(handles=[Line2D([], [], color="0.3", marker="o", label=f"{family} tuned on that many instructions"),
                        Line2D([], [], color="0.3", linestyle=":", label=f"{family} base (same colour per task)")],
               loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    fig.suptitle(f"Figure 3. Score against the number of training instructions ({family})", fontsize=11)
    return save_figure(fig, stem, ("png", "pdf"))


# ---- the dataset card ---------------------------------------------------------------------

def plot_categories(counts: dict[str, int], path: Path) -> None:
    fig = new_figure(FIGSIZE["categories"])
    ax = fig.subplots()
    total = sum(counts.values())
    labels = list(counts)
    x = np.arange(len(labels))
    ours = [100 * counts[c] / total for c in labels]
    paper = [PAPER_SHARES.get(c, 0.0) for c in labels]
    for offset, values, name in ((-0.2, ours, "this dataset"), (0.2, paper, "BioInstruct paper")):
        bars = ax.bar(x + offset, values, width=0.4, label=name)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, labels)
    ax.set_ylabel("share of records (%)")
    ax.set_ylim(0, max(ours + paper) * 1.15)
    ax.set_title(f"Categories ({total:,} records)")
    ax.legend()
    save_figure(fig, path)


def _clipped_hist(ax, values: np.ndarray, title: str, xlabel: str, clip: int) -> None:
    """Histogram of counts up to ``clip``; longer values are counted in the last bin, so a
    long tail does not squeeze the bulk of the distribution into one bar."""
    # Whole-number bins (values are counts): uneven ones would leave comb-like gaps.
    width = math.ceil((clip + 1) / 50)
    ax.hist(np.minimum(values, clip), bins=np.arange(0, clip + width + 1, width))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")


def plot_words(words: dict[str, np.ndarray], path: Path) -> None:
    fig = new_figure(FIGSIZE["words"])
    for ax, (field, counts) in zip(fig.subplots(1, 3), words.items()):
        if field == "input":
            counts = counts[counts > 0]
        if counts.size == 0:
            ax.set_title(f"{field}: all empty", fontsize=10)
            continue
        clip = math.ceil(np.percentile(counts, 99))
        title = f"{field}{' (non-empty)' if field == 'input' else ''}, n={counts.size:,}"
        _clipped_hist(ax, counts, title, f"words (last bin: >= {clip}, the p99)", clip)
    save_figure(fig, path)


def plot_tokens(full: np.ndarray, rows: list[dict], path: Path) -> None:
    fig = new_figure(FIGSIZE["tokens"])
    ax = fig.subplots()
    clip = math.ceil(np.percentile(full, 99.5))
    _clipped_hist(ax, full, f"Training example length (Alpaca prompt + response + EOS), n={full.size:,}",
                  f"tokens (last bin: >= {clip}, the p99.5)", clip)
    # Limits far beyond the data would squeeze the histogram; the card's table has them all.
    for row, color in zip(rows, itertools.cycle(["C1", "C2", "C3", "C4", "C5"])):
        if row["max_length"] <= 1.25 * clip:
            ax.axvline(row["max_length"], color=color, linestyle="--",
                       label=f"max_length {row['max_length']}: {100 * row['share_examples_longer']:.1f}% longer")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_similarity(sim: dict, path: Path) -> None:
    fig = new_figure(FIGSIZE["similarity"])
    ax = fig.subplots()
    edges, counts = sim["histogram"]["edges"], sim["histogram"]["counts"]
    ax.stairs(counts, edges, fill=True)
    ax.axvline(sim["scores"]["mean"], color="C1", label=f"mean {sim['scores']['mean']:.3f}")
    threshold = sim["near_duplicate_threshold"]
    ax.axvline(threshold, color="C3", linestyle="--",
               label=f"filter threshold {threshold} ({100 * sim['share_over_threshold']:.1f}% above)")
    scope = f"random sample of {sim['scored']:,} of {sim['of']:,}" if sim["sampled"] else f"n={sim['scored']:,}"
    ax.set_title(f"ROUGE-L F to the nearest other instruction ({scope})", fontsize=10)
    ax.set_xlabel("ROUGE-L F")
    ax.set_ylabel("instructions")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _ring_labels(ax, wedges, labels: list[str], radius: float, size: float) -> None:
    """Radial labels at the middle of each wedge, upright, left out where a wedge is too thin."""
    for wedge, label in zip(wedges, labels):
        if not label or wedge.theta2 - wedge.theta1 < 2.0:
            continue
        angle = (wedge.theta1 + wedge.theta2) / 2
        x, y = radius * math.cos(math.radians(angle)), radius * math.sin(math.radians(angle))
        rotation = angle if -90 <= (angle + 180) % 360 - 180 <= 90 else angle + 180
        ax.text(x, y, label, ha="center", va="center", rotation=rotation, rotation_mode="anchor", fontsize=size)


def plot_verbs(verbs: dict, path: Path) -> None:
    """Figure 1B as a sunburst: verbs inside, their top objects outside (the grey rest is
    the verb's other objects)."""
    from matplotlib import colormaps

    fig = new_figure(FIGSIZE["verbs"])
    ax = fig.subplots()
    top = verbs["top"]
    colors = [colormaps["tab20"](i % 20) for i in range(len(top))]
    sizes, outer_colors, outer_labels = [], [], []
    for entry, color in zip(top, colors):
        for obj, count in entry["objects"]:
            sizes.append(count)
            outer_colors.append((*color[:3], 0.55))
            outer_labels.append(obj)
        rest = entry["count"] - sum(c for _, c in entry["objects"])
        if rest:
            sizes.append(rest)
            outer_colors.append((0.92, 0.92, 0.92, 1.0))
            outer_labels.append("")
    props = {"edgecolor": "white", "linewidth": 0.8}
    inner, _ = ax.pie([e["count"] for e in top], radius=0.6, colors=colors, startangle=90, counterclock=False,
                      wedgeprops={**props, "width": 0.35})
    outer, _ = ax.pie(sizes, radius=1.0, colors=outer_colors, startangle=90, counterclock=False,
                      wedgeprops={**props, "width": 0.4})
    _ring_labels(ax, inner, [e["verb"] for e in top], 0.425, 8)
    _ring_labels(ax, outer, outer_labels, 0.8, 7)
    ax.set_title(f"Top {len(top)} root verbs and their top {TOP_OBJECTS} direct objects "
                 f"({verbs['with_verb_and_object']:,} instructions)", fontsize=10)
    save_figure(fig, path)
