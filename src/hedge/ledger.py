"""The ledger: what every request cost, who answered it, and whether the answer was any good.

The gateway turns each served request's `Trace` into a `RequestRecord` (with `request_record`)
and hands it to `Ledger.record`, which only appends to a buffer: recording never blocks and
never fails a request. A background task writes the buffer through a `Store` every
`flush_interval_s`, or sooner when `batch_size` records wait, one transaction per batch, on a
worker thread of its own so the event loop never waits on the database. A crash therefore
loses at most the records of the last flush interval and, the stores being transactional,
never corrupts what was written.

Outcomes arrive later (`POST /v1/feedback`, or a validator's verdict) and feed `hedge costs`:
spend, successes, and cost per successful outcome, by deployment, route or caller key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hedge.accounting import cost_usd
from hedge.config import LedgerSettings, Prices
from hedge.store import GroupBy, LedgerError, Store
from hedge.trace import Trace
from hedge.types import Usage

__all__ = [
    "AttemptRecord",
    "BatchingLedger",
    "Ledger",
    "LedgerError",
    "NullLedger",
    "RequestRecord",
    "open_ledger",
    "render_costs",
    "request_record",
]

log = logging.getLogger("hedge.ledger")

T = TypeVar("T")

# Records waiting beyond this many batches mean the database has been failing for a while:
# drop the oldest rather than let the gateway's memory grow without bound.
MAX_PENDING_BATCHES = 200


@dataclass(slots=True)
class AttemptRecord:
    """One upstream call. `seq` is its position among the request's calls (0-based)."""

    request_id: str
    seq: int
    deployment: str
    stage: int | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    latency_ms: float
    error: str | None
    ts: float


@dataclass(slots=True)
class RequestRecord:
    """One request as served. `ts` is Unix time at its start; `cost_usd` is the sum of its
    attempts'; `success`/`score` are the validator's verdict until feedback replaces them."""

    request_id: str
    ts: float
    route: str
    caller_key: str | None
    answered_by: str | None
    stage: int | None
    status: int
    success: bool | None
    score: float | None
    cost_usd: float
    latency_ms: float
    attempts: list[AttemptRecord] = field(default_factory=list)
    cache: str | None = None  # hit, semantic-hit, miss or bypass on a route with a cache
    prompt_tokens_saved: int | None = None  # by prompt compaction (estimated), where it ran


def request_record(
    trace: Trace,
    prices: Mapping[str, Prices],
    status: int,
    *,
    stage: int | None = None,
    success: bool | None = None,
    key: str | None = None,
    score: float | None = None,
    now: float | None = None,
) -> RequestRecord:
    """The record of a finished request. Each attempt is priced from its own usage at its
    deployment's prices (a failed call costs nothing unless the upstream reported usage for
    it; a deployment missing from `prices` is free). `now` is the Unix time the request ended
    (default: the clock); traces measure with perf_counter, so the wall-clock start is
    derived from it and the trace's elapsed time. `stage` and `success` default to what the
    trace recorded (its answering cascade stage and validator verdict), where it has them."""
    elapsed = max(0.0, time.perf_counter() - trace.started)
    end = time.time() if now is None else now
    ts = end - elapsed
    free = Prices()
    attempts = []
    for seq, a in enumerate(trace.attempts):
        usage = a.usage or Usage()
        attempts.append(
            AttemptRecord(
                request_id=trace.request_id,
                seq=seq,
                deployment=a.deployment,
                # Attempts carry their cascade stage once the trace records one.
                stage=getattr(a, "stage", None),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_usd=cost_usd(usage, prices.get(a.deployment, free)) if a.usage else 0.0,
                latency_ms=a.seconds * 1000,
                error=a.error,
                # Attempts do not record their own start; the request's is the best known.
                ts=ts,
            )
        )
    return RequestRecord(
        request_id=trace.request_id,
        ts=ts,
        route=trace.route,
        caller_key=key if key is not None else trace.caller_key,
        answered_by=trace.answered_by,
        stage=stage if stage is not None else getattr(trace, "stage", None),
        status=status,
        success=success if success is not None else getattr(trace, "accepted", None),
        score=score,
        cost_usd=sum(a.cost_usd for a in attempts),
        latency_ms=elapsed * 1000,
        attempts=attempts,
        cache=trace.cache,
        prompt_tokens_saved=trace.prompt_tokens_saved,
    )


