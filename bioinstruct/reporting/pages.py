"""The report's pages: report.md, index.html, and each table and every score as CSV."""

from __future__ import annotations

import csv
import html
import io
from typing import Any

from .cells import MISSING, cell_csv, cell_text, fmt, score_cell
from .results import Result, natural_key
from .tables import markdown_table


def md_table(table: dict) -> str:
    """A report table (columns, rows of cells) in Markdown."""
    return markdown_table(table["columns"], ([cell_text(c) for c in row] for row in table["rows"]))


def csv_text(table: dict) -> str:
    """A report table's values (missing: empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table["columns"])
    writer.writerows([cell_csv(c) for c in row] for row in table["rows"])
    return buf.getvalue()


def scores_csv(results: list[Result], index: dict) -> str:
    """Every metric of every results.json used, long form."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["family", "variant", "model", "task", "kind", "metric", "value", "ci95_low", "ci95_high", "n",
                     "source", "limit"])
    for (family, variant, task), r in sorted(index.items(), key=lambda kv: (natural_key(kv[0][0]), kv[0][1:])):
        for metric in sorted(r.metrics):
            cell = score_cell(r, metric)
            if cell is None:
                continue
            ci = cell["ci95"] or ["", ""]
            writer.writerow([family, variant or "", r.label, task, r.kind, metric, repr(cell["value"]),
                             *(repr(c) if c != "" else "" for c in ci), cell["n"] if cell["n"] is not None else "",
                             r.source, r.limit if r.limit is not None else ""])
    return buf.getvalue()


def render_markdown(data: dict) -> str:
    out = [f"# BioInstruct report: {data['run_dir']}", "",
           f"{len(data['inputs']['results'])} results.json files; every number with its source: `report.json`, "
           "`scores.csv`. Missing cells: \"–\". Config: `config.yaml`.", ""]
    for table in data["tables"].values():
        out += [f"## {table['title']}", "", md_table(table), ""]
        for note in table["notes"]:
            out += [f"*{note}*", ""]
        out += [f"CSV: `{table['name']}.csv`", ""]
    out += ["## Figures", ""]
    for name, fig in data["figures"].items():
        out += [f"### {fig['title']}", "", f"![{name}]({fig['files'][0]}) ([PDF]({fig['files'][1]}))", ""]
    if not data["figures"]:
        out += ["*No figures: no training-subset models (Figure 2) or size-N models (Figure 3) were evaluated.*", ""]
    if data["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    return "\n".join(out)


def _html_cell(cell: Any, label: bool) -> str:
    if cell is None or cell == MISSING:
        return f'<td class="missing">{MISSING}</td>'
    if isinstance(cell, str):
        return f"<th>{html.escape(cell)}</th>" if label else f"<td>{html.escape(cell)}</td>"
    main = cell_text(cell, ci=False)
    title = html.escape(cell.get("source") or ", ".join(sorted(set(cell.get("sources") or
                                                                    [o["source"] for o in cell.get("of", [])]))))
    ci = (f'<br><span class="ci">[{fmt(cell["ci95"][0])}, {fmt(cell["ci95"][1])}]</span>'
          if cell["type"] == "score" and cell["ci95"] else "")
    cls = ' class="gain"' if cell["type"] == "gain" else ""
    return f'<td{cls} title="{title}">{html.escape(main)}{ci}</td>'


def render_html(data: dict) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:1800px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}"
             "th{text-align:left;background:#f6f6f6}thead th{text-align:center}.ci{color:#777;font-size:11px}"
             ".missing{color:#aaa;text-align:center}.gain{font-weight:bold}.note{color:#555;font-size:13px}"
             "img{max-width:100%;border:1px solid #eee}.scroll{overflow-x:auto}")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>BioInstruct report: {html.escape(data['run_dir'])}</title><style>{style}</style></head><body>",
           f"<h1>BioInstruct report: {html.escape(data['run_dir'])}</h1>",
           f'<p class="note">{len(data["inputs"]["results"])} results.json files. Hover a number for the '
           'results.json it came from; all of them: <a href="report.json">report.json</a>, '
           '<a href="scores.csv">scores.csv</a>, <a href="report.md">report.md</a>.</p>']
    for table in data["tables"].values():
        out += [f"<h2>{html.escape(table['title'])}</h2>", '<div class="scroll"><table><thead><tr>',
                "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"]), "</tr></thead><tbody>"]
        labels = table.get("label_columns", 1)
        out += ["<tr>" + "".join(_html_cell(c, i < labels) for i, c in enumerate(row)) + "</tr>"
                for row in table["rows"]]
        out += ["</tbody></table></div>"]
        out += [f'<p class="note">{html.escape(n)}</p>' for n in table["notes"]]
        out += [f'<p class="note">CSV: <a href="{table["name"]}.csv">{table["name"]}.csv</a></p>']
    out += ["<h2>Figures</h2>"]
    for name, fig in data["figures"].items():
        png, pdf = fig["files"]
        out += [f"<h3>{html.escape(fig['title'])}</h3>", f'<p><a href="{pdf}">PDF</a></p>',
                f'<img src="{png}" alt="{html.escape(name)}">']
    if not data["figures"]:
        out += ['<p class="note">No figures: no training-subset models (Figure 2) or size-N models (Figure 3) '
                'were evaluated.</p>']
    if data["notes"]:
        out += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in data["notes"]] + ["</ul>"]
    out += ["</body></html>", ""]
    return "\n".join(out)
