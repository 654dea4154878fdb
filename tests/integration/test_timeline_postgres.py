"""The dashboard's spend over time on a real PostgreSQL: the same numbers as on SQLite
(tests/unit/test_timeline.py), from the same shared SQL with PostgreSQL's own FLOOR."""

from __future__ import annotations

import pytest

from hedge.store.postgres import PostgresStore
from tests.integration.test_ledger_postgres import dsn, postgres  # noqa: F401 - fixtures
from tests.unit.test_ledger_sqlite import MakeStore
from tests.unit.test_timeline import TimelineContract


class TestPostgresTimeline(TimelineContract):
    @pytest.fixture
    def make_store(self, dsn: str) -> MakeStore:  # noqa: F811 - the fixture above
        return lambda: PostgresStore(dsn)