class Ledger(Protocol):
    def record(self, r: RequestRecord) -> None:
        """Queue a record for writing. Never blocks, never raises."""

    async def feedback(self, request_id: str, success: bool, score: float | None) -> bool:
        """Record a request's outcome; False when the request is unknown."""

    async def start(self) -> None:
        """Open the store (raising `LedgerError` with what to fix) and start writing."""

    async def aclose(self) -> None:
        """Write everything still queued, then close the store."""

    async def summary(
        self, since: float | None, route: str | None, by: GroupBy
    ) -> list[dict[str, Any]]:
        """Rows for `hedge costs` (see `hedge.store.summary_rows`)."""

    async def timeline(self, since: float, bucket_s: float) -> list[dict[str, Any]]:
        """Spend and successes per route and time bucket (see `hedge.store.timeline_rows`)."""


class NullLedger:
    """`ledger.backend: none`: nothing is kept, no request is known."""

    def record(self, r: RequestRecord) -> None:
        pass

    async def feedback(self, request_id: str, success: bool, score: float | None) -> bool:
        return False

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def summary(
        self, since: float | None, route: str | None, by: GroupBy
    ) -> list[dict[str, Any]]:
        return []

    async def timeline(self, since: float, bucket_s: float) -> list[dict[str, Any]]:
        return []


