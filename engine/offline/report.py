"""`rankly evaluate --html`: evaluation reports as bar charts in one self-contained HTML file.

The charts are inline SVG written by Python: no script, stylesheet, font or image is fetched,
so the file opens offline and can be attached to a ticket as is.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: (report key, chart title, value format) in the order the charts appear.
METRICS = (
    ("ndcg", "NDCG@{k}", "{:.4f}"), ("recall", "Recall@{k}", "{:.4f}"),
    ("hr", "HR@{k}", "{:.4f}"), ("map", "MAP@{k}", "{:.4f}"),
    ("coverage", "Catalogue coverage", "{:.4f}"), ("ild", "Intra-list diversity", "{:.4f}"),
    ("categories", "Distinct categories per list", "{:.2f}"),
    ("novelty", "Novelty (bits)", "{:.2f}"),
)
GROUP_COLOURS = {"warm": "#3b6ea8", "cold": "#d08c2e"}
BAR_H, GAP, LABEL_W, PLOT_W, VALUE_W = 16, 4, 170, 360, 70


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def bar_chart(title: str, rows: Sequence[tuple[str, str, float]], fmt: str) -> str:
    """Return one horizontal bar chart as an inline ``<svg>``.

    ``rows`` are (label, group, value); bars scale to the largest value (0 when all are 0).
    """
    top = max((v for _, _, v in rows), default=0.0)
    height = 24 + len(rows) * (BAR_H + GAP)
    width = LABEL_W + PLOT_W + VALUE_W
    out = [f'<svg width="{width}" height="{height}" '
           f'role="img" aria-label="{_esc(title)}">',
           f'<text x="0" y="14" font-weight="bold">{_esc(title)}</text>']
    for n, (label, group, value) in enumerate(rows):
        y = 24 + n * (BAR_H + GAP)
        w = 0.0 if top <= 0 else PLOT_W * value / top
        colour = GROUP_COLOURS.get(group, "#777")
        out.append(f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 4}" text-anchor="end">'
                   f'{_esc(label)} ({_esc(group)})</text>')
        out.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" '
                   f'fill="{colour}"><title>{_esc(label)} {_esc(group)}: '
                   f'{_esc(fmt.format(value))}</title></rect>')
        out.append(f'<text x="{LABEL_W + w + 4:.1f}" y="{y + BAR_H - 4}">'
                   f'{_esc(fmt.format(value))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def report_section(report: Mapping[str, Any]) -> str:
    """One split's charts: a bar per model and user group (warm, cold) for each metric."""
    k = report.get("k", 10)
    head = (f"split {report['split']}, k = {k}, exclude seen = {report.get('exclude_seen')}, "
            f"{report.get('evaluated_users')} evaluated users, catalogue "
            f"{report.get('catalog_items')} items")
    parts = [f"<section><h2>{_esc(report['split'])} split</h2><p>{_esc(head)}</p>"]
    bar = report.get("quality_bar")
    if bar and "best_peer" in bar:
        verdict = "met" if bar["meets_bar"] else "NOT met"
        parts.append(f"<p>Quality bar: served {bar['served_ndcg']:.4f} vs best peer "
                     f"{_esc(bar['best_peer'])} {bar['best_peer_ndcg']:.4f}: "
                     f"<b>{verdict}</b>.</p>")
    if bar and "cap_cost" in bar:
        parts.append(f"<p>Diversity cap cost (served vs blend): "
                     f"{100 * bar['cap_cost']:+.1f}%.</p>")
    for r in report["results"]:
        if r.get("skipped"):
            parts.append(f"<p>{_esc(r['model'])}: skipped: {_esc(r['skipped'])}</p>")
    for key, title, fmt in METRICS:
        rows = [(r["model"], group, float(r[group][key]))
                for group in ("warm", "cold") for r in report["results"]
                if group in r and key in r[group]]
        if rows:
            parts.append(f'<div class="chart">{bar_chart(title.format(k=k), rows, fmt)}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def render_html(reports: Sequence[Mapping[str, Any]], title: str = "rankly evaluate") -> str:
    """Return the whole HTML document for ``reports`` (one section per report)."""
    style = ("body{font-family:sans-serif;margin:2em;color:#222}"
             "svg text{font-size:12px;font-family:sans-serif}"
             ".chart{display:inline-block;margin:0 2em 1.5em 0;vertical-align:top}")
    legend = " ".join(f'<span style="color:{c}">&#9632; {g} users</span>'
                      for g, c in GROUP_COLOURS.items())
    body = "\n".join(report_section(r) for r in reports)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{style}</style></head>\n<body>"
            f"<h1>{_esc(title)}</h1><p>{legend}</p>\n{body}\n</body></html>\n")


def check_writable(path: str | Path, option: str = "--html") -> None:
    """Raise ValueError naming ``option`` when ``path`` cannot be written as a file: checked
    before the evaluation runs, so that a long run is not thrown away at its last step."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        problem = "is a directory"
    elif not parent.is_dir():
        problem = f"{parent} is not a directory" if parent.exists() else f"no directory {parent}"
    elif not os.access(parent, os.W_OK | os.X_OK) or (out.exists()
                                                       and not os.access(out, os.W_OK)):
        problem = "permission denied"
    else:
        return
    raise ValueError(f"{option} {path}: {problem}")


def write_html(path: str | Path, reports: Sequence[Mapping[str, Any]],
               title: str = "rankly evaluate") -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8) and return the path."""
    out = Path(path)
    out.write_text(render_html(reports, title), encoding="utf-8")
    return out
