"""The on-disk cache store: one SQLite file in WAL mode, bounded by entries and bytes.

Every query runs on one worker thread of the store's own, which owns the connection, so the
event loop never waits on the disk. WAL lets the gateway processes of one host share the file
(readers never block the writer). Running totals live in the file, kept by triggers, so every
process sees the same bound. When a write takes the file over a bound, expired entries go first,
then the oldest stored (first in, first out: a hit writes nothing, which keeps hits cheap).

The file is a cache: a damaged entry is deleted and answered as a miss, and a runtime failure
(disk full, file locked too long) is logged and answered as a miss or a skipped write.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from hedge.cache import CacheEntry, CacheUnavailable, CorruptEntry, decode_entry

__all__ = ["SqliteStore"]

log = logging.getLogger("hedge.cache")

T = TypeVar("T")

# Bumped when the table layout changes; a file of another layout is rebuilt (it is a cache).
LAYOUT_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        key        TEXT PRIMARY KEY,
        value      BLOB NOT NULL,
        size       INTEGER NOT NULL,
        stored_at  REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_stored_at ON entries (stored_at)",
    "CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at)",
    """CREATE TABLE IF NOT EXISTS totals (
        id      INTEGER PRIMARY KEY CHECK (id = 0),
        entries INTEGER NOT NULL,
        bytes   INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO totals VALUES (0, 0, 0)",
    """CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries BEGIN
        UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0;
    END""",
    """CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries BEGIN
        UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0;
    END""",
)


class SqliteStore:
    """A `CacheStore` on one SQLite file. `clock` (wall-clock seconds, shared by every process
    using the file) is for tests."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int,
        max_bytes: int,
        max_entry_bytes: int | None = None,
        busy_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).expanduser()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes or max_bytes, max_bytes)
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hedge-cache")
        self._last_warning = 0.0
        self._closed = False

    # ---- the async API ------------------------------------------------------------------

    async def start(self) -> None:
        """Open (and if needed create) the file; raises `CacheUnavailable` when it cannot be
        used, so a misconfigured path shows at start-up."""
        await self._run(self._connect)

    async def get(self, key: str) -> CacheEntry | None:
        try:
            return await self._run(self._get, key)
        except (sqlite3.Error, CacheUnavailable, OSError) as e:
            self._warn(f"cache read failed, answering a miss: {e}")
            return None

    async def put(self, key: str, answer: CacheEntry, ttl_s: float) -> bool:
        data = answer.to_bytes()
        if len(data) + len(key) > self.max_entry_bytes or ttl_s <= 0:
            return False
        try:
            await self._run(self._put, key, data, ttl_s)
        except (sqlite3.Error, CacheUnavailable, OSError) as e:
            self._warn(f"cache write failed, not stored: {e}")
            return False
        return True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise CacheUnavailable("the cache store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _warn(self, message: str) -> None:
        # A broken cache would otherwise log once per request.
        now = time.monotonic()
        if now - self._last_warning >= 60 or self._last_warning == 0:
            self._last_warning = now
            log.warning("%s (%s)", message, self.path)

    # ---- on the worker thread -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: each read is its own snapshot; writes open explicit transactions.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        except (sqlite3.Error, OSError) as e:
            raise CacheUnavailable(f"cannot open the cache file {self.path}: {e}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL: a power cut may lose the last writes, never the file; for a
            # cache that is the right trade.
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, LAYOUT_VERSION):
                # Another layout (an older or newer hedge): it is only a cache, start afresh.
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DROP TABLE IF EXISTS entries")
                conn.execute("DROP TABLE IF EXISTS totals")
                conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.close()
            raise CacheUnavailable(
                f"the cache file {self.path} is not a usable SQLite database ({e}). "
                "Fix: delete it (it only holds cached answers) or point cache.path elsewhere."
            ) from None
        self._conn = conn
        return conn

    def _get(self, key: str) -> CacheEntry | None:
        conn = self._connect()
        row = conn.execute("SELECT value, expires_at FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value, expires_at = row
        if not isinstance(expires_at, (int, float)) or expires_at <= self._clock():
            self._delete(conn, key, value)
            return None
        try:
            if not isinstance(value, bytes):
                raise CorruptEntry(f"value of type {type(value).__name__}")
            return decode_entry(value)
        except CorruptEntry as e:
            log.warning("dropping a damaged cache entry %s...: %s", key[:12], e)
            self._delete(conn, key, value)
            return None

    @staticmethod
    def _delete(conn: sqlite3.Connection, key: str, value: object) -> None:
        # Only if unchanged: another process may have stored a fresh answer meanwhile.
        conn.execute("DELETE FROM entries WHERE key = ? AND value IS ?", (key, value))

    def _put(self, key: str, data: bytes, ttl_s: float) -> None:
        conn = self._connect()
        now = self._clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            # DELETE then INSERT rather than REPLACE: REPLACE's implicit delete does not fire
            # the trigger that keeps the totals.
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            conn.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                (key, data, len(data) + len(key), now, now + ttl_s),
            )
            self._evict(conn, now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        entries, size = conn.execute("SELECT entries, bytes FROM totals").fetchone()
        if entries <= self.max_entries and size <= self.max_bytes:
            return
        conn.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
        entries, size = conn.execute("SELECT entries, bytes FROM totals").fetchone()
        excess_entries, excess_bytes = entries - self.max_entries, size - self.max_bytes
        if excess_entries <= 0 and excess_bytes <= 0:
            return
        victims: list[tuple[str]] = []
        oldest = conn.execute("SELECT key, size FROM entries ORDER BY stored_at, rowid")
        for key, entry_size in oldest:
            if excess_entries <= 0 and excess_bytes <= 0:
                break
            victims.append((key,))
            excess_entries -= 1
            excess_bytes -= entry_size
        oldest.close()  # finish the read before deleting from the same table
        conn.executemany("DELETE FROM entries WHERE key = ?", victims)

    # ---- for tests and `hedge doctor` ---------------------------------------------------

    async def totals(self) -> tuple[int, int]:
        """(entries, bytes) as the file records them."""

        def read() -> tuple[int, int]:
            row = self._connect().execute("SELECT entries, bytes FROM totals").fetchone()
            return int(row[0]), int(row[1])

        return await self._run(read)
