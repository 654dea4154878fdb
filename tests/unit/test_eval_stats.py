"""Evaluation statistics and figures against hand computations."""

from __future__ import annotations

import math

import pytest

from hedge.evaluation.figures import Figures, axis, figures, frontier, paired
from hedge.evaluation.progress import eta_text, render
from hedge.evaluation.stats import mcnemar_exact, percentile, wilson
from hedge.evaluation.store import CaseResult

Z = 1.959963984540054


def test_wilson_against_a_hand_computation() -> None:
    # 7 of 20: p = 0.35, z^2 = 3.8414588.
    # centre = (0.35 + z^2/40) / (1 + z^2/20) = 0.4460365 / 1.1920729 = 0.3741688
    # half   = z / 1.1920729 * sqrt(0.35 * 0.65 / 20 + z^2 / 1600)
    #        = 1.6441645 * sqrt(0.011375 + 0.0024009) = 1.6441645 * 0.1173708 = 0.1929769
    low, high = wilson(7, 20)
    assert low == pytest.approx(0.3741688 - 0.1929769, abs=2e-7)
    assert high == pytest.approx(0.3741688 + 0.1929769, abs=2e-7)
    assert (round(low, 4), round(high, 4)) == (0.1812, 0.5671)  # as published tables give


def test_wilson_at_the_edges() -> None:
    # 0 of 10: the upper bound is z^2 / (n + z^2); 10 of 10 mirrors it.
    assert wilson(0, 10) == (0.0, pytest.approx(Z**2 / (10 + Z**2)))
    assert wilson(10, 10) == (pytest.approx(10 / (10 + Z**2)), 1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(500, 1000)
    assert low == pytest.approx(0.5 - Z * math.sqrt(0.25 / 1000), abs=1e-4)  # normal limit
    assert high == pytest.approx(0.5 + Z * math.sqrt(0.25 / 1000), abs=1e-4)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_mcnemar_exact_against_hand_computations() -> None:
    # 1 vs 7 discordant: 2 * P(X <= 1 | n=8, 1/2) = 2 * (1 + 8) / 256
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    # 0 vs 6: 2 * (1/2)^6
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # 0 vs 5 is not significant at 5% (0.0625); 0 vs 6 is (0.03125).
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_percentile_interpolates_like_numpy() -> None:
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 50) == pytest.approx(25.0)
    assert percentile(values, 90) == pytest.approx(37.0)
    assert percentile(values, 99) == pytest.approx(39.7)
    assert percentile(values, 0) == 10.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def result(case: str, passed: bool, **kw: object) -> CaseResult:
    fields: dict[str, object] = {
        "candidate": "a",
        "case_id": case,
        "passed": passed,
        "reason": "",
        "latency_ms": 100.0,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
        "tags": ("x",),
    }
    fields.update(kw)
    return CaseResult(**fields)  # type: ignore[arg-type]


def test_figures_of_one_candidate() -> None:
    rows = [
        result("1", True, latency_ms=100.0, tags=("sum",)),
        result("2", True, latency_ms=200.0, tags=("sum", "hard")),
        result("3", False, latency_ms=300.0, tags=("hard",)),
        result(
            "4", False, status="error", latency_ms=None, cost_usd=None, prompt_tokens=None, tags=()
        ),
    ]
    f = figures("a", "A", rows)
    assert (f.n, f.successes, f.errors, f.answered) == (4, 2, 1, 3)
    assert f.accuracy == 0.5
    assert (f.ci_low, f.ci_high) == wilson(2, 4)
    assert f.latency_p50_ms == 200.0
    assert f.latency_p90_ms == pytest.approx(280.0)
    assert f.prompt_tokens == 30
    assert f.completion_tokens == 20
    # A failed call whose usage is unknown is not billed; the answers' costs add up.
    assert f.cost_usd == pytest.approx(0.003)
    assert f.cost_per_success == pytest.approx(0.0015)
    assert f.latency_per_success_s == pytest.approx(0.3)
    assert f.by_tag == {"(untagged)": (0, 1), "hard": (1, 2), "sum": (2, 2)}


def test_an_unpriced_answer_makes_the_cost_unknown() -> None:
    f = figures("a", "A", [result("1", True), result("2", True, cost_usd=None)])
    assert f.cost_usd is None
    assert f.cost_per_success is None
    assert f.cost_per_case is None
    assert axis([f]) == "latency"
    nothing = figures("b", "B", [result("1", False)])
    assert nothing.cost_per_success is None  # no successes: no cost per success
    assert axis([nothing]) == "cost"


def fig(name: str, cost_per_case: float, accuracy: float, n: int = 100) -> Figures:
    successes = round(accuracy * n)
    return Figures(
        name=name, label=name, n=n, successes=successes, errors=0, ci_low=0, ci_high=1,
        latency_p50_ms=None, latency_p90_ms=None, latency_p99_ms=None,
        latency_total_s=float(n), answered=n, prompt_tokens=0, completion_tokens=0,
        cost_usd=cost_per_case * n,
    )  # fmt: skip


def test_pareto_frontier_keeps_only_undominated_candidates() -> None:
    rows = [
        fig("a", 0.001, 0.5),
        fig("b", 0.01, 0.9),
        fig("c", 0.02, 0.8),  # dearer and worse than b
        fig("d", 0.0005, 0.2),
        fig("e", 0.001, 0.4),  # as cheap as a, worse
    ]
    assert frontier(rows, "cost") == ["d", "a", "b"]
    # On latency every candidate takes 1 s per case: only the most accurate is undominated.
    assert frontier(rows, "latency") == ["b"]


def test_paired_counts_and_test() -> None:
    a = [result(str(i), i < 8, candidate="a") for i in range(10)]
    b = [result(str(i), i in (0, 8, 9), candidate="b") for i in range(10)]
    b.append(result("extra", True, candidate="b"))  # not answered by a: not paired
    p = paired("a", a, "b", b)
    assert p.n == 10
    assert (p.both, p.neither) == (1, 0)
    assert p.only_a == ("1", "2", "3", "4", "5", "6", "7")
    assert p.only_b == ("8", "9")
    assert p.p_value == pytest.approx(mcnemar_exact(7, 2))
    assert p.p_value == pytest.approx(2 * (1 + 9 + 36) / 512)
    assert not p.significant


def test_progress_line_and_eta() -> None:
    assert eta_text(None) == "--:--"
    assert eta_text(75) == "1:15"
    assert eta_text(3725) == "1:02:05"
    line = render("arith", done=15, total=40, passed=6, errors=1, ran=5, elapsed_s=10.0)
    # 5 cases in 10 s: 0.5 per second; 25 left: 50 s. Skipped (resumed) cases do not count.
    assert "15/40" in line
    assert " 38%" in line
    assert "0.50/s" in line
    assert "ETA 0:50" in line
    assert "passed 6" in line
    assert "errors 1" in line
    assert "ETA --:--" in render("arith", 0, 40, 0, 0, 0, 0.0)
