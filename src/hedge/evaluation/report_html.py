"""A run as one self-contained HTML file: no scripts, fonts, images or styles from anywhere
else, the cost/accuracy plot drawn here as inline SVG. Pure: figures in, a string out.

Elements a reader (or a test) can find: `table#summary` (one row per candidate, `tr.candidate`),
`table#per-tag`, `svg#pareto-plot` (a `circle.point` per candidate, `polyline.frontier` for the
Pareto frontier), `section#paired` (the exact McNemar tests) and `table#cases` (every answer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from hedge.evaluation.figures import Axis, Figures, x_value
from hedge.evaluation.report_text import (
    SUMMARY_HEAD,
    RunView,
    axis_note,
    date,
    paired_line,
    summary_rows,
    tag_rows,
)
from hedge.evaluation.store import CaseResult

WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 20, 60  # plot margins (labels go right)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #1b1b1b; max-width: 1100px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #555; margin: 0 0 4px; }
.warn { background: #fff4d6; border: 1px solid #e8c66a; padding: 6px 10px; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 9px; text-align: right;
         vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
#summary td, #summary th, #per-tag td, #per-tag th { white-space: nowrap; }
td.pass { color: #176b2c; } td.fail { color: #a01818; } td.error { color: #8a5a00; }
#cases td { text-align: left; max-width: 360px; }
#cases code { white-space: pre-wrap; word-break: break-word; font-size: 12px; }
svg text { font: 12px system-ui, sans-serif; fill: #222; }
.frontier-mark { font-weight: 600; }
"""


def _fmt_x(value: float, on: Axis) -> str:
    if on == "latency":
        return f"{value:.2f} s"
    if value == 0:
        return "$0"
    return f"${value:.3g}"


