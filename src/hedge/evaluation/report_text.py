"""A run's figures, and a comparison of two runs, as plain text for a terminal. Pure."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from hedge.evaluation.figures import Axis, Figures, Paired, axis, frontier
from hedge.evaluation.store import CaseResult, RunInfo


def usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    return f"${value:.6f}" if abs(value) < 0.01 else f"${value:,.4f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def interval(f: Figures) -> str:
    return f"{f.ci_low:.2f}-{f.ci_high:.2f}"


def date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to fit; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


SUMMARY_HEAD = (
    "candidate",
    "n",
    "accuracy",
    "95% CI",
    "errors",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "tokens in",
    "tokens out",
    "cost",
    "cost/success",
)


def summary_rows(rows: Sequence[Figures]) -> list[list[str]]:
    return [
        [
            f.label,
            str(f.n),
            f"{f.accuracy:.3f}",
            interval(f),
            str(f.errors),
            ms(f.latency_p50_ms),
            ms(f.latency_p90_ms),
            ms(f.latency_p99_ms),
            f"{f.prompt_tokens:,}",
            f"{f.completion_tokens:,}",
            usd(f.cost_usd),
            usd(f.cost_per_success) if f.cost_usd is not None else "unknown",
        ]
        for f in rows
    ]


def tag_rows(rows: Sequence[Figures]) -> tuple[list[str], list[list[str]]]:
    tags = sorted({t for f in rows for t in f.by_tag})
    head = ["tag", *(f.label for f in rows)]
    body = []
    for tag in tags:
        cells = [tag]
        for f in rows:
            s, n = f.by_tag.get(tag, (0, 0))
            cells.append(f"{s / n:.2f} ({s}/{n})" if n else "-")
        body.append(cells)
    return head, body


def paired_line(p: Paired, labels: dict[str, str]) -> str:
    a, b = labels.get(p.a, p.a), labels.get(p.b, p.b)
    verdict = "significant at 5%" if p.significant else "not significant at 5%"
    return (
        f"{a} vs {b}: {p.n} paired cases; only {a} right: {len(p.only_a)}, only {b} right: "
        f"{len(p.only_b)}, both: {p.both}, neither: {p.neither}; exact McNemar p = "
        f"{p.p_value:.4g} ({verdict})"
    )


def axis_note(on: Axis) -> str:
    if on == "cost":
        return "cost axis: USD per case"
    return (
        "cost axis: seconds per case (the cost of some candidate is unknown: its deployment "
        "has no prices in hedge.yaml)"
    )


@dataclass(frozen=True, slots=True)
class RunView:
    """What both reports show of a run."""

    run: RunInfo
    rows: list[Figures]
    pairs: list[Paired]
    missing: int  # (candidate, case) pairs not run yet

    @property
    def axis(self) -> Axis:
        return axis(self.rows)

    @property
    def frontier(self) -> list[str]:
        return frontier(self.rows, self.axis)


def render_run(view: RunView) -> str:
    run = view.run
    labels = {c.name: c.label for c in run.candidates}
    lines = [
        f"run {run.run_id}: suite '{run.suite}' ({len(run.case_ids)} cases, {run.suite_source}), "
        f"{run.mode} on {run.target}, {date(run.created)}",
    ]
    if view.missing:
        lines.append(
            f"INCOMPLETE: {view.missing} case(s) not run yet; continue with "
            f"hedge eval --resume {run.run_id}"
        )
    lines += ["", table(SUMMARY_HEAD, summary_rows(view.rows))]
    head, body = tag_rows(view.rows)
    if len(body) > 1 or (body and body[0][0] != "(untagged)"):
        lines += ["", "accuracy per tag:", table(head, body)]
    if view.pairs:
        lines += ["", "paired comparisons:"] + [f"  {paired_line(p, labels)}" for p in view.pairs]
    if view.rows:
        names = ", ".join(labels.get(n, n) for n in view.frontier)
        lines += ["", f"Pareto frontier ({axis_note(view.axis)}): {names or '-'}"]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The same candidate (or one candidate each) in two runs of one suite, case by case."""

    before: RunInfo
    after: RunInfo
    label_before: str
    label_after: str
    paired: Paired  # a = before, b = after
    reasons: dict[str, tuple[CaseResult, CaseResult]]  # case id -> (before, after)

    @property
    def regressions(self) -> tuple[str, ...]:
        return self.paired.only_a

    @property
    def improvements(self) -> tuple[str, ...]:
        return self.paired.only_b


def _brief(text: str | None, limit: int = 70) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def render_comparison(c: Comparison) -> str:
    p = c.paired
    before = f"{c.before.run_id} ({c.label_before})"
    after = f"{c.after.run_id} ({c.label_after})"
    lines = [
        f"compare suite '{c.before.suite}': {before} -> {after}",
    ]
    if c.before.suite_sha256 != c.after.suite_sha256:
        lines.append("note: the suite file changed between the runs; cases are matched by id")
    acc_a = (p.both + len(p.only_a)) / p.n if p.n else 0.0
    acc_b = (p.both + len(p.only_b)) / p.n if p.n else 0.0
    lines.append(
        f"{p.n} cases in both: accuracy {acc_a:.3f} -> {acc_b:.3f}; "
        f"{len(c.regressions)} regression(s), {len(c.improvements)} improvement(s); "
        f"exact McNemar p = {p.p_value:.4g} "
        f"({'significant' if p.significant else 'not significant'} at 5%)"
    )
    for title, ids in (("regressions", c.regressions), ("improvements", c.improvements)):
        if not ids:
            continue
        lines += ["", f"{title} (right before, wrong after)" if title == "regressions" else
                  f"{title} (wrong before, right after)"]  # fmt: skip
        for case_id in ids:
            old, new = c.reasons[case_id]
            lines.append(f"  {case_id}")
            lines.append(f"    before: {_brief(old.output or old.error)!r}  [{old.reason}]")
            lines.append(f"    after:  {_brief(new.output or new.error)!r}  [{_brief(new.reason)}]")
    return "\n".join(lines)