class BatchingLedger:
    """A `Ledger` that writes through a `Store` in batches, off the event loop."""

    def __init__(self, store: Store, *, flush_interval_s: float, batch_size: int) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self._buffer: list[RequestRecord] = []
        self._pending_ids: set[str] = set()
        self._dropped = 0
        # One thread: the store is used by one thread at a time and its calls run in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hedge-ledger")
        self._wake: asyncio.Event | None = None
        self._flush_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._failing = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        if self._task is not None:
            return
        await self._run(self.store.open)
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task = asyncio.create_task(self._writer(), name="hedge-ledger-writer")
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def record(self, r: RequestRecord) -> None:
        """Queue `r`; call it on the event loop's thread (it wakes the writer task)."""
        try:
            if self._closed:
                log.warning("ledger closed; request %s not recorded", r.request_id)
                return
            self._buffer.append(r)
            self._pending_ids.add(r.request_id)
            excess = len(self._buffer) - self.batch_size * MAX_PENDING_BATCHES
            if excess > 0:
                for old in self._buffer[:excess]:
                    self._pending_ids.discard(old.request_id)
                del self._buffer[:excess]
                self._dropped += excess
                log.error(
                    "ledger: the database has been failing; dropped %d records so far",
                    self._dropped,
                )
            # While the store fails, a full batch does not wake the writer early: it retries
            # once per interval instead of hammering a database that is down.
            if len(self._buffer) >= self.batch_size and self._wake and not self._failing:
                self._wake.set()
        except Exception:  # the ledger must never fail a request
            log.exception("ledger: could not queue request %s", getattr(r, "request_id", "?"))

    async def _writer(self) -> None:
        assert self._wake is not None
        next_flush = time.monotonic() + self.flush_interval_s
        while not self._closing:
            # A fixed cadence (not "interval after the last write finished") bounds how long a
            # record can wait: at most one interval plus the write itself.
            timeout = max(0.0, next_flush - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if time.monotonic() >= next_flush:
                next_flush = time.monotonic() + self.flush_interval_s
            try:
                await self.flush()
            except Exception as e:
                if not isinstance(e, LedgerError):  # a LedgerError was logged by flush
                    log.exception("ledger: unexpected error while writing; will retry")
                # The records stay queued; the next try is one whole interval away.
                self._failing = True
                next_flush = time.monotonic() + self.flush_interval_s

    async def flush(self) -> None:
        """Write every queued record now, `batch_size` per transaction. On a store error the
        unwritten records stay queued (in order) and the error is raised."""
        if self._flush_lock is None:
            raise LedgerError("The ledger has not been started.")
        async with self._flush_lock:
            while self._buffer:
                batch = self._buffer[: self.batch_size]
                del self._buffer[: len(batch)]
                try:
                    await self._run(self.store.write_batch, batch)
                except BaseException as e:
                    # Put the batch back in front: the stores insert idempotently, so a batch
                    # that did commit before the error is harmless to write again.
                    self._buffer[:0] = batch
                    if isinstance(e, LedgerError) and not self._failing:
                        self._failing = True
                        log.error("ledger: %s (will keep retrying)", e.message)
                    raise
                for r in batch:
                    self._pending_ids.discard(r.request_id)
                if self._failing:
                    self._failing = False
                    log.warning("ledger: writing again")

    async def feedback(self, request_id: str, success: bool, score: float | None) -> bool:
        if request_id in self._pending_ids:
            # Feedback can arrive before the request's record is written: write it first.
            await self.flush()
        return await self._run(self.store.feedback, request_id, success, score, time.time())

    async def summary(
        self, since: float | None, route: str | None, by: GroupBy
    ) -> list[dict[str, Any]]:
        if self._buffer and self._flush_lock is not None:
            await self.flush()
        return await self._run(self.store.summary, since, route, by)

    async def timeline(self, since: float, bucket_s: float) -> list[dict[str, Any]]:
        # No flush first (unlike `summary`): a dashboard polling every few seconds must not
        # undo the batching; what is queued is at most one flush interval old.
        return await self._run(self.store.timeline, since, bucket_s)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closing = True
        self._closed = True
        try:
            if self._task is not None:
                assert self._wake is not None
                self._wake.set()
                await self._task
                try:
                    await self.flush()
                except LedgerError as e:
                    log.error(
                        "ledger: %d records could not be written at shutdown: %s",
                        len(self._buffer),
                        e.message,
                    )
            elif self._buffer:
                log.warning("ledger: never started; %d records not written", len(self._buffer))
            await self._run(self.store.close)
        finally:
            self._executor.shutdown(wait=True)


def open_ledger(settings: LedgerSettings, env_dsn: str | None) -> Ledger:
    """The ledger `settings` describe, not yet started. `env_dsn` is the value of the variable
    `settings.url_env` names (the caller reads the environment)."""
    if settings.backend == "none":
        return NullLedger()
    store: Store
    if settings.backend == "sqlite":
        from hedge.store.sqlite import SqliteStore

        store = SqliteStore(settings.path)
    else:
        if not env_dsn:
            raise LedgerError(
                f"ledger.backend is 'postgres' but ${settings.url_env} is not set. Fix: export "
                f"{settings.url_env}=postgresql://user:password@host:5432/dbname, or set "
                "ledger.backend to 'sqlite'."
            )
        try:
            from hedge.store.postgres import PostgresStore
        except ImportError:
            raise LedgerError(
                "ledger.backend is 'postgres' but psycopg is not installed. Fix: "
                "pip install 'hedge[postgres]'."
            ) from None
        store = PostgresStore(env_dsn)
    return BatchingLedger(
        store, flush_interval_s=settings.flush_interval_s, batch_size=settings.batch_size
    )


# ---- hedge costs (pure) --------------------------------------------------------------------

_TITLES = {"deployment": "DEPLOYMENT", "route": "ROUTE", "key": "KEY"}


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 0.01:
        return f"${value:.6f}"
    return f"${value:,.2f}"


def render_costs(rows: Sequence[Mapping[str, Any]]) -> str:
    """The `hedge costs` table: one line per group, most spend first, and a total line."""
    if not rows:
        return "No requests recorded yet."
    by = str(rows[0].get("by", "deployment"))
    headers = [_TITLES.get(by, by.upper()), "SPEND", "REQUESTS", "SUCCESSES", "SUCCESS RATE",
               "COST/SUCCESS"]  # fmt: skip
    body: list[list[str]] = []
    for row in rows:
        rate = row.get("success_rate")
        name = row.get("name")
        body.append(
            [
                "(none)" if name is None else str(name),
                _usd(float(row["spend_usd"])),
                str(row["requests"]),
                str(row["successes"]),
                "-" if rate is None else f"{100 * float(rate):.1f}% of {row['judged']}",
                _usd(row.get("cost_per_success_usd")),
            ]
        )
    spend = math.fsum(float(r["spend_usd"]) for r in rows)
    successes = sum(int(r["successes"]) for r in rows)
    judged = sum(int(r["judged"]) for r in rows)
    # Every column adds up, by deployment too: there a request counts for the one
    # deployment that answered it (failed calls elsewhere count as spend only).
    body.append(
        [
            "TOTAL",
            _usd(spend),
            str(sum(int(r["requests"]) for r in rows)),
            str(successes),
            f"{100 * successes / judged:.1f}% of {judged}" if judged else "-",
            _usd(spend / successes) if successes else "-",
        ]
    )
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]

    def fmt(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(headers), *(fmt(line) for line in body)])
