"""The record of one request as it is served: every upstream call made, and the request's budget.

The gateway opens a Trace per request and makes it current for the task that serves it (a
context variable), so the wrappers that make or repeat upstream calls can record each call and
respect the request's budget without threading a parameter through the Backend protocol.
Child tasks (hedged requests) inherit the same Trace.
"""

from __future__ import annotations

import itertools
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from hedge import policy
from hedge.errors import HedgeError
from hedge.types import Usage


@dataclass(slots=True)
class Attempt:
    deployment: str
    seconds: float = 0.0
    error: str | None = None
    usage: Usage | None = None
    started: float = field(default_factory=time.perf_counter)  # for tracing spans


class BudgetExhausted(HedgeError):
    """The request used up its attempts or its deadline."""

    status = 504
    type = "upstream_error"
    code = "request_budget_exhausted"


_ids = itertools.count()


def new_request_id() -> str:
    """`chatcmpl-` + the time in microseconds (13 hex digits) + a counter (3) + 64 random bits
    (16). Unguessable (feedback is keyed by it) and in time order: the ledger's indexes on
    request ids then grow at their end instead of at random places, which measured 5x less
    CPU per ledger record (README, Performance)."""
    return f"chatcmpl-{time.time_ns() // 1000:013x}{next(_ids) & 0xFFF:03x}{os.urandom(8).hex()}"


@dataclass(slots=True)
class Trace:
    """What happened while serving one request."""

    route: str
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    upstream_seconds: float = 0.0
    answered_by: str | None = None
    resumed_on: str | None = None  # a stream that broke mid-answer and continued elsewhere
    plan: policy.Plan | None = None
    caller_key: str | None = None  # the API key's id (never its secret), when keys are on
    stage: int | None = None  # the cascade stage whose answer was returned
    rejections: list[str] = field(default_factory=list)  # why earlier stages escalated
    accepted: bool | None = None  # the answer's validator verdict (None: none judged it)
    cache: str | None = None  # hit | semantic-hit | miss | bypass, on routes with a cache
    similarity: float | None = None  # a semantic hit's cosine similarity
    prompt_tokens_saved: int | None = None  # by prompt compaction, on routes that compact
    max_attempts: int = 1_000
    deadline: float = float("inf")  # perf_counter time

    def overhead_ms(self) -> float:
        """Wall time spent in the gateway itself, excluding time waiting on upstreams."""
        return max(0.0, (time.perf_counter() - self.started - self.upstream_seconds) * 1000)

    def remaining_s(self) -> float:
        return self.deadline - time.perf_counter()

    @property
    def deadline_s(self) -> float:
        return self.deadline - self.started

    def begin(self, deployment: str) -> Attempt:
        """Count one upstream call, or refuse it when the request's budget is spent."""
        if len(self.attempts) >= self.max_attempts:
            raise BudgetExhausted(
                f"Request gave up after {len(self.attempts)} upstream calls (max_attempts): "
                + "; ".join(f"{a.deployment}: {a.error}" for a in self.attempts)
            )
        if self.remaining_s() <= 0:
            raise BudgetExhausted(
                f"Request gave up at its deadline after {len(self.attempts)} upstream calls: "
                + "; ".join(f"{a.deployment}: {a.error}" for a in self.attempts)
            )
        attempt = Attempt(deployment)
        self.attempts.append(attempt)
        return attempt


current: ContextVar[Trace | None] = ContextVar("hedge_trace", default=None)


def active() -> Trace:
    """The current request's trace; outside a request (CLI tools, tests), a throwaway one."""
    trace = current.get()
    if trace is None:
        trace = Trace(route="")
        current.set(trace)
    return trace
