"""What a run's results say, per candidate and per pair of candidates. Pure.

A candidate's figures: accuracy with its 95% Wilson interval, errors, latency percentiles,
tokens, cost and cost per successful outcome, and accuracy per tag. A failed call (an error
after retries) counts as an unsuccessful outcome: it is what the caller would have got.

Cost is known only when every answered case was priced (its deployment has prices in
hedge.yaml); otherwise it is None and shown as unknown, never guessed. Where cost is unknown
for some candidate, the cost axis falls back to latency (seconds per case, per success): for
self-hosted models the time the hardware spends is what they cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hedge.evaluation.stats import mcnemar_exact, percentile, wilson
from hedge.evaluation.store import CaseResult
from hedge.replay import Point, pareto_front

UNTAGGED = "(untagged)"
Axis = Literal["cost", "latency"]


@dataclass(frozen=True, slots=True)
class Figures:
    name: str  # the candidate's name (the route sent)
    label: str
    n: int
    successes: int
    errors: int
    ci_low: float
    ci_high: float
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    latency_total_s: float  # over answered cases
    answered: int  # cases with a latency (answers, not errors)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None: some answer's price is unknown
    by_tag: dict[str, tuple[int, int]] = field(default_factory=dict)  # tag -> (successes, n)

    @property
    def accuracy(self) -> float:
        return self.successes / self.n if self.n else 0.0

    @property
    def cost_per_case(self) -> float | None:
        return None if self.cost_usd is None or not self.n else self.cost_usd / self.n

    @property
    def cost_per_success(self) -> float | None:
        """None when the cost is unknown or nothing succeeded."""
        return (
            None if self.cost_usd is None or not self.successes else self.cost_usd / self.successes
        )

    @property
    def latency_per_case_s(self) -> float | None:
        return self.latency_total_s / self.answered if self.answered else None

    @property
    def latency_per_success_s(self) -> float | None:
        return self.latency_total_s / self.successes if self.successes else None


def figures(name: str, label: str, results: Sequence[CaseResult]) -> Figures:
    n = len(results)
    successes = sum(1 for r in results if r.passed)
    latencies = [r.latency_ms for r in results if r.status == "ok" and r.latency_ms is not None]
    priced = [r.cost_usd for r in results if r.status == "ok"]
    cost = None if any(c is None for c in priced) else math.fsum(c or 0.0 for c in priced)
    if cost is not None:  # a failed call is billed only when its usage was reported
        cost += math.fsum(r.cost_usd or 0.0 for r in results if r.status == "error")
    low, high = wilson(successes, n)
    by_tag: dict[str, list[int]] = {}
    for r in results:
        for tag in r.tags or (UNTAGGED,):
            counts = by_tag.setdefault(tag, [0, 0])
            counts[0] += int(r.passed)
            counts[1] += 1
    return Figures(
        name=name,
        label=label,
        n=n,
        successes=successes,
        errors=sum(1 for r in results if r.status == "error"),
        ci_low=low,
        ci_high=high,
        latency_p50_ms=percentile(latencies, 50),
        latency_p90_ms=percentile(latencies, 90),
        latency_p99_ms=percentile(latencies, 99),
        latency_total_s=math.fsum(latencies) / 1000,
        answered=len(latencies),
        prompt_tokens=sum(r.prompt_tokens or 0 for r in results),
        completion_tokens=sum(r.completion_tokens or 0 for r in results),
        cost_usd=cost,
        by_tag={tag: (s, t) for tag, (s, t) in sorted(by_tag.items())},
    )


@dataclass(frozen=True, slots=True)
class Paired:
    """Two candidates on the cases both answered: who got which right, and the exact McNemar
    test of "they are equally accurate"."""

    a: str
    b: str
    n: int
    both: int
    neither: int
    only_a: tuple[str, ...]  # case ids A got right and B did not
    only_b: tuple[str, ...]
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired(
    a: str, results_a: Iterable[CaseResult], b: str, results_b: Iterable[CaseResult]
) -> Paired:
    by_case_b = {r.case_id: r.passed for r in results_b}
    both = neither = 0
    only_a: list[str] = []
    only_b: list[str] = []
    n = 0
    for r in results_a:
        if r.case_id not in by_case_b:
            continue
        n += 1
        other = by_case_b[r.case_id]
        if r.passed and other:
            both += 1
        elif r.passed:
            only_a.append(r.case_id)
        elif other:
            only_b.append(r.case_id)
        else:
            neither += 1
    return Paired(
        a,
        b,
        n,
        both,
        neither,
        tuple(only_a),
        tuple(only_b),
        mcnemar_exact(len(only_a), len(only_b)),
    )


def axis(rows: Sequence[Figures]) -> Axis:
    """Cost when every candidate's cost is known, else latency."""
    return "cost" if rows and all(f.cost_usd is not None for f in rows) else "latency"


def x_value(f: Figures, on: Axis) -> float | None:
    """Where a candidate sits on the plot's horizontal axis: cost or latency per case."""
    return f.cost_per_case if on == "cost" else f.latency_per_case_s


def frontier(rows: Sequence[Figures], on: Axis) -> list[str]:
    """The names of the candidates on the cost/accuracy Pareto frontier, cheapest first."""
    points = [
        Point(f.name, "candidate", x, f.accuracy) for f in rows if (x := x_value(f, on)) is not None
    ]
    return [p.name for p in pareto_front(points)]


def by_candidate(results: Iterable[CaseResult]) -> dict[str, list[CaseResult]]:
    out: dict[str, list[CaseResult]] = {}
    for r in results:
        out.setdefault(r.candidate, []).append(r)
    return out
