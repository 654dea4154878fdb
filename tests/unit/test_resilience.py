"""The pure decisions behind fail-over: retry timing, order, eligibility, breaker states."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hedge import trace
from hedge.backends.base import DeploymentStatus
from hedge.compose.breaker import Breaker, CircuitOpen
from hedge.compose.fallback import balanced_order, continuation, still_eligible
from hedge.compose.retry import retry_delay
from hedge.config import BreakerSettings, RetrySettings
from hedge.errors import ContentPolicy, ContextLengthExceeded, InvalidRequest, UpstreamError
from hedge.types import ChatRequest, ChatResponse, Choice, Chunk, Usage

SETTINGS = RetrySettings(
    attempts_per_deployment=3, backoff_initial_s=0.5, backoff_max_s=1.5, retry_after_cap_s=5
)


def upstream(
    retryable: bool = True, retry_after: float | None = None, code: str | None = None
) -> UpstreamError:
    return UpstreamError("x", retryable=retryable, retry_after_s=retry_after, code=code)


@pytest.mark.parametrize(
    ("error", "tried", "rng", "expected"),
    [
        (upstream(), 1, 1.0, 0.5),  # ceiling 0.5 * 2^0
        (upstream(), 2, 1.0, 1.0),  # ceiling 0.5 * 2^1
        (upstream(), 2, 0.25, 0.25),  # full jitter: anywhere in [0, ceiling]
        (upstream(), 1, 0.0, 0.0),
        (upstream(), 3, 1.0, None),  # attempts_per_deployment reached
        (upstream(retryable=False), 1, 1.0, None),
        (upstream(retry_after=2.0), 1, 0.0, 2.0),  # the upstream's word beats the jitter
        (upstream(retry_after=5.0), 1, 0.0, 5.0),  # at the cap: still waited for
        (upstream(retry_after=30.0), 1, 0.0, None),  # beyond the cap: fail over now
    ],
)
def test_retry_delay(error: UpstreamError, tried: int, rng: float, expected: float | None) -> None:
    assert retry_delay(error, tried, SETTINGS, lambda: rng) == expected


def test_backoff_is_capped() -> None:
    long = RetrySettings(attempts_per_deployment=10, backoff_initial_s=1, backoff_max_s=3)
    assert retry_delay(upstream(), 8, long, lambda: 1.0) == 3


def test_balanced_order_follows_weights() -> None:
    names = ["a", "b", "c"]
    assert balanced_order(names, {}, lambda: 0.0) == ["a", "b", "c"]
    # rng 0.99 picks the last by cumulative weight each time
    assert balanced_order(names, {}, lambda: 0.99) == ["c", "b", "a"]
    # a weight of 8 against 1 + 1: a point at 0.85 of the total lands on "a"'s share
    assert balanced_order(names, {"a": 8}, lambda: 0.75)[0] == "a"
    counts = {"a": 0, "b": 0}
    values = iter([i / 1000 for i in range(1000)] * 2)
    for _ in range(1000):
        counts[balanced_order(["a", "b"], {"a": 3}, lambda: next(values))[0]] += 1
    assert 740 <= counts["a"] <= 760  # 3:1


def test_still_eligible() -> None:
    windows = {"small": 4096, "big": 32768, "bigger": 131072, "unknown": None}
    later = ["big", "unknown", "bigger"]
    ctx = ContextLengthExceeded("too long")
    assert still_eligible(ctx, "small", later, windows) == ["big", "bigger"]
    assert still_eligible(ctx, "bigger", ["small"], windows) is None
    assert still_eligible(ctx, "unknown", later, windows) == ["big", "bigger"]
    assert still_eligible(upstream(), "small", later, windows) == later
    assert still_eligible(ContentPolicy("no"), "small", later, windows) is None
    assert still_eligible(InvalidRequest("bad"), "small", later, windows) is None


def test_continuation_appends_the_partial_answer_and_leaves_the_request_alone() -> None:
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "count"}], "stream": True}
    )
    cont = continuation(req, "1 2 3")
    assert [m.role for m in cont.messages] == ["user", "assistant"]
    assert cont.messages[-1].content == "1 2 3"
    assert cont.stream and len(req.messages) == 1


class Scripted:
    """A backend at the edge: answers or fails as scripted, counting calls."""

    name = "primary"
    accepts_prefill = False

    def __init__(self, outcomes: list[Exception | None]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def unsupported(self, request: ChatRequest) -> str | None:
        return None

    def status(self) -> DeploymentStatus:
        return DeploymentStatus("ready")

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return ChatResponse((Choice(0, "ok", "stop"),), Usage(1, 1), "m")

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        yield Chunk(content="x", finish_reason="stop")


REQ = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def call(breaker: Breaker) -> Any:
    async def go() -> Any:
        trace.current.set(trace.Trace(route="r"))
        try:
            return await breaker.complete(REQ)
        except Exception as e:
            return e

    return asyncio.run(go())


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    now = [0.0]
    inner = Scripted([upstream(), upstream(), upstream(), upstream(), None])
    b = Breaker(inner, BreakerSettings(failures=3, cooldown_s=10), clock=lambda: now[0])
    for _ in range(3):
        assert isinstance(call(b), UpstreamError)
    assert b.breaker_state() == "open" and b.status().breaker == "open"
    refused = call(b)
    assert isinstance(refused, CircuitOpen) and inner.calls == 3  # not sent upstream
    now[0] = 10.0
    assert b.breaker_state() == "half_open" and b.refusal() is None
    assert isinstance(call(b), UpstreamError)  # the probe fails: open again, a new cooldown
    assert b.breaker_state() == "open" and inner.calls == 4
    now[0] = 15.0
    assert b.breaker_state() == "open"
    now[0] = 20.0
    assert isinstance(call(b), ChatResponse)  # the probe succeeds: closed
    assert b.breaker_state() == "closed" and inner.calls == 5


def test_a_success_resets_the_failure_count() -> None:
    inner = Scripted([upstream(), upstream(), None, upstream(), upstream()])
    b = Breaker(inner, BreakerSettings(failures=3, cooldown_s=10), clock=lambda: 0.0)
    for _ in range(5):
        call(b)
    assert b.breaker_state() == "closed"


def test_client_errors_do_not_count_against_the_upstream() -> None:
    inner = Scripted([InvalidRequest("bad")] * 5)
    b = Breaker(inner, BreakerSettings(failures=2, cooldown_s=10), clock=lambda: 0.0)
    for _ in range(5):
        assert isinstance(call(b), InvalidRequest)
    assert b.breaker_state() == "closed"


def test_auth_failure_revokes_until_restored() -> None:
    inner = Scripted([upstream(retryable=False, code="upstream_auth")])
    b = Breaker(inner, BreakerSettings(), clock=lambda: 0.0)
    assert isinstance(call(b), UpstreamError)
    assert b.status().state == "revoked" and "credentials" in (b.status().detail or "")
    assert isinstance(call(b), CircuitOpen) and inner.calls == 1
    b.restore()
    assert isinstance(call(b), ChatResponse)


def test_every_call_is_recorded_and_budgeted() -> None:
    inner = Scripted([upstream(), None])
    b = Breaker(inner, BreakerSettings(failures=5), clock=lambda: 0.0)

    async def go() -> trace.Trace:
        t = trace.Trace(route="r", max_attempts=2)
        trace.current.set(t)
        for _ in range(2):
            with contextlib.suppress(UpstreamError):
                await b.complete(REQ)
        with pytest.raises(trace.BudgetExhausted):
            await b.complete(REQ)
        return t

    t = asyncio.run(go())
    assert [a.error for a in t.attempts] == ["x", None]
    assert t.attempts[1].usage == Usage(1, 1)
    assert inner.calls == 2
