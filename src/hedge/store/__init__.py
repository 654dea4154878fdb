"""Where ledger records are kept: the `Store` protocol, and the SQL both backends share.

A store is synchronous and owned by one thread at a time: `BatchingLedger` runs every call on
its own single worker thread, so the event loop never waits on a disk or a socket and a store
needs no locking of its own. The SQL is written once, in the dialect SQLite and PostgreSQL have
in common (with `?` placeholders, rewritten for psycopg), so both backends give the same numbers
to `hedge costs` by construction.

Only metadata is stored: prompts and completions never reach a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hedge.errors import HedgeError

if TYPE_CHECKING:
    from hedge.ledger import RequestRecord

GroupBy = Literal["deployment", "route", "key"]

SCHEMA_VERSION = 2


class LedgerError(HedgeError):
    """The ledger's database cannot be opened or written. At start-up the message says what
    to fix; a feedback call that meets it is answered 503."""

    status = 503
    type = "server_error"
    code = "ledger_unavailable"


# Written idempotently: a batch retried after a failure it did in fact survive, or a record
# delivered twice, must not fail the whole transaction or count twice.
INSERT_REQUEST = (
    "INSERT INTO requests (request_id, ts, route, caller_key, answered_by, stage, status,"
    " success, score, cost_usd, latency_ms, cache, prompt_tokens_saved)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
INSERT_ATTEMPT = (
    "INSERT INTO attempts (request_id, seq, deployment, stage, prompt_tokens,"
    " completion_tokens, cached_tokens, reasoning_tokens, cost_usd, latency_ms, error, ts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# Feedback without a score keeps the score a validator may have recorded.
UPDATE_FEEDBACK = (
    "UPDATE requests SET success = ?, score = COALESCE(?, score), feedback_ts = ?"
    " WHERE request_id = ?"
)


def request_row(r: RequestRecord) -> tuple[Any, ...]:
    return (
        r.request_id,
        r.ts,
        r.route,
        r.caller_key,
        r.answered_by,
        r.stage,
        r.status,
        r.success,
        r.score,
        r.cost_usd,
        r.latency_ms,
        r.cache,
        r.prompt_tokens_saved,
    )


def attempt_rows(records: Sequence[RequestRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            a.request_id,
            a.seq,
            a.deployment,
            a.stage,
            a.prompt_tokens,
            a.completion_tokens,
            a.cached_tokens,
            a.reasoning_tokens,
            a.cost_usd,
            a.latency_ms,
            a.error,
            a.ts,
        )
        for r in records
        for a in r.attempts
    ]


def summary_query(
    since: float | None, route: str | None, by: GroupBy
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters for `hedge costs`. Each row: name, requests, attempts,
    successes, judged, spend (see `summary_rows`)."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("r.ts >= ?")
        params.append(since)
    if route is not None:
        where.append("r.route = ?")
        params.append(route)
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    if by == "deployment":
        # A deployment is charged for every call made to it, including failed calls and
        # drafts a later cascade stage replaced, but credited only with the requests it
        # answered: its cost per success is what its successes really cost.
        sql = (
            "SELECT a.deployment AS name,"
            " COUNT(DISTINCT CASE WHEN r.answered_by = a.deployment THEN r.request_id END),"
            " COUNT(*),"
            " COUNT(DISTINCT CASE WHEN r.answered_by = a.deployment AND r.success"
            " THEN r.request_id END),"
            " COUNT(DISTINCT CASE WHEN r.answered_by = a.deployment AND r.success IS NOT NULL"
            " THEN r.request_id END),"
            " COALESCE(SUM(a.cost_usd), 0), 0, 0"
            f" FROM attempts a JOIN requests r ON r.request_id = a.request_id{cond}"
            " GROUP BY a.deployment"
        )
        return sql, tuple(params)
    column = "r.route" if by == "route" else "r.caller_key"
    # The answering call's tokens too: `hedge costs` prices them at the route's strongest
    # stage to show what sending everything there would have cost.
    sql = (
        f"SELECT {column} AS name, COUNT(*), COALESCE(SUM(n.attempts), 0),"
        " COALESCE(SUM(CASE WHEN r.success THEN 1 ELSE 0 END), 0),"
        " COUNT(r.success), COALESCE(SUM(r.cost_usd), 0),"
        " COALESCE(SUM(n.answer_in), 0), COALESCE(SUM(n.answer_out), 0)"
        " FROM requests r LEFT JOIN"
        " (SELECT a.request_id, COUNT(*) AS attempts,"
        " SUM(CASE WHEN a.error IS NULL AND a.deployment = q.answered_by"
        " THEN a.prompt_tokens ELSE 0 END) AS answer_in,"
        " SUM(CASE WHEN a.error IS NULL AND a.deployment = q.answered_by"
        " THEN a.completion_tokens ELSE 0 END) AS answer_out"
        " FROM attempts a JOIN requests q ON q.request_id = a.request_id"
        " GROUP BY a.request_id) n"
        f" ON n.request_id = r.request_id{cond}"
        f" GROUP BY {column}"
    )
    return sql, tuple(params)


def summary_rows(raw: Sequence[Sequence[Any]], by: GroupBy) -> list[dict[str, Any]]:
    """Query rows -> the dicts `hedge costs` renders, most spend first.

    `success_rate` is over the requests that got a verdict (feedback or a validator), since an
    unjudged request is not a failure; `cost_per_success_usd` divides the whole spend (failed
    and unjudged requests cost money too) by the successes, None when there are none.
    """
    rows = []
    for name, requests, attempts, raw_successes, raw_judged, raw_spend, t_in, t_out in raw:
        # PostgreSQL sums counts as numeric (Decimal): normalise to int and float.
        successes = int(raw_successes)
        judged = int(raw_judged)
        spend = float(raw_spend)
        rows.append(
            {
                "by": by,
                "name": name,
                "requests": int(requests),
                "attempts": int(attempts),
                "successes": successes,
                "judged": judged,
                "success_rate": successes / judged if judged else None,
                "spend_usd": spend,
                "cost_per_success_usd": spend / successes if successes else None,
                "answer_prompt_tokens": int(t_in),
                "answer_completion_tokens": int(t_out),
            }
        )
    rows.sort(key=lambda row: (-row["spend_usd"], str(row["name"])))
    return rows


def timeline_query(since: float, bucket_s: float, floor: str) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters for the dashboard's spend over time: per `bucket_s` seconds
    since `since` and per route, the requests, errors, successes, judged requests and spend
    (see `timeline_rows`). `floor` is the dialect's expression template for the bucket index
    of a non-negative `{}` (SQLite truncates a CAST, PostgreSQL rounds it)."""
    bucket = floor.format("(ts - ?) / ?")
    sql = (
        "SELECT bucket, route, COUNT(*),"
        " COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN success THEN 1 ELSE 0 END), 0),"
        " COUNT(success), COALESCE(SUM(cost_usd), 0)"
        f" FROM (SELECT {bucket} AS bucket, route, status, success, cost_usd"
        " FROM requests WHERE ts >= ?) t"
        " GROUP BY bucket, route ORDER BY bucket, route"
    )
    return sql, (since, bucket_s, since)


