"""The ledger on a real PostgreSQL: the same store contract as SQLite, plus what only a server
can do to a client (refuse it, drop its connection).

The server is a throwaway cluster (tests/pg.py) started once for the session; every test gets
a fresh database on it. Skipped only when the PostgreSQL server binaries are not installed
(scripts/system-deps.sh installs them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest

from hedge.config import LedgerSettings
from hedge.ledger import BatchingLedger, LedgerError, open_ledger
from hedge.store import SCHEMA_VERSION
from hedge.store.postgres import PostgresStore, describe_dsn
from tests import pg
from tests.conftest import run_gateway
from tests.fakes.openai_fake import fake_openai
from tests.unit.test_ledger_sqlite import (
    BY_ROUTE,
    MakeStore,
    Query,
    StoreContract,
    assert_rows,
    numbered,
    sample,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Postgres]:
    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, createdb) are not installed; "
            "run scripts/system-deps.sh"
        )
    with pg.throwaway_postgres(bin_dir) as server:
        yield server


@pytest.fixture
def dsn(postgres: pg.Postgres) -> str:
    return postgres.create_database()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def make_store(self, dsn: str) -> MakeStore:
        return lambda: PostgresStore(dsn)

    @pytest.fixture
    def query(self, dsn: str) -> Query:
        def run(sql: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return conn.execute(sql).fetchall()

        return run


def test_schema_version_is_recorded_once(dsn: str) -> None:
    for _ in range(2):
        store = PostgresStore(dsn)
        store.open()
        store.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT version FROM hedge_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_open_ledger_with_a_dsn_writes_to_postgres(dsn: str) -> None:
    ledger = open_ledger(LedgerSettings(backend="postgres", flush_interval_s=0.1), dsn)
    assert isinstance(ledger, BatchingLedger)

    async def main() -> list[dict[str, Any]]:
        await ledger.start()
        for r in sample():
            ledger.record(r)
        rows = await ledger.summary(None, None, "route")
        await ledger.aclose()
        return rows

    assert_rows(asyncio.run(main()), BY_ROUTE)


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    port = pg.free_port()  # nothing listens there
    store = PostgresStore(
        f"postgresql://ledger:s3cret-pw@127.0.0.1:{port}/hedge", connect_timeout_s=2
    )
    with pytest.raises(LedgerError) as e:
        store.open()
    assert f"ledger@127.0.0.1:{port}/hedge" in e.value.message
    assert "s3cret-pw" not in e.value.message
    assert "Fix:" in e.value.message


def test_describe_dsn_never_shows_the_password() -> None:
    assert describe_dsn("host=db port=6543 dbname=x user=u password=p") == "u@db:6543/x"
    assert "pw" not in describe_dsn("postgresql://u:pw@h/d")


def test_a_dropped_connection_costs_one_retried_batch(dsn: str) -> None:
    store = PostgresStore(dsn)
    store.open()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'hedge-ledger'"
        )
    records = numbered(3)
    with pytest.raises(LedgerError):
        store.write_batch(records)  # the server hung up on this connection
    store.write_batch(records)  # a fresh connection, the same batch
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (3,)
    store.close()


def test_the_ledger_rides_out_a_dropped_connection(dsn: str) -> None:
    store = PostgresStore(dsn)
    ledger = BatchingLedger(store, flush_interval_s=0.05, batch_size=100)

    async def main() -> None:
        await ledger.start()
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'hedge-ledger'"
            )
        for r in numbered(5):
            ledger.record(r)
        await asyncio.sleep(0.5)  # a failed tick, then a retried one
        await ledger.aclose()

    asyncio.run(main())
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (5,)


def test_two_gateway_replicas_write_one_postgres_ledger(dsn: str, tmp_path: Path) -> None:
    """Two `hedge serve` processes with the ledger in one PostgreSQL database: every request
    of both is there, once."""
    with fake_openai() as fake:
        cfg = (
            "ledger: {backend: postgres, flush_interval_s: 0.1}\n"
            "deployments:\n"
            f"  up: {{kind: openai_compat, base_url: '{fake.url}', upstream_model: echo,"
            " hosting: hosted, prices: {input: 1.0, output: 2.0}}\n"
            "routes:\n  chat: {deployments: [up], accept_single_point_of_failure: true}\n"
        )
        env = {"HEDGE_LEDGER_URL": dsn}
        ids: list[str] = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        with (
            run_gateway(cfg, tmp_path / "a", env=env) as a,
            run_gateway(cfg, tmp_path / "b", env=env) as b,
        ):
            for gw in (a, b, a, b, b):
                api = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
                raw = api.chat.completions.with_raw_response.create(
                    model="chat", messages=[{"role": "user", "content": "hello"}]
                )
                ids.append(raw.headers["x-request-id"])
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT request_id, route, status FROM requests").fetchall()
    assert sorted(rows) == sorted((rid, "chat", 200) for rid in ids)
