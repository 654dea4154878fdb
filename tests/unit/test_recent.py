"""The dashboard's recent requests and policy refusals, fed records and traces by hand."""

from __future__ import annotations

import pytest

from hedge.ledger import request_record
from hedge.policy import Plan, Refusal
from hedge.recent import RecentRequests
from hedge.trace import Attempt, Trace
from hedge.types import Usage

NO_CN = Refusal("deepseek", "no-cn", "origins", "origin CN is denied")
HOSTED = Refusal("mistral", "self-hosted-only", "hosting", "hosting hosted is not allowed")


def served(rid: str, route: str = "chat", plan: Plan | None = None, **fields: object) -> Trace:
    trace = Trace(route=route, request_id=rid, plan=plan)
    for name, value in fields.items():
        setattr(trace, name, value)
    return trace


def feed(recent: RecentRequests, trace: Trace, status: int, error: str | None = None) -> None:
    record = request_record(trace, {}, status, now=1_000.0)
    recent.observe(record, trace, error)


def test_keeps_metadata_of_the_last_requests_newest_first() -> None:
    recent = RecentRequests(size=3)
    for i in range(5):
        trace = served(f"r{i}", answered_by="mistral", stage=2, accepted=True, cache="miss")
        trace.attempts.append(Attempt("deepseek", 0.5, "upstream_error"))
        trace.attempts.append(Attempt("mistral", 0.25, None, Usage(10, 5)))
        feed(recent, trace, 200)
    failed = served("r5")
    feed(recent, failed, 502, "upstream_error")
    rows = recent.requests()
    assert [r["request_id"] for r in rows] == ["r5", "r4", "r3"]
    assert rows[0]["status"] == 502 and rows[0]["error"] == "upstream_error"
    assert rows[0]["answered_by"] is None and rows[0]["attempts"] == 0
    r4 = rows[1]
    assert r4 == {
        "request_id": "r4",
        "ts": pytest.approx(1_000.0),
        "route": "chat",
        "caller_key": None,
        "answered_by": "mistral",
        "stage": 2,
        "status": 200,
        "success": True,
        "cost_usd": 0.0,
        "latency_ms": r4["latency_ms"],
        "cache": "miss",
        "attempts": 2,
        "error": None,
    }
    assert not any("content" in r or "messages" in r for r in rows)  # metadata only


def test_refusals_aggregate_per_route_deployment_policy_and_rule() -> None:
    recent = RecentRequests()
    partly = Plan("chat", ("mistral",), (NO_CN,), ("no-cn",))
    wholly = Plan("chat", (), (NO_CN, HOSTED), ("no-cn", "self-hosted-only"))
    elsewhere = Plan("cn-only", (), (NO_CN,), ("no-cn",))
    feed(recent, served("a", plan=partly, answered_by="mistral"), 200)
    feed(recent, served("b", plan=partly, answered_by="mistral"), 200)
    feed(recent, served("c", plan=wholly), 403, "policy_refused")
    feed(recent, served("d", route="cn-only", plan=elsewhere), 403, "policy_refused")
    feed(recent, served("e", plan=Plan("chat", ("mistral",), (), ())), 200)  # nothing refused
    got = recent.refusals()
    assert [(r["route"], r["deployment"], r["policy"], r["rule"]) for r in got] == [
        ("cn-only", "deepseek", "no-cn", "origins"),
        ("chat", "mistral", "self-hosted-only", "hosting"),
        ("chat", "deepseek", "no-cn", "origins"),
    ]
    chat_cn = got[2]
    assert (chat_cn["count"], chat_cn["refused"], chat_cn["last_request_id"]) == (3, 1, "c")
    assert chat_cn["reason"] == "origin CN is denied"
    assert (got[1]["count"], got[1]["refused"]) == (1, 1)
    assert (got[0]["count"], got[0]["refused"]) == (1, 1)


def test_refusals_stay_bounded_dropping_the_least_recently_seen() -> None:
    recent = RecentRequests(max_refusals=2)
    for name in ("x", "y", "x", "z"):
        plan = Plan(name, ("ok",), (NO_CN,), ("no-cn",))
        feed(recent, served(name, route=name, plan=plan), 200)
    assert [(r["route"], r["count"]) for r in recent.refusals()] == [("z", 1), ("x", 2)]
