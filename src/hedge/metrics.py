"""Prometheus metrics: what every finished request did, and the state of every deployment.

`Metrics.observe` is a gateway observer (see `Gateway.observers`): it turns each request's
ledger record into counters and histograms (requests, attempts, errors by code, latency,
tokens, spend, cache outcomes, prompt tokens saved, successes). Breaker states and cost per
successful outcome per route are computed when Prometheus scrapes, from the live breakers and
the counters, so the request path only increments.

With `hedge serve --workers N`, each worker process writes its samples to files in
`$PROMETHEUS_MULTIPROC_DIR` (set by the supervisor before the workers start) and whichever
worker answers a scrape sums them all, as prometheus_client's multiprocess mode does; the
breaker gauge then comes from the answering worker's breakers (the same in every worker when
`shared_state` is on).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hedge.gateway import Gateway
    from hedge.ledger import RequestRecord
    from hedge.trace import Trace

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# Gateway overhead is sub-millisecond and upstream calls take seconds: buckets cover both.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# Breaker states as numbers, so one gauge can be graphed and alerted on.
BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0, "revoked": 3.0}


class Metrics:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._routes = frozenset(gateway.routes)
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode samples go to files; the registry used for scrapes reads them.
        where = None if multiprocess else self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, list(labels), registry=where)

        self.requests = counter(
            "hedge_requests",
            "Requests served, by route, answering deployment and HTTP status.",
            *("route", "deployment", "status"),
        )
        self.errors = counter(
            "hedge_request_errors", "Failed requests by route and error code.", "route", "code"
        )
        self.attempts = counter(
            "hedge_attempts",
            "Upstream calls by deployment and outcome (ok or error).",
            *("deployment", "outcome"),
        )
        self.latency = Histogram(
            "hedge_request_duration_seconds",
            "Time from request to answer (streams: to the last event), by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=where,
        )
        self.tokens = counter(
            "hedge_tokens",
            "Tokens by deployment and kind (prompt, completion, cached).",
            *("deployment", "kind"),
        )
        self.spend = counter("hedge_spend_usd", "Spend in USD by route.", "route")
        self.successes = counter(
            "hedge_successes",
            "Requests a validator accepted at answer time, by route (feedback comes later).",
            "route",
        )
        self.cache = counter(
            "hedge_cache",
            "Cache lookups by route and result (hit, semantic-hit, miss, bypass).",
            *("route", "result"),
        )
        self.saved = counter(
            "hedge_prompt_tokens_saved",
            "Prompt tokens prompt compaction removed (estimated), by route.",
            "route",
        )
        # Where scrape-time figures read the counters from: every process's files, or ours.
        self.sources: list[Any] = [self.spend, self.successes]
        if multiprocess:
            from prometheus_client import multiprocess as mp

            self.sources = [mp.MultiProcessCollector(self.registry)]  # type: ignore[no-untyped-call]
        self.registry.register(_Live(gateway, self))

    def observe(self, record: RequestRecord, trace: Trace, error: str | None) -> None:
        # A client can name any model: only configured routes become label values, so the
        # series stay bounded.
        route = record.route if record.route in self._routes else "_unknown"
        child = self._child
        child(self.requests, route, record.answered_by or "", str(record.status)).inc()
        if record.status >= 400:
            child(self.errors, route, error or f"http_{record.status}").inc()
        child(self.latency, route).observe(record.latency_ms / 1000)
        for a in record.attempts:
            child(self.attempts, a.deployment, "error" if a.error else "ok").inc()
            if a.prompt_tokens:
                child(self.tokens, a.deployment, "prompt").inc(a.prompt_tokens)
            if a.completion_tokens:
                child(self.tokens, a.deployment, "completion").inc(a.completion_tokens)
            if a.cached_tokens:
                child(self.tokens, a.deployment, "cached").inc(a.cached_tokens)
        if record.cost_usd:
            child(self.spend, route).inc(record.cost_usd)
        if record.success:
            child(self.successes, route).inc()
        if record.cache is not None:
            child(self.cache, route, record.cache).inc()
        if record.prompt_tokens_saved:
            child(self.saved, route).inc(record.prompt_tokens_saved)

    def _child(self, metric: Any, *labels: str) -> Any:
        """The metric's series for these labels, looked up once: prometheus_client's
        `labels()` takes a lock and validates on every call (about 1.5 us each, several per
        request). Label values are bounded (routes, deployments, statuses, error codes)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    """What is read at scrape time: breaker states, and cost per success per route from the
    spend and success counters (all processes' in multiprocess mode)."""

    def __init__(self, gateway: Gateway, metrics: Metrics) -> None:
        self.gateway = gateway
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no fixed series: the registry must not call collect() to describe

    def collect(self) -> Iterator[Metric]:
        breakers = GaugeMetricFamily(
            "hedge_breaker_state",
            "Deployment breaker: 0 closed, 1 half-open, 2 open, 3 revoked.",
            labels=["deployment"],
        )
        for name, breaker in self.gateway.breakers.items():
            state = "revoked" if breaker.revoked is not None else breaker.breaker_state()
            breakers.add_metric([name], BREAKER_VALUES[state])
        yield breakers
        spend = _totals(self.metrics.sources, "hedge_spend_usd_total")
        successes = _totals(self.metrics.sources, "hedge_successes_total")
        per_success = GaugeMetricFamily(
            "hedge_cost_per_success_usd",
            "Spend divided by validator-accepted requests, by route, since start.",
            labels=["route"],
        )
        for route, count in sorted(successes.items()):
            if count > 0:
                per_success.add_metric([route], spend.get(route, 0.0) / count)
        yield per_success


def _totals(sources: list[Any], sample: str) -> dict[str, float]:
    """Per-route sums of one counter's samples, as a scrape would see them."""
    out: dict[str, float] = {}
    for source in sources:
        for metric in source.collect():
            for s in metric.samples:
                if s.name == sample:
                    route = s.labels.get("route", "")
                    out[route] = out.get(route, 0.0) + float(s.value)
    return out
