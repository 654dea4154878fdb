"""The default ledger store: one SQLite file, in WAL mode.

WAL with synchronous=NORMAL makes each batch's commit one sequential append: a crash of the
gateway (even SIGKILL) loses no committed batch and cannot corrupt the file, and `hedge costs`
can read while the gateway writes. (A power cut may lose the last few commits, never the file.)
The schema version lives in `PRAGMA user_version`, so a file written by a newer hedge is
refused instead of misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

# MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE requests (
            request_id  TEXT PRIMARY KEY,
            ts          REAL NOT NULL,
            route       TEXT NOT NULL,
            caller_key  TEXT,
            answered_by TEXT,
            stage       INTEGER,
            status      INTEGER NOT NULL,
            success     INTEGER,
            score       REAL,
            feedback_ts REAL,
            cost_usd    REAL NOT NULL,
            latency_ms  REAL NOT NULL
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
            cost_usd          REAL NOT NULL,
            latency_ms        REAL NOT NULL,
            error             TEXT,
            ts                REAL NOT NULL,
            PRIMARY KEY (request_id, seq)
        ) WITHOUT ROWID""",
        "CREATE INDEX attempts_deployment ON attempts (deployment, ts)",
    ),
    # 2: what the cache and prompt compaction did for each request.
    (
        "ALTER TABLE requests ADD COLUMN cache TEXT",
        "ALTER TABLE requests ADD COLUMN prompt_tokens_saved INTEGER",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class SqliteStore:
    """A `Store` on one SQLite file. Not thread-safe: `BatchingLedger` calls it from one
    worker thread."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None

    @property
    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"The ledger at {self.path} is not open.")
        return self._conn

    def open(self) -> None:
        if self.path.is_dir():
            raise LedgerError(
                f"ledger.path {self.path} is a directory. Fix: point ledger.path at a file, "
                "such as ~/.cache/hedge/ledger.db."
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LedgerError(
                f"Cannot create the directory for the ledger {self.path} ({e.strerror}). "
                "Fix: set ledger.path to a writable location."
            ) from None
        try:
            # isolation_level=None: transactions are begun and ended explicitly below, so one
            # batch is exactly one transaction. check_same_thread=False: opened on one thread,
            # then used by the ledger's single worker thread, never by two at once.
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise self._error("cannot be opened", e) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"The ledger {self.path} cannot use write-ahead logging (journal mode "
                    f"stays '{mode}'), which crash safety depends on. Fix: put ledger.path on "
                    "a local file system."
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except sqlite3.Error as e:
            conn.close()
            raise self._error("cannot be used", e) from None
        except LedgerError:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"The ledger {self.path} has schema version {version}, written by a newer "
                f"hedge (this one reads up to {SCHEMA_VERSION}). Fix: upgrade hedge, or point "
                "ledger.path at another file."
            )
        if version == SCHEMA_VERSION:
            return
        # IMMEDIATE takes the write lock before reading the version again, so two gateways
        # starting on one file cannot both apply the same migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _error(self, what: str, e: sqlite3.Error) -> LedgerError:
        text = str(e)
        if "locked" in text or "busy" in text:
            fix = (
                f"another process holds a lock on it for more than {self._busy_timeout_s:g}s. "
                "Fix: stop the other process, or point ledger.path at another file."
            )
        elif isinstance(e, sqlite3.DatabaseError) and "not a database" in text:
            fix = (
                "it is not a SQLite database, or it is corrupt. Fix: move the file aside "
                "(hedge will start a new ledger) or point ledger.path at another file."
            )
        else:
            fix = "Fix: check the file's permissions and the disk, or set ledger.path elsewhere."
        return LedgerError(f"The ledger {self.path} {what}: {text}; {fix}")

    def write_batch(self, records: Sequence[RequestRecord]) -> None:
        conn = self.connection
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(INSERT_REQUEST, [request_row(r) for r in records])
                conn.executemany(INSERT_ATTEMPT, attempt_rows(records))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self._error("cannot be written", e) from None

    def feedback(self, request_id: str, success: bool, score: float | None, ts: float) -> bool:
        try:
            cur = self.connection.execute(UPDATE_FEEDBACK, (success, score, ts, request_id))
        except sqlite3.Error as e:
            raise self._error("cannot be written", e) from None
        return cur.rowcount > 0

    def summary(self, since: float | None, route: str | None, by: GroupBy) -> list[dict[str, Any]]:
        sql, params = summary_query(since, route, by)
        try:
            raw = self.connection.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error("cannot be read", e) from None
        return summary_rows(raw, by)

    def timeline(self, since: float, bucket_s: float) -> list[dict[str, Any]]:
        # CAST truncates toward zero: the floor of the non-negative bucket index.
        sql, params = timeline_query(since, bucket_s, "CAST({} AS INTEGER)")
        try:
            raw = self.connection.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error("cannot be read", e) from None
        return timeline_rows(raw, since, bucket_s)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