def _ticks(high: float, count: int = 5) -> list[float]:
    if high <= 0:
        return [0.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def plot(rows: Sequence[Figures], on: Axis, frontier: Sequence[str]) -> str:
    """Accuracy (with its 95% interval) against cost (or latency) per case, as inline SVG."""
    # Cost per case is a tiny number: shown per 1,000 cases, which reads like a price list.
    scale = 1000.0 if on == "cost" else 1.0
    placed = [(f, x * scale) for f in rows if (x := x_value(f, on)) is not None]
    top = max((x for _, x in placed), default=0.0)
    ticks = _ticks(top * 1.1 if top > 0 else 1.0)
    span = ticks[-1] if ticks[-1] > 0 else 1.0
    inner_w = WIDTH - LEFT - RIGHT
    inner_h = HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + inner_w * x / span

    def sy(y: float) -> float:
        return TOP + inner_h * (1 - y)

    label = "USD per 1,000 cases" if on == "cost" else "seconds per case (cost unknown)"
    parts = [
        f'<svg id="pareto-plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="accuracy against {escape(label)}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="#fafafa" '
        'stroke="#bbb"/>',
    ]
    for y in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{LEFT - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>'
        )
    for x in ticks:
        parts.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{TOP + inner_h}" '
            f'y2="{TOP + inner_h + 5}" stroke="#888"/>'
            f'<text x="{sx(x):.1f}" y="{TOP + inner_h + 19}" text-anchor="middle">'
            f"{escape(_fmt_x(x, on))}</text>"
        )
    parts.append(
        f'<text x="{LEFT + inner_w / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle">'
        f"{escape(label)}</text>"
        f'<text transform="translate(16 {TOP + inner_h / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">accuracy (95% CI)</text>'
    )
    where = {f.name: (sx(x), f) for f, x in placed}
    line = [(where[n][0], sy(where[n][1].accuracy)) for n in frontier if n in where]
    if line:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
        parts.append(
            f'<polyline class="frontier" points="{points}" fill="none" stroke="#444" '
            'stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
    for i, (f, x) in enumerate(placed):
        colour = COLOURS[i % len(COLOURS)]
        cx, cy = sx(x), sy(f.accuracy)
        on_front = f.name in frontier
        parts.append(
            f'<line class="ci" x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(f.ci_low):.1f}" '
            f'y2="{sy(f.ci_high):.1f}" stroke="{colour}" stroke-width="2" opacity="0.6"/>'
            f'<circle class="point{" on-frontier" if on_front else ""}" cx="{cx:.1f}" '
            f'cy="{cy:.1f}" r="6" fill="{colour if on_front else "white"}" stroke="{colour}" '
            f'stroke-width="2"><title>{escape(f.label)}: accuracy {f.accuracy:.3f} '
            f"({f.ci_low:.2f}-{f.ci_high:.2f}), {escape(_fmt_x(x, on))} "
            f"{'per 1,000 cases' if on == 'cost' else 'per case'}</title></circle>"
            f'<text x="{cx + 9:.1f}" y="{cy - 7:.1f}"'
            f"{' class=' + chr(34) + 'frontier-mark' + chr(34) if on_front else ''}>"
            f"{escape(f.label)}</text>"
        )
    parts.append(
        f'<text x="{LEFT + inner_w + 12}" y="{TOP + 14}">filled: on the Pareto</text>'
        f'<text x="{LEFT + inner_w + 12}" y="{TOP + 30}">frontier (dashed)</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _table(
    table_id: str, head: Sequence[str], rows: Sequence[Sequence[str]], row_class: str
) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        f'<tr class="{row_class}">' + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _case_cell(r: CaseResult | None) -> str:
    if r is None:
        return '<td class="missing">not run</td>'
    if r.status == "error":
        return f'<td class="error">error<br><code>{escape(r.error or "")}</code></td>'
    mark, cls = ("pass", "pass") if r.passed else ("fail", "fail")
    text = r.output or ""
    shown = text if len(text) <= 400 else text[:397] + "..."
    return (
        f'<td class="{cls}" title="{escape(r.reason)}">{mark}<br><code>{escape(shown)}</code></td>'
    )


def cases_table(view: RunView, results: Sequence[CaseResult]) -> str:
    got = {(r.candidate, r.case_id): r for r in results}
    labels = [c.label for c in view.run.candidates]
    head = "".join(f"<th>{escape(h)}</th>" for h in ["case", *labels])
    body = []
    for case_id in view.run.case_ids:
        cells = "".join(_case_cell(got.get((c.name, case_id))) for c in view.run.candidates)
        body.append(f'<tr class="case"><td>{escape(case_id)}</td>{cells}</tr>')
    return f'<table id="cases"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render(view: RunView, results: Sequence[CaseResult]) -> str:
    run = view.run
    labels = {c.name: c.label for c in run.candidates}
    title = f"hedge eval: {run.suite} ({run.run_id})"
    front = ", ".join(labels.get(n, n) for n in view.frontier) or "-"
    head, body = tag_rows(view.rows)
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">suite <b>{escape(run.suite)}</b> ({len(run.case_ids)} cases, '
        f"{escape(run.suite_source)}, sha256 {escape(run.suite_sha256[:12])}); "
        f"{escape(run.mode)} on {escape(run.target)}; started {escape(date(run.created))}</p>",
    ]
    if view.missing:
        sections.append(
            f'<p class="warn">Incomplete: {view.missing} case(s) not run yet '
            f"(hedge eval --resume {escape(run.run_id)}).</p>"
        )
    sections += [
        "<h2>Candidates</h2>",
        _table("summary", SUMMARY_HEAD, summary_rows(view.rows), "candidate"),
        '<p class="meta">accuracy: successes / cases (a failed request counts as a failure); '
        "95% CI: Wilson score interval; latency percentiles over answered cases; cost from "
        "each call's usage at its deployment's prices, unknown where hedge.yaml gives none.</p>",
        "<h2>Cost against accuracy</h2>"
        if view.axis == "cost"
        else "<h2>Latency against accuracy (cost unknown)</h2>",
        plot(view.rows, view.axis, view.frontier),
        f'<p class="meta">Pareto frontier: {escape(front)}. {escape(axis_note(view.axis))}.</p>',
        "<h2>Accuracy per tag</h2>",
        _table("per-tag", head, body, "tag"),
    ]
    paired = "".join(f"<li>{escape(paired_line(p, labels))}</li>" for p in view.pairs)
    sections.append(
        '<section id="paired"><h2>Paired significance test</h2>'
        + (
            f"<ul>{paired}</ul>"
            if paired
            else '<p class="meta">One candidate: nothing to compare.</p>'
        )
        + "</section>"
    )
    sections += ["<h2>Every case</h2>", cases_table(view, results)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