def timeline_rows(
    raw: Sequence[Sequence[Any]], since: float, bucket_s: float
) -> list[dict[str, Any]]:
    """Query rows -> one dict per (bucket, route), oldest first; `ts` is the bucket's start.
    `cost_per_success_usd` is the bucket's whole spend over its successes (None: none)."""
    rows = []
    for bucket, route, requests, errors, raw_successes, judged, raw_spend in raw:
        successes = int(raw_successes)
        spend = float(raw_spend)
        rows.append(
            {
                "ts": since + int(bucket) * bucket_s,
                "route": route,
                "requests": int(requests),
                "errors": int(errors),
                "successes": successes,
                "judged": int(judged),
                "spend_usd": spend,
                "cost_per_success_usd": spend / successes if successes else None,
            }
        )
    return rows


class Store(Protocol):
    """Synchronous storage for ledger records, called from one worker thread at a time."""

    def open(self) -> None:
        """Connect and create or migrate the schema; raise `LedgerError` saying what to fix."""

    def write_batch(self, records: Sequence[RequestRecord]) -> None:
        """Write requests and their attempts in ONE transaction; records already there are
        left as they are."""

    def feedback(self, request_id: str, success: bool, score: float | None, ts: float) -> bool:
        """Record an outcome; False when no such request is stored."""

    def summary(self, since: float | None, route: str | None, by: GroupBy) -> list[dict[str, Any]]:
        """Rows for `hedge costs`, as `summary_rows` shapes them."""

    def timeline(self, since: float, bucket_s: float) -> list[dict[str, Any]]:
        """Requests, successes and spend per route and time bucket, as `timeline_rows`
        shapes them."""

    def close(self) -> None: ...
