"""The dashboard's spend over time: `Store.timeline` on SQLite, numbers worked out by hand.

`TimelineContract` holds what every store must give; tests/integration/test_timeline_postgres.py
runs it against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hedge.ledger import BatchingLedger, NullLedger, RequestRecord
from hedge.store import Store
from hedge.store.sqlite import SqliteStore
from tests.unit.test_ledger_sqlite import MakeStore, req

SINCE = 1000.0
BUCKET = 60.0


def records() -> list[RequestRecord]:
    return [
        req("before", ts=999.9, route="chat", key=None, answered_by="a", success=True,
            attempts=[("a", 9.0, None)]),
        req("t1", ts=1000.0, route="chat", key=None, answered_by="a", success=True,
            attempts=[("a", 0.01, None)]),
        req("t2", ts=1059.9, route="chat", key="k", answered_by="b", success=None,
            attempts=[("a", 0.005, "timeout"), ("b", 0.015, None)]),
        # on the boundary: the next bucket
        req("t3", ts=1060.0, route="chat", key=None, answered_by=None, success=None,
            status=502, attempts=[("a", 0.0, "502")]),
        req("t4", ts=1075.0, route="code", key=None, answered_by="b", success=False,
            attempts=[("b", 0.05, None)]),
        req("t5", ts=1125.0, route="chat", key=None, answered_by="a", success=True,
            attempts=[("a", 0.03, None)]),
        req("t6", ts=1170.0, route="chat", key=None, answered_by="a", success=True,
            attempts=[("a", 0.01, None)]),
    ]  # fmt: skip


def point(
    ts: float,
    route: str,
    requests: int,
    errors: int,
    successes: int,
    judged: int,
    spend: float,
    per_success: float | None,
) -> dict[str, Any]:
    return {
        "ts": ts,
        "route": route,
        "requests": requests,
        "errors": errors,
        "successes": successes,
        "judged": judged,
        "spend_usd": pytest.approx(spend),
        "cost_per_success_usd": None if per_success is None else pytest.approx(per_success),
    }


EXPECTED = [
    point(1000.0, "chat", 2, 0, 1, 1, 0.03, 0.03),  # t1, t2: 0.01 + 0.005 + 0.015
    point(1060.0, "chat", 1, 1, 0, 0, 0.0, None),  # t3
    point(1060.0, "code", 1, 0, 0, 1, 0.05, None),  # t4, judged a failure
    point(1120.0, "chat", 2, 0, 2, 2, 0.04, 0.02),  # t5, t6
]


class TimelineContract:
    def test_buckets_per_route_from_since(self, make_store: MakeStore) -> None:
        store = make_store()
        store.open()
        try:
            store.write_batch(records())
            assert store.timeline(SINCE, BUCKET) == EXPECTED
            # Feedback turns t4 into a success: its bucket now has a cost per success.
            assert store.feedback("t4", True, None, 2000.0)
            assert store.timeline(SINCE, BUCKET)[2] == point(1060.0, "code", 1, 0, 1, 1, 0.05, 0.05)
            # Wider buckets merge them; a later start leaves the older ones out.
            assert store.timeline(SINCE, 600.0) == [
                point(1000.0, "chat", 5, 1, 3, 3, 0.07, 0.07 / 3),
                point(1000.0, "code", 1, 0, 1, 1, 0.05, 0.05),
            ]
            assert store.timeline(1100.0, BUCKET) == [
                point(1100.0, "chat", 1, 0, 1, 1, 0.03, 0.03),  # t5
                point(1160.0, "chat", 1, 0, 1, 1, 0.01, 0.01),  # t6
            ]
            assert store.timeline(5000.0, BUCKET) == []
        finally:
            store.close()


class TestSqliteTimeline(TimelineContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        return lambda: SqliteStore(tmp_path / "ledger.db")


def test_the_ledger_reads_it_on_its_worker_thread(tmp_path: Path) -> None:
    store: Store = SqliteStore(tmp_path / "ledger.db")
    ledger = BatchingLedger(store, flush_interval_s=0.05, batch_size=100)

    async def main() -> list[dict[str, Any]]:
        await ledger.start()
        try:
            for r in records():
                ledger.record(r)
            await ledger.flush()
            return await ledger.timeline(SINCE, BUCKET)
        finally:
            await ledger.aclose()

    assert asyncio.run(main()) == EXPECTED
    assert asyncio.run(NullLedger().timeline(SINCE, BUCKET)) == []
