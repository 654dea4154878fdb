"""The ledger on SQLite: the store, BatchingLedger's batching and flushing, feedback, the
`hedge costs` numbers (worked out by hand below), and the failures a person must be told about.

`StoreContract` holds the tests every store must pass; tests/integration/test_ledger_postgres.py
runs the same class against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from hedge.config import LedgerSettings, Prices
from hedge.ledger import (
    AttemptRecord,
    BatchingLedger,
    LedgerError,
    NullLedger,
    RequestRecord,
    open_ledger,
    render_costs,
    request_record,
)
from hedge.server.feedback_api import FeedbackApi, parse_feedback
from hedge.store import SCHEMA_VERSION, GroupBy, Store
from hedge.store.sqlite import MIGRATIONS, SqliteStore
from hedge.trace import Trace
from hedge.types import Usage

MakeStore = Callable[[], Store]
Query = Callable[[str], list[tuple[Any, ...]]]


# ---- sample data, with every figure below computed by hand ---------------------------------


def req(
    request_id: str,
    *,
    ts: float,
    route: str,
    key: str | None,
    answered_by: str | None,
    success: bool | None,
    attempts: Sequence[tuple[str, float, str | None]],
    status: int = 200,
) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        ts=ts,
        route=route,
        caller_key=key,
        answered_by=answered_by,
        stage=None,
        status=status,
        success=success,
        score=None,
        cost_usd=sum(cost for _, cost, _ in attempts),
        latency_ms=100.0,
        attempts=[
            AttemptRecord(
                request_id=request_id,
                seq=i,
                deployment=dep,
                stage=None,
                prompt_tokens=10,
                completion_tokens=5,
                cached_tokens=0,
                reasoning_tokens=0,
                cost_usd=cost,
                latency_ms=50.0,
                error=error,
                ts=ts,
            )
            for i, (dep, cost, error) in enumerate(attempts)
        ],
    )


def sample() -> list[RequestRecord]:
    return [
        req("r1", ts=1000, route="chat", key="k1", answered_by="cheap", success=True,
            attempts=[("cheap", 0.001, None)]),
        req("r2", ts=1010, route="chat", key="k1", answered_by="strong", success=None,
            attempts=[("cheap", 0.0005, "timeout"), ("strong", 0.02, None)]),
        req("r3", ts=1020, route="chat", key="k2", answered_by="strong", success=False,
            attempts=[("strong", 0.03, None)]),
        req("r4", ts=2000, route="code", key=None, answered_by="strong", success=True,
            attempts=[("strong", 0.05, None)]),
        req("r5", ts=2010, route="code", key="k2", answered_by=None, success=None, status=502,
            attempts=[("cheap", 0.0, "502"), ("strong", 0.0, "503")]),
    ]  # fmt: skip


def row(
    by: str,
    name: str | None,
    requests: int,
    attempts: int,
    successes: int,
    judged: int,
    spend: float,
    answer_tokens: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    return {
        "by": by,
        "name": name,
        "requests": requests,
        "attempts": attempts,
        "successes": successes,
        "judged": judged,
        "success_rate": successes / judged if judged else None,
        "spend_usd": spend,
        "cost_per_success_usd": spend / successes if successes else None,
        "answer_prompt_tokens": answer_tokens[0],
        "answer_completion_tokens": answer_tokens[1],
    }


# chat: r1 0.001 + r2 0.0205 + r3 0.03 = 0.0515 over 3 requests, 4 calls; success r1, judged
# r1 and r3. code: r4 0.05 + r5 0 over 2 requests, 3 calls; success r4, judged r4.
# The answering call's tokens (10 in, 5 out each): chat r1, r2, r3; code r4 (r5 failed).
BY_ROUTE = [
    row("route", "chat", 3, 4, 1, 2, 0.0515, (30, 15)),
    row("route", "code", 2, 3, 1, 1, 0.05, (10, 5)),
]
# no key: r4 0.05. k2: r3 0.03 + r5 0. k1: r1 0.001 + r2 0.0205 = 0.0215.
BY_KEY = [
    row("key", None, 1, 1, 1, 1, 0.05, (10, 5)),
    row("key", "k2", 2, 3, 0, 1, 0.03, (10, 5)),
    row("key", "k1", 2, 3, 1, 1, 0.0215, (20, 10)),
]
# strong: calls in r2, r3, r4, r5 = 0.02 + 0.03 + 0.05 + 0 = 0.10; answered r2, r3, r4; success
# r4; judged r3, r4. cheap: calls in r1, r2, r5 = 0.0015; answered r1, a success.
BY_DEPLOYMENT = [
    row("deployment", "strong", 3, 4, 1, 2, 0.10),
    row("deployment", "cheap", 1, 3, 1, 1, 0.0015),
]


def assert_rows(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [r["name"] for r in got] == [r["name"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for k, v in e.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v), (e["name"], k)
            else:
                assert g[k] == v, (e["name"], k)


class CountingStore:
    """Delegates to a real store, counting batches; can fail the first `failures` writes."""

    def __init__(self, inner: Store, failures: int = 0) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.failures = failures

    def open(self) -> None:
        self.inner.open()

    def write_batch(self, records: Sequence[RequestRecord]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise LedgerError("the disk is on fire (test)")
        self.inner.write_batch(records)
        self.batches.append(len(records))

    def feedback(self, request_id: str, success: bool, score: float | None, ts: float) -> bool:
        return self.inner.feedback(request_id, success, score, ts)

    def summary(self, since: float | None, route: str | None, by: GroupBy) -> list[dict[str, Any]]:
        return self.inner.summary(since, route, by)

    def close(self) -> None:
        self.inner.close()


def numbered(n: int, prefix: str = "req") -> list[RequestRecord]:
    return [
        req(f"{prefix}-{i}", ts=1000 + i, route="chat", key=None, answered_by="cheap",
            success=None, attempts=[("cheap", 0.001, None), ("strong", 0.002, None)])
        for i in range(n)
    ]  # fmt: skip


# ---- the contract every store passes -------------------------------------------------------


class StoreContract:
    """Subclasses provide `make_store` (a factory of stores on one fresh database) and
    `query` (SQL on that database over a separate connection)."""

    @pytest.fixture
    def make_store(self) -> MakeStore:
        raise NotImplementedError

    @pytest.fixture
    def query(self) -> Query:
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: MakeStore) -> Iterator[Store]:
        s = make_store()
        s.open()
        yield s
        s.close()

    def test_summary_by_route_key_and_deployment(self, store: Store) -> None:
        store.write_batch(sample())
        assert_rows(store.summary(None, None, "route"), BY_ROUTE)
        assert_rows(store.summary(None, None, "key"), BY_KEY)
        assert_rows(store.summary(None, None, "deployment"), BY_DEPLOYMENT)

    def test_summary_filters_by_time_and_route(self, store: Store) -> None:
        store.write_batch(sample())
        assert_rows(store.summary(1500, None, "route"), [BY_ROUTE[1]])
        # chat only: strong 0.02 + 0.03 over r2, r3 (answered both, judged r3, no success);
        # cheap 0.001 + 0.0005 (answered r1, a success).
        assert_rows(
            store.summary(None, "chat", "deployment"),
            [
                row("deployment", "strong", 2, 2, 0, 1, 0.05),
                row("deployment", "cheap", 1, 2, 1, 1, 0.0015),
            ],
        )
        assert store.summary(3000, None, "key") == []
        assert store.summary(None, "nope", "deployment") == []

    def test_writes_are_idempotent(self, store: Store, query: Query) -> None:
        store.write_batch(sample())
        store.write_batch(sample()[1:3])
        assert query("SELECT COUNT(*) FROM requests") == [(5,)]
        assert query("SELECT COUNT(*) FROM attempts") == [(7,)]
        assert_rows(store.summary(None, None, "route"), BY_ROUTE)

    def test_attempts_are_stored_field_by_field(self, store: Store, query: Query) -> None:
        store.write_batch(sample()[1:2])
        got = query(
            "SELECT request_id, seq, deployment, stage, prompt_tokens, completion_tokens,"
            " cached_tokens, reasoning_tokens, cost_usd, latency_ms, error, ts"
            " FROM attempts ORDER BY seq"
        )
        assert [tuple(r) for r in got] == [
            ("r2", 0, "cheap", None, 10, 5, 0, 0, 0.0005, 50.0, "timeout", 1010.0),
            ("r2", 1, "strong", None, 10, 5, 0, 0, 0.02, 50.0, None, 1010.0),
        ]
        (r,) = query(
            "SELECT route, caller_key, answered_by, status, success, cost_usd FROM requests"
        )
        assert tuple(r) == ("chat", "k1", "strong", 200, None, pytest.approx(0.0205))

    def test_feedback_updates_success_score_and_time(self, store: Store, query: Query) -> None:
        store.write_batch(sample())
        before = time.time()
        assert store.feedback("r2", True, 0.8, before)
        (r,) = query("SELECT success, score, feedback_ts FROM requests WHERE request_id = 'r2'")
        assert (bool(r[0]), r[1], r[2]) == (True, 0.8, before)
        # chat: r2 now a success too: 2 successes of 3 judged.
        chat = store.summary(None, "chat", "route")[0]
        assert (chat["successes"], chat["judged"]) == (2, 3)
        # Feedback without a score keeps the score already there.
        assert store.feedback("r2", False, None, before + 1)
        (r,) = query("SELECT success, score FROM requests WHERE request_id = 'r2'")
        assert (bool(r[0]), r[1]) == (False, 0.8)

    def test_feedback_for_an_unknown_request_is_false(self, store: Store) -> None:
        store.write_batch(sample())
        assert store.feedback("no-such-id", True, None, 0.0) is False

    def test_reopening_keeps_data_and_migrates_nothing(
        self, make_store: MakeStore, store: Store
    ) -> None:
        store.write_batch(sample())
        store.close()
        again = make_store()
        again.open()
        try:
            assert_rows(again.summary(None, None, "route"), BY_ROUTE)
        finally:
            again.close()

    def test_no_prompt_or_completion_text_is_stored(self, store: Store, query: Query) -> None:
        columns = {
            r[0]
            for r in query(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name IN ('requests', 'attempts')"
            )
        }
        assert columns == {
            "request_id", "ts", "route", "caller_key", "answered_by", "stage", "status",
            "success", "score", "feedback_ts", "cost_usd", "latency_ms", "seq", "deployment",
            "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "error",
            "cache", "prompt_tokens_saved",
        }  # fmt: skip

    # ---- BatchingLedger over this store ----

    def test_n_records_make_ceil_n_over_batch_transactions(
        self, make_store: MakeStore, query: Query
    ) -> None:
        counting = CountingStore(make_store())
        ledger = BatchingLedger(counting, flush_interval_s=60, batch_size=10)

        async def main() -> None:
            await ledger.start()
            for r in numbered(25):
                ledger.record(r)  # all queued before the writer gets to run
            await ledger.aclose()

        asyncio.run(main())
        assert counting.batches == [10, 10, 5]
        assert len(counting.batches) == math.ceil(25 / 10)
        assert query("SELECT COUNT(*) FROM requests") == [(25,)]
        assert query("SELECT COUNT(*) FROM attempts") == [(50,)]

    def test_flushes_every_interval_without_waiting_for_a_full_batch(
        self, make_store: MakeStore, query: Query
    ) -> None:
        ledger = BatchingLedger(make_store(), flush_interval_s=0.1, batch_size=1000)

        async def main() -> list[tuple[Any, ...]]:
            await ledger.start()
            for r in numbered(7):
                ledger.record(r)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                written = query("SELECT COUNT(*) FROM requests")
                if written == [(7,)]:
                    break
            await ledger.aclose()
            return written

        assert asyncio.run(main()) == [(7,)]

    def test_aclose_writes_everything_still_queued(
        self, make_store: MakeStore, query: Query
    ) -> None:
        ledger = BatchingLedger(make_store(), flush_interval_s=60, batch_size=500)

        async def main() -> None:
            await ledger.start()
            for r in numbered(3):
                ledger.record(r)
            assert query("SELECT COUNT(*) FROM requests") == [(0,)]
            await ledger.aclose()
            ledger.record(numbered(1, "late")[0])  # after close: dropped, never raised

        asyncio.run(main())
        assert query("SELECT COUNT(*) FROM requests") == [(3,)]

    def test_feedback_for_a_record_not_yet_written_finds_it(
        self, make_store: MakeStore, query: Query
    ) -> None:
        ledger = BatchingLedger(make_store(), flush_interval_s=60, batch_size=500)

        async def main() -> tuple[bool, bool]:
            await ledger.start()
            ledger.record(sample()[1])
            known = await ledger.feedback("r2", True, 1.0)
            unknown = await ledger.feedback("r9", True, None)
            await ledger.aclose()
            return known, unknown

        assert asyncio.run(main()) == (True, False)
        (r,) = query("SELECT success, score FROM requests")
        assert (bool(r[0]), r[1]) == (True, 1.0)

    def test_summary_through_the_ledger_includes_queued_records(
        self, make_store: MakeStore
    ) -> None:
        ledger = BatchingLedger(make_store(), flush_interval_s=60, batch_size=500)

        async def main() -> list[dict[str, Any]]:
            await ledger.start()
            for r in sample():
                ledger.record(r)
            rows = await ledger.summary(None, None, "deployment")
            await ledger.aclose()
            return rows

        assert_rows(asyncio.run(main()), BY_DEPLOYMENT)

    def test_a_failing_store_keeps_the_records_and_retries(
        self, make_store: MakeStore, query: Query
    ) -> None:
        flaky = CountingStore(make_store(), failures=2)
        ledger = BatchingLedger(flaky, flush_interval_s=0.05, batch_size=500)

        async def main() -> None:
            await ledger.start()
            for r in numbered(4):
                ledger.record(r)  # never raises, whatever the store does
            deadline = time.monotonic() + 5
            # Polling what the store saw: the ledger exposes no event for "written".
            while not flaky.batches and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            await ledger.aclose()

        asyncio.run(main())
        assert flaky.failures == 0
        assert flaky.batches == [4]
        assert query("SELECT COUNT(*) FROM requests") == [(4,)]


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def db(self, tmp_path: Path) -> Path:
        return tmp_path / "ledger.db"

    @pytest.fixture
    def make_store(self, db: Path) -> MakeStore:
        return lambda: SqliteStore(db)

    @pytest.fixture
    def query(self, db: Path) -> Query:
        def run(sql: str) -> list[tuple[Any, ...]]:
            # SQLite has no information_schema: answer the one question asked of it.
            if "information_schema" in sql:
                sql = (
                    "SELECT p.name FROM sqlite_master m, pragma_table_info(m.name) p"
                    " WHERE m.name IN ('requests', 'attempts')"
                )
            with sqlite3.connect(db) as conn:
                return conn.execute(sql).fetchall()

        return run


# ---- SQLite specifics ---------------------------------------------------------------------


def test_wal_mode_synchronous_normal_and_schema_version(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ledger.db")
    store.open()
    try:
        assert store.connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        # journal_mode=WAL is a property of the file: a new connection sees it too.
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"requests_ts", "requests_route"} <= indexes


def test_a_version_1_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO requests (request_id, ts, route, status, cost_usd, latency_ms)"
            " VALUES ('old', 1.0, 'r', 200, 0.5, 3.0)"
        )
        conn.execute("PRAGMA user_version = 1")
    store = SqliteStore(path)
    store.open()
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        row = conn.execute(
            "SELECT route, cost_usd, cache, prompt_tokens_saved FROM requests"
        ).fetchone()
    assert row == ("r", 0.5, None, None)


def test_each_batch_is_one_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ledger.db")
    ledger = BatchingLedger(store, flush_interval_s=60, batch_size=4)
    statements: list[str] = []

    async def main() -> None:
        await ledger.start()
        store.connection.set_trace_callback(statements.append)
        for r in numbered(10):
            ledger.record(r)
        await ledger.aclose()

    asyncio.run(main())
    begins = [s for s in statements if s.startswith("BEGIN")]
    commits = [s for s in statements if s == "COMMIT"]
    assert len(begins) == len(commits) == math.ceil(10 / 4)


def test_a_corrupt_file_is_refused_at_start_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    ledger = open_ledger(LedgerSettings(backend="sqlite", path=str(path)), None)
    with pytest.raises(LedgerError) as e:
        asyncio.run(ledger.start())
    assert str(path) in e.value.message
    assert "not a SQLite database" in e.value.message
    assert "move the file aside" in e.value.message
    asyncio.run(ledger.aclose())


def test_a_locked_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE x (y)")
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the file
    try:
        store = SqliteStore(path, busy_timeout_s=0.2)
        with pytest.raises(LedgerError) as e:
            store.open()
        assert "lock" in e.value.message
        assert str(path) in e.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_ledger_from_a_newer_hedge_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="newer hedge"):
        SqliteStore(path).open()


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="is a directory"):
        SqliteStore(tmp_path).open()


def test_the_parent_directory_is_created(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "a" / "b" / "ledger.db")
    store.open()
    store.close()
    assert (tmp_path / "a" / "b" / "ledger.db").is_file()


# ---- open_ledger, NullLedger --------------------------------------------------------------


def test_open_ledger_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_ledger(LedgerSettings(backend="none"), None), NullLedger)
    ledger = open_ledger(LedgerSettings(path=str(tmp_path / "l.db"), batch_size=7), None)
    assert isinstance(ledger, BatchingLedger)
    assert isinstance(ledger.store, SqliteStore)
    assert ledger.batch_size == 7


def test_postgres_without_a_dsn_says_which_variable_to_set() -> None:
    settings = LedgerSettings(backend="postgres", url_env="MY_LEDGER_DSN")
    with pytest.raises(LedgerError, match=r"\$MY_LEDGER_DSN is not set"):
        open_ledger(settings, None)


def test_null_ledger_records_nothing_and_knows_no_request() -> None:
    ledger = NullLedger()

    async def main() -> tuple[bool, list[dict[str, Any]]]:
        await ledger.start()
        ledger.record(sample()[0])
        known = await ledger.feedback("r1", True, None)
        rows = await ledger.summary(None, None, "route")
        await ledger.aclose()
        return known, rows

    assert asyncio.run(main()) == (False, [])


# ---- request_record (pure) ----------------------------------------------------------------

PRICES = {
    "cheap": Prices(input=1.0, output=2.0),
    "strong": Prices(input=10.0, output=30.0, cached_input=5.0),
}


def test_request_record_prices_each_attempt_at_its_deployment() -> None:
    trace = Trace(route="chat")
    trace.started = time.perf_counter() - 2.0  # the request took 2 s
    failed = trace.begin("cheap")
    failed.seconds, failed.error = 0.5, "upstream timed out"
    billed_failure = trace.begin("cheap")
    billed_failure.seconds, billed_failure.error = 0.25, "stream broke"
    billed_failure.usage = Usage(prompt_tokens=1000, completion_tokens=100)
    ok = trace.begin("strong")
    ok.seconds = 1.0
    ok.usage = Usage(prompt_tokens=2000, completion_tokens=500, cached_tokens=1000)
    trace.answered_by = "strong"

    r = request_record(trace, PRICES, 200, stage=1, success=True, key="team-a", now=5000.0)

    # cheap, with usage: 1000 * 1 + 100 * 2 = 1,200 / 1M = 0.0012.
    # strong: uncached 1000 * 10 + cached 1000 * 5 + 500 * 30 = 30,000 / 1M = 0.03.
    assert [a.cost_usd for a in r.attempts] == pytest.approx([0.0, 0.0012, 0.03])
    assert r.cost_usd == pytest.approx(0.0312)
    assert [a.seq for a in r.attempts] == [0, 1, 2]
    assert [a.latency_ms for a in r.attempts] == pytest.approx([500, 250, 1000])
    assert [a.error for a in r.attempts] == ["upstream timed out", "stream broke", None]
    assert r.attempts[2].cached_tokens == 1000
    assert all(a.request_id == trace.request_id for a in r.attempts)
    assert (r.route, r.caller_key, r.answered_by, r.stage, r.status, r.success) == (
        "chat", "team-a", "strong", 1, 200, True,
    )  # fmt: skip
    assert r.latency_ms == pytest.approx(2000, abs=50)
    assert r.ts == pytest.approx(4998.0, abs=0.05)  # ended at 5000 after 2 s


@pytest.mark.skipif(
    not hasattr(Trace(route=""), "accepted"), reason="this Trace records no cascade verdict"
)
def test_stage_and_verdict_default_to_the_traces() -> None:
    trace = Trace(route="chat")
    trace.stage, trace.accepted = 2, False  # type: ignore[attr-defined,unused-ignore]
    r = request_record(trace, PRICES, 200)
    assert (r.stage, r.success) == (2, False)
    # Given explicitly, they win.
    r = request_record(trace, PRICES, 200, stage=0, success=True)
    assert (r.stage, r.success) == (0, True)


def test_a_deployment_without_prices_is_free() -> None:
    trace = Trace(route="chat")
    a = trace.begin("local")
    a.usage = Usage(prompt_tokens=10**6, completion_tokens=10**6)
    assert request_record(trace, PRICES, 200).cost_usd == 0.0


# ---- render_costs (pure) ------------------------------------------------------------------


def test_render_costs_table() -> None:
    text = render_costs(BY_DEPLOYMENT)
    lines = text.splitlines()
    assert lines[0].split() == ["DEPLOYMENT", "SPEND", "REQUESTS", "SUCCESSES", "SUCCESS",
                                "RATE", "COST/SUCCESS"]  # fmt: skip
    assert lines[1].split() == ["strong", "$0.10", "3", "1", "50.0%", "of", "2", "$0.10"]
    assert lines[2].split() == ["cheap", "$0.001500", "1", "1", "100.0%", "of", "1", "$0.001500"]
    # Totals: 0.1015 over 2 successes of 3 judged.
    assert lines[3].split() == ["TOTAL", "$0.10", "4", "2", "66.7%", "of", "3", "$0.05"]
    assert len({len(line) for line in lines[:1]}) == 1


def test_render_costs_without_successes_or_rows() -> None:
    text = render_costs([row("key", "k2", 2, 3, 0, 0, 0.03)])
    assert text.splitlines()[1].split() == ["k2", "$0.03", "2", "0", "-", "-"]
    assert text.splitlines()[0].startswith("KEY")
    assert render_costs([]) == "No requests recorded yet."


# ---- POST /v1/feedback ----------------------------------------------------------------------


async def call(app: FeedbackApi, body: bytes, method: str = "POST") -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    from hedge.errors import HedgeError
    from hedge.server.asgi import send_error

    scope = {"type": "http", "method": method, "path": "/v1/feedback", "headers": []}
    try:
        await app(scope, receive, send)
    except HedgeError as e:  # what HedgeApp does with it
        await send_error(send, e)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def test_feedback_endpoint_records_and_refuses_unknown_ids(tmp_path: Path) -> None:
    ledger = BatchingLedger(SqliteStore(tmp_path / "l.db"), flush_interval_s=60, batch_size=10)
    app = FeedbackApi(ledger)

    async def main() -> list[tuple[int, Any]]:
        await ledger.start()
        ledger.record(sample()[0])
        out = [
            await call(app, b'{"request_id": "r1", "success": false, "score": 0.25}'),
            await call(app, b'{"request_id": "nope", "success": true}'),
            await call(app, b'{"request_id": "r1", "success": "yes"}'),
            await call(app, b"", method="GET"),
        ]
        rows = await ledger.summary(None, None, "route")
        await ledger.aclose()
        assert (rows[0]["successes"], rows[0]["judged"]) == (0, 1)
        return out

    ok, unknown, bad, get = asyncio.run(main())
    assert ok == (200, {"request_id": "r1", "recorded": True})
    assert unknown[0] == 404
    assert unknown[1]["error"]["code"] == "request_not_found"
    assert unknown[1]["error"]["param"] == "request_id"
    assert "nope" in unknown[1]["error"]["message"]
    assert bad[0] == 400
    assert bad[1]["error"]["param"] == "success"
    assert get[0] == 405


def test_feedback_endpoint_without_a_ledger() -> None:
    status, body = asyncio.run(
        call(FeedbackApi(NullLedger()), b'{"request_id":"x","success":true}')
    )
    assert status == 404
    assert body["error"]["code"] == "ledger_disabled"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"success": true}', "request_id", "required"),
        (b'{"request_id": "x"}', "success", "required"),
        (b'{"request_id": "", "success": true}', "request_id", "non-empty string"),
        (b'{"request_id": 7, "success": true}', "request_id", "the number 7"),
        (b'{"request_id": "x", "success": 1}', "success", "true or false"),
        (b'{"request_id": "x", "success": "true"}', "success", "without quotes"),
        (b'{"request_id": "x", "success": true, "score": 1.5}', "score", "from 0 to 1"),
        (b'{"request_id": "x", "success": true, "score": -0.1}', "score", "from 0 to 1"),
        (b'{"request_id": "x", "success": true, "score": true}', "score", "a number"),
        (b'{"request_id": "x", "success": true, "score": "0.5"}', "score", "a number"),
        (b'{"request_id": "x", "success": true, "scor": 0.5}', "scor", "unknown field"),
        (b'{"request_id": "' + b"x" * 300 + b'", "success": true}', "request_id", "longer"),
    ],
)
def test_feedback_bodies_are_validated_strictly(body: bytes, param: str | None, words: str) -> None:
    from hedge.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as e:
        parse_feedback(body)
    assert e.value.param == param
    assert words in e.value.message


def test_feedback_body_accepts_what_it_should() -> None:
    assert parse_feedback(b'{"request_id": "a", "success": true}') == ("a", True, None)
    assert parse_feedback(b'{"request_id": "a", "success": false, "score": 0}') == (
        "a", False, 0.0,
    )  # fmt: skip
    assert parse_feedback(b'{"request_id": "a", "success": true, "score": null}') == (
        "a", True, None,
    )  # fmt: skip
