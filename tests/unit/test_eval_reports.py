"""The run's reports (terminal and HTML) and the SQLite store, on hand-made results."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from hedge.evaluation import report_html
from hedge.evaluation.commands import build_view, view_json
from hedge.evaluation.figures import paired
from hedge.evaluation.report_text import Comparison, render_comparison, render_run
from hedge.evaluation.store import (
    Candidate,
    CaseResult,
    RunInfo,
    SqliteEvalStore,
    StoreError,
)
from hedge.store import SCHEMA_VERSION as LEDGER_SCHEMA_VERSION
from hedge.store.sqlite import SqliteStore

CANDIDATES = (
    Candidate("eval:small", "small", "deployment", {"deployments": ["small"]}),
    Candidate("big", "big", "route", {"deployments": ["big-dep"]}),
)


def run_info(run_id: str = "r1", cases: int = 6) -> RunInfo:
    return RunInfo(
        run_id=run_id, created=1_800_000_000.0, suite="tiny", suite_source="tiny.jsonl",
        suite_sha256="ab" * 32, suite_text="---\n", mode="in-process", target="hedge.yaml",
        candidates=CANDIDATES, case_ids=tuple(f"c{i}" for i in range(cases)),
    )  # fmt: skip


def results() -> list[CaseResult]:
    out = []
    for i in range(6):
        out.append(
            CaseResult(
                "eval:small", f"c{i}", passed=i < 2, reason="r", output=f"small {i}",
                latency_ms=100.0 + i, prompt_tokens=10, completion_tokens=3, cost_usd=0.0001,
                tags=("easy",) if i < 3 else ("hard",), ts=float(i),
            )
        )  # fmt: skip
        out.append(
            CaseResult(
                "big", f"c{i}", passed=i != 5, reason="r", output=f"big {i}",
                latency_ms=900.0, prompt_tokens=10, completion_tokens=4, cost_usd=0.002,
                tags=("easy",) if i < 3 else ("hard",), ts=float(i),
            )
        )  # fmt: skip
    out[1] = CaseResult(
        "big", "c0", False, "the request failed", status="error", error="502 <all failed>"
    )
    out[2] = CaseResult(
        "eval:small", "c1", False, "nope", output="<script>alert('x')</script>", latency_ms=1.0,
        cost_usd=0.0001, tags=("easy",),
    )  # fmt: skip
    return out


def test_terminal_report() -> None:
    text = render_run(build_view(run_info(), results()))
    assert "run r1: suite 'tiny' (6 cases, tiny.jsonl), in-process on hedge.yaml" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line[:5] in ("small", "big  ")}
    assert re.search(r"^small\s+6\s+0\.167\s+0\.03-0\.56\s+0\s", lines["small"])
    assert re.search(r"^big\s+6\s+0\.667\s+0\.30-0\.90\s+1\s", lines["big"])
    assert "accuracy per tag:" in text
    assert "small vs big: 6 paired cases; only small right: 1, only big right: 4" in text
    assert "Pareto frontier (cost axis: USD per case): small, big" in text
    incomplete = render_run(build_view(run_info(cases=7), results()))
    assert "INCOMPLETE: 2 case(s) not run yet; continue with hedge eval --resume r1" in incomplete


def test_html_report_is_self_contained_and_escaped() -> None:
    page = report_html.render(build_view(run_info(), results()), results())
    assert page.startswith("<!DOCTYPE html>")
    for element in ('<table id="summary">', '<table id="per-tag">', '<svg id="pareto-plot"',
                    '<section id="paired">', '<table id="cases">'):  # fmt: skip
        assert element in page
    assert page.count('<tr class="candidate">') == 2
    assert page.count('<tr class="case">') == 6
    assert page.count('class="point') == 2
    assert '<polyline class="frontier"' in page
    # Nothing is fetched from anywhere: no scripts, no links, no external sources.
    assert "<script" not in page
    assert not re.search(r"\b(src|href)=", page)
    assert "url(" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "502 &lt;all failed&gt;" in page


def test_json_view() -> None:
    data = view_json(build_view(run_info(), results()))
    small, big = data["candidates"]
    assert small["label"] == "small"
    assert small["accuracy"] == pytest.approx(1 / 6)
    assert big["errors"] == 1
    assert data["paired"][0]["only_a"] == ["c0"]
    assert data["paired"][0]["only_b"] == ["c1", "c2", "c3", "c4"]
    assert data["pareto_frontier"] == ["small", "big"]


def test_comparison_lists_regressions_case_by_case() -> None:
    before = [CaseResult("big", f"c{i}", True, "ok", output="12") for i in range(4)]
    after = [
        CaseResult("big", "c0", True, "ok", output="12"),
        CaseResult("big", "c1", False, "expected 12, the answer's last number is 13", output="13"),
        CaseResult("big", "c2", False, "the request failed", status="error", error="503 busy"),
        CaseResult("big", "c3", True, "ok", output="12"),
    ]
    p = paired("big", before, "big", after)
    c = Comparison(
        run_info("r1"), run_info("r2"), "big", "big", p,
        {i: (before[int(i[1])], after[int(i[1])]) for i in (*p.only_a, *p.only_b)},
    )  # fmt: skip
    text = render_comparison(c)
    assert "4 cases in both: accuracy 1.000 -> 0.500; 2 regression(s), 0 improvement(s)" in text
    assert "exact McNemar p = 0.5" in text
    assert "regressions (right before, wrong after)" in text
    assert "before: '12'  [ok]" in text
    assert "after:  '13'  [expected 12, the answer's last number is 13]" in text
    assert "after:  '503 busy'  [the request failed]" in text


def test_sqlite_store_round_trip_beside_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteStore(path)
    ledger.open()
    ledger.close()
    store = SqliteEvalStore(path)
    store.open()
    run = run_info()
    store.create_run(run)
    with pytest.raises(StoreError, match="already exists"):
        store.create_run(run)
    for r in results():
        store.put(run.run_id, r)
    fixed = CaseResult("big", "c0", True, "retried", output="ok", ts=99.0)
    store.put(run.run_id, fixed)  # a retried error replaces the stored one
    got = store.results(run.run_id)
    assert len(got) == 12
    assert next(r for r in got if (r.candidate, r.case_id) == ("big", "c0")) == fixed
    assert store.run("r1") == run
    assert store.run("nope") is None
    assert [(r.run_id, n) for r, n in store.runs()] == [("r1", 12)]
    store.close()
    conn = sqlite3.connect(path)
    # The ledger's schema version is its own; ours lives in eval_schema.
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LEDGER_SCHEMA_VERSION
    assert conn.execute("SELECT version FROM eval_schema").fetchall() == [(1,)]
    conn.execute("UPDATE eval_schema SET version = 99")
    conn.commit()
    conn.close()
    again = SqliteEvalStore(path)
    with pytest.raises(StoreError, match="schema version 99, written by a newer hedge"):
        again.open()
    ledger = SqliteStore(path)
    ledger.open()  # and the ledger still opens its file
    ledger.close()


def test_store_refuses_what_is_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this is not SQLite at all " * 100)
    with pytest.raises(StoreError, match="cannot be used"):
        SqliteEvalStore(bad).open()
    with pytest.raises(StoreError, match="is a directory"):
        SqliteEvalStore(tmp_path).open()


@pytest.mark.parametrize("cost", [0.0, 1e-7, 0.3])
def test_every_point_is_drawn_inside_the_plot(cost: float) -> None:
    rows = [
        CaseResult(c.name, f"c{i}", i % 2 == 0, "", output="x", latency_ms=1300.0 * (j + 1),
                   cost_usd=cost * (j + 1))
        for j, c in enumerate(CANDIDATES)
        for i in range(6)
    ]  # fmt: skip
    svg = report_html.render(build_view(run_info(), rows), rows)
    points = re.findall(r'<circle class="point[^"]*" cx="([\d.]+)" cy="([\d.]+)"', svg)
    assert len(points) == 2
    right = report_html.WIDTH - report_html.RIGHT
    bottom = report_html.HEIGHT - report_html.BOTTOM
    for x, y in points:
        assert report_html.LEFT <= float(x) <= right
        assert report_html.TOP <= float(y) <= bottom
