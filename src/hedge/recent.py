"""What the dashboard shows of the last requests: a ring buffer of their metadata, and the
policy refusals they met, aggregated.

`RecentRequests.observe` is a `Gateway.observers` callable, run on the event loop for every
finished request. It keeps the record's metadata only (route, who answered, stage, outcome,
cost, latency), never a prompt or a completion, and in bounded memory: the last `size`
requests, and at most `max_refusals` distinct (route, deployment, policy, rule) refusals, the
least recently seen dropped first. Each process keeps its own (one per worker).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from hedge.ledger import RequestRecord
from hedge.trace import Trace

RefusalKey = tuple[str, str, str, str]  # route, deployment, policy, rule


@dataclass(frozen=True, slots=True)
class RecentRequest:
    request_id: str
    ts: float  # Unix time it finished
    route: str
    caller_key: str | None
    answered_by: str | None
    stage: int | None
    status: int
    success: bool | None
    cost_usd: float
    latency_ms: float
    cache: str | None
    attempts: int
    error: str | None  # the error's code, when the request failed with one


@dataclass(slots=True)
class SeenRefusal:
    """One policy rule refusing one deployment of a route, over the requests that met it.
    `refused` counts the requests that no deployment was left for (answered 403); the others
    were free to go to a deployment the policies admitted."""

    route: str
    deployment: str
    policy: str
    rule: str
    reason: str
    count: int = 0
    refused: int = 0
    last_ts: float = 0.0
    last_request_id: str = ""


class RecentRequests:
    def __init__(self, size: int = 200, max_refusals: int = 100) -> None:
        self._requests: deque[RecentRequest] = deque(maxlen=size)
        self._refusals: dict[RefusalKey, SeenRefusal] = {}
        self._max_refusals = max_refusals

    def observe(self, record: RequestRecord, trace: Trace, error: str | None) -> None:
        end = record.ts + record.latency_ms / 1000
        self._requests.append(
            RecentRequest(
                request_id=record.request_id,
                ts=end,
                route=record.route,
                caller_key=record.caller_key,
                answered_by=record.answered_by,
                stage=record.stage,
                status=record.status,
                success=record.success,
                cost_usd=record.cost_usd,
                latency_ms=record.latency_ms,
                cache=record.cache,
                attempts=len(record.attempts),
                error=error,
            )
        )
        plan = trace.plan
        if plan is None or not plan.refusals:
            return
        refused = not plan.admitted
        for r in plan.refusals:
            key = (record.route, r.deployment, r.policy, r.rule)
            seen = self._refusals.pop(key, None)  # re-inserted last: the dict is LRU-ordered
            if seen is None:
                seen = SeenRefusal(record.route, r.deployment, r.policy, r.rule, r.reason)
            seen.reason = r.reason
            seen.count += 1
            seen.refused += refused
            seen.last_ts = end
            seen.last_request_id = record.request_id
            self._refusals[key] = seen
        while len(self._refusals) > self._max_refusals:
            del self._refusals[next(iter(self._refusals))]

    def requests(self) -> list[dict[str, Any]]:
        """The recent requests, newest first."""
        return [asdict(r) for r in reversed(self._requests)]

    def refusals(self) -> list[dict[str, Any]]:
        """The refusals seen, most recently seen first."""
        return [asdict(s) for s in reversed(self._refusals.values())]
