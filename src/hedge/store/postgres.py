"""The PostgreSQL ledger store, for several gateways writing to one place (psycopg 3).

Same tables, same SQL and same semantics as the SQLite store. One connection, opened at start
and reopened on the next batch after it breaks (a database restart costs a retried batch, not
the gateway). The schema version is kept in a one-row table `hedge_schema`, and migrations run
under an advisory lock so gateways starting together do not race.

Installed with the `postgres` extra (`pip install 'hedge[postgres]'`); imported only when
`ledger.backend` is `postgres`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from hedge.store import (
    INSERT_ATTEMPT,
    INSERT_REQUEST,
    SCHEMA_VERSION,
    UPDATE_FEEDBACK,
    GroupBy,
    LedgerError,
    attempt_rows,
    request_row,
    summary_query,
    summary_rows,
    timeline_query,
    timeline_rows,
)

if TYPE_CHECKING:
    from hedge.ledger import RequestRecord

# Any constant: the advisory lock that serialises schema migrations between gateways.
_MIGRATION_LOCK = 0x68656467  # "hedg"

# MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE requests (
            request_id  TEXT PRIMARY KEY,
            ts          DOUBLE PRECISION NOT NULL,
            route       TEXT NOT NULL,
            caller_key  TEXT,
            answered_by TEXT,
            stage       INTEGER,
            status      INTEGER NOT NULL,
            success     BOOLEAN,
            score       DOUBLE PRECISION,
            feedback_ts DOUBLE PRECISION,
            cost_usd    DOUBLE PRECISION NOT NULL,
            latency_ms  DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX requests_ts ON requests (ts)",
        "CREATE INDEX requests_route ON requests (route, ts)",
        """CREATE TABLE attempts (
            request_id        TEXT NOT NULL,
            seq               INTEGER NOT NULL,
            deployment        TEXT NOT NULL,
            stage             INTEGER,
            prompt_tokens     INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cached_tokens     INTEGER NOT NULL,
            reasoning_tokens  INTEGER NOT NULL,
            cost_usd          DOUBLE PRECISION NOT NULL,
            latency_ms        DOUBLE PRECISION NOT NULL,
            error             TEXT,
            ts                DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (request_id, seq)
        )""",
        "CREATE INDEX attempts_deployment ON attempts (deployment, ts)",
    ),
    # 2: what the cache and prompt compaction did for each request.
    (
        "ALTER TABLE requests ADD COLUMN cache TEXT",
        "ALTER TABLE requests ADD COLUMN prompt_tokens_saved INTEGER",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


def _pg(sql: str) -> str:
    """The shared SQL uses `?` placeholders; psycopg wants `%s` (the SQL holds no `%`)."""
    return sql.replace("?", "%s")


_INSERT_REQUEST = _pg(INSERT_REQUEST)
_INSERT_ATTEMPT = _pg(INSERT_ATTEMPT)
_UPDATE_FEEDBACK = _pg(UPDATE_FEEDBACK)


def describe_dsn(dsn: str) -> str:
    """user@host:port/dbname, never the password, for messages about the connection."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    user = parts.get("user") or "(default user)"
    host = parts.get("host") or "(default host)"
    port = parts.get("port") or "5432"
    return f"{user}@{host}:{port}/{parts.get('dbname') or '(default database)'}"


class PostgresStore:
    """A `Store` on a PostgreSQL database. Not thread-safe: `BatchingLedger` calls it from
    one worker thread."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[TupleRow] | None = None
        self.where = describe_dsn(dsn)

    def open(self) -> None:
        conn = self._connect()
        try:
            self._migrate(conn)
        except psycopg.Error as e:
            conn.close()
            raise self._error("cannot be set up", e) from None
        except LedgerError:
            conn.close()
            raise
        self._conn = conn

    def _connect(self) -> psycopg.Connection[TupleRow]:
        try:
            # autocommit: reads never leave a transaction open; writes are explicit
            # `transaction()` blocks, one per batch.
            return psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout_s)),
                application_name="hedge-ledger",
                # Notice a server that vanished without closing the connection.
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
        except psycopg.Error as e:
            raise LedgerError(
                f"Cannot connect to the PostgreSQL ledger {self.where}: {str(e).strip()}. "
                "Fix: check the DSN in the variable named by ledger.url_env, and that the "
                "server is up and accepts this user."
            ) from None

    def _migrate(self, conn: psycopg.Connection[TupleRow]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS hedge_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM hedge_schema").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"The PostgreSQL ledger {self.where} has schema version {version}, "
                    f"written by a newer hedge (this one reads up to {SCHEMA_VERSION}). "
                    "Fix: upgrade hedge, or use another database."
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute("DELETE FROM hedge_schema")
                conn.execute("INSERT INTO hedge_schema (version) VALUES (%s)", (SCHEMA_VERSION,))

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._connect()
        return self._conn

    def _error(self, what: str, e: psycopg.Error) -> LedgerError:
        if isinstance(e, psycopg.OperationalError) and self._conn is not None:
            # Most likely the connection itself: start the next call on a fresh one.
            self._conn.close()
            self._conn = None
        return LedgerError(f"The PostgreSQL ledger {self.where} {what}: {str(e).strip()}.")

    def write_batch(self, records: Sequence[RequestRecord]) -> None:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT_REQUEST, [request_row(r) for r in records])
                attempts = attempt_rows(records)
                if attempts:
                    cur.executemany(_INSERT_ATTEMPT, attempts)
        except psycopg.Error as e:
            raise self._error("cannot be written", e) from None

    def feedback(self, request_id: str, success: bool, score: float | None, ts: float) -> bool:
        conn = self._connection()
        try:
            cur = conn.execute(_UPDATE_FEEDBACK, (success, score, ts, request_id))
        except psycopg.Error as e:
            raise self._error("cannot be written", e) from None
        return cur.rowcount > 0

    def summary(self, since: float | None, route: str | None, by: GroupBy) -> list[dict[str, Any]]:
        sql, params = summary_query(since, route, by)
        conn = self._connection()
        try:
            raw = conn.execute(_pg(sql), params).fetchall()
        except psycopg.Error as e:
            raise self._error("cannot be read", e) from None
        return summary_rows(raw, by)

    def timeline(self, since: float, bucket_s: float) -> list[dict[str, Any]]:
        # A CAST to an integer would round: FLOOR gives the bucket the row falls in.
        sql, params = timeline_query(since, bucket_s, "FLOOR({})::bigint")
        conn = self._connection()
        try:
            raw = conn.execute(_pg(sql), params).fetchall()
        except psycopg.Error as e:
            raise self._error("cannot be read", e) from None
        return timeline_rows(raw, since, bucket_s)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
