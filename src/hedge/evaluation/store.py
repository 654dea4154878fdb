"""Evaluation runs and their results, kept in the ledger's database.

Two tables of their own beside the ledger's (`eval_runs`, `eval_results`), in the same SQLite
file or PostgreSQL database the ledger uses, so an eval result's `request_id` joins the ledger's
`requests` and `attempts` rows of the call that produced it. The ledger's tables and its schema
version are never touched; these tables carry their own version in `eval_schema`.

Unlike the ledger, which keeps metadata only, results keep the answer text: suites are test
data written for evaluation, and the answers are what `compare` shows and what a cascade gate
is judged on by `recommend`.

Each result is written in its own transaction as soon as its case is scored, so a run killed at
any moment loses at most the cases in flight, and resuming skips every case already stored.
The SQL is written once, in the dialect SQLite and PostgreSQL share (`?` placeholders are
rewritten for psycopg).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from hedge.config import Settings

SCHEMA_VERSION = 1

SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS eval_schema (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS eval_runs (
        run_id        TEXT PRIMARY KEY,
        created       DOUBLE PRECISION NOT NULL,
        suite         TEXT NOT NULL,
        suite_source  TEXT NOT NULL,
        suite_sha256  TEXT NOT NULL,
        suite_text    TEXT NOT NULL,
        mode          TEXT NOT NULL,
        target        TEXT NOT NULL,
        candidates    TEXT NOT NULL,
        case_ids      TEXT NOT NULL,
        options       TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS eval_results (
        run_id            TEXT NOT NULL,
        candidate         TEXT NOT NULL,
        case_id           TEXT NOT NULL,
        ts                DOUBLE PRECISION NOT NULL,
        status            TEXT NOT NULL,
        passed            INTEGER NOT NULL,
        score             DOUBLE PRECISION,
        reason            TEXT NOT NULL,
        output            TEXT,
        error             TEXT,
        request_id        TEXT,
        deployment        TEXT,
        latency_ms        DOUBLE PRECISION,
        prompt_tokens     INTEGER,
        completion_tokens INTEGER,
        cost_usd          DOUBLE PRECISION,
        attempts          INTEGER,
        tags              TEXT NOT NULL,
        PRIMARY KEY (run_id, candidate, case_id)
    )""",
)

INSERT_RUN = (
    "INSERT INTO eval_runs (run_id, created, suite, suite_source, suite_sha256, suite_text,"
    " mode, target, candidates, case_ids, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_RUN = (
    "SELECT run_id, created, suite, suite_source, suite_sha256, suite_text, mode, target,"
    " candidates, case_ids, options FROM eval_runs"
)
# A retried case (--retry-errors) replaces its earlier error.
UPSERT_RESULT = (
    "INSERT INTO eval_results (run_id, candidate, case_id, ts, status, passed, score, reason,"
    " output, error, request_id, deployment, latency_ms, prompt_tokens, completion_tokens,"
    " cost_usd, attempts, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, candidate, case_id) DO UPDATE SET ts = excluded.ts,"
    " status = excluded.status, passed = excluded.passed, score = excluded.score,"
    " reason = excluded.reason, output = excluded.output, error = excluded.error,"
    " request_id = excluded.request_id, deployment = excluded.deployment,"
    " latency_ms = excluded.latency_ms, prompt_tokens = excluded.prompt_tokens,"
    " completion_tokens = excluded.completion_tokens, cost_usd = excluded.cost_usd,"
    " attempts = excluded.attempts, tags = excluded.tags"
)
SELECT_RESULTS = (
    "SELECT candidate, case_id, ts, status, passed, score, reason, output, error, request_id,"
    " deployment, latency_ms, prompt_tokens, completion_tokens, cost_usd, attempts, tags"
    " FROM eval_results WHERE run_id = ? ORDER BY ts"
)
COUNT_RESULTS = "SELECT run_id, COUNT(*) FROM eval_results GROUP BY run_id"


class StoreError(Exception):
    """The evaluation database cannot be opened, read or written; the message says what to
    fix."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """What one column of an evaluation is: the `name` sent as the request's model (a route
    of the gateway), the `label` people see, and, where known, the route's configuration as
    hedge.yaml writes it (which `recommend` turns into a snippet)."""

    name: str
    label: str
    kind: Literal["route", "deployment"]
    route: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "kind": self.kind, "route": self.route}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Candidate:
        return cls(raw["name"], raw["label"], raw["kind"], raw.get("route"))


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    created: float  # Unix time
    suite: str
    suite_source: str
    suite_sha256: str
    suite_text: str
    mode: Literal["in-process", "url"]
    target: str  # the config it ran in-process on, or the gateway's URL
    candidates: tuple[Candidate, ...]
    case_ids: tuple[str, ...]  # the cases the run covers, in order
    options: dict[str, Any] = field(default_factory=dict)

    def candidate(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if name in (c.name, c.label)), None)


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case answered by one candidate, and scored."""

    candidate: str  # Candidate.name
    case_id: str
    passed: bool
    reason: str
    status: Literal["ok", "error"] = "ok"
    score: float | None = None
    output: str | None = None
    error: str | None = None
    request_id: str | None = None
    deployment: str | None = None  # the deployment that answered
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None  # None: a price was unknown
    attempts: int | None = None
    tags: tuple[str, ...] = ()
    ts: float = 0.0


def _run_row(r: RunInfo) -> tuple[Any, ...]:
    return (
        r.run_id,
        r.created,
        r.suite,
        r.suite_source,
        r.suite_sha256,
        r.suite_text,
        r.mode,
        r.target,
        orjson.dumps([c.to_json() for c in r.candidates]).decode(),
        orjson.dumps(list(r.case_ids)).decode(),
        orjson.dumps(r.options).decode(),
    )


def _run_of(row: Sequence[Any]) -> RunInfo:
    return RunInfo(
        run_id=row[0],
        created=float(row[1]),
        suite=row[2],
        suite_source=row[3],
        suite_sha256=row[4],
        suite_text=row[5],
        mode=row[6],
        target=row[7],
        candidates=tuple(Candidate.from_json(c) for c in orjson.loads(row[8])),
        case_ids=tuple(orjson.loads(row[9])),
        options=orjson.loads(row[10]),
    )


def _result_row(run_id: str, r: CaseResult) -> tuple[Any, ...]:
    return (
        run_id,
        r.candidate,
        r.case_id,
        r.ts,
        r.status,
        int(r.passed),
        r.score,
        r.reason,
        r.output,
        r.error,
        r.request_id,
        r.deployment,
        r.latency_ms,
        r.prompt_tokens,
        r.completion_tokens,
        r.cost_usd,
        r.attempts,
        orjson.dumps(list(r.tags)).decode(),
    )


def _result_of(row: Sequence[Any]) -> CaseResult:
    return CaseResult(
        candidate=row[0],
        case_id=row[1],
        ts=float(row[2]),
        status=row[3],
        passed=bool(row[4]),
        score=None if row[5] is None else float(row[5]),
        reason=row[6],
        output=row[7],
        error=row[8],
        request_id=row[9],
        deployment=row[10],
        latency_ms=None if row[11] is None else float(row[11]),
        prompt_tokens=row[12],
        completion_tokens=row[13],
        cost_usd=None if row[14] is None else float(row[14]),
        attempts=row[15],
        tags=tuple(orjson.loads(row[16])),
    )


class EvalStore(Protocol):
    """Synchronous; used by one thread at a time."""

    where: str  # for messages: the file or the database

    def open(self) -> None: ...
    def create_run(self, run: RunInfo) -> None: ...
    def run(self, run_id: str) -> RunInfo | None: ...
    def runs(self) -> list[tuple[RunInfo, int]]: ...
    def put(self, run_id: str, result: CaseResult) -> None: ...
    def results(self, run_id: str) -> list[CaseResult]: ...
    def close(self) -> None: ...


class _SqlStore:
    """The queries, over a DB-API connection that `open` sets up."""

    where = ""

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def create_run(self, run: RunInfo) -> None:
        if self.run(run.run_id) is not None:
            raise StoreError(f"An evaluation run '{run.run_id}' already exists in {self.where}.")
        self._execute(INSERT_RUN, _run_row(run))

    def run(self, run_id: str) -> RunInfo | None:
        rows = self._execute(SELECT_RUN + " WHERE run_id = ?", (run_id,))
        return _run_of(rows[0]) if rows else None

    def runs(self) -> list[tuple[RunInfo, int]]:
        counts = {str(r[0]): int(r[1]) for r in self._execute(COUNT_RESULTS)}
        runs = [_run_of(r) for r in self._execute(SELECT_RUN + " ORDER BY created")]
        return [(r, counts.get(r.run_id, 0)) for r in runs]

    def put(self, run_id: str, result: CaseResult) -> None:
        self._execute(UPSERT_RESULT, _result_row(run_id, result))

    def results(self, run_id: str) -> list[CaseResult]:
        return [_result_of(r) for r in self._execute(SELECT_RESULTS, (run_id,))]


class SqliteEvalStore(_SqlStore):
    """The tables in the ledger's SQLite file (WAL: a gateway may be writing it meanwhile)."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self.where = str(self.path)
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory. Fix: point it at a database file.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as e:
            raise StoreError(
                f"The evaluation database {self.path} cannot be opened ({e}). Fix: check the "
                "path and its permissions, or choose another file with --db."
            ) from None
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA:
                    conn.execute(statement)
                rows = conn.execute("SELECT version FROM eval_schema").fetchall()
                _check_version(rows, self)
                if not rows:
                    conn.execute("INSERT INTO eval_schema (version) VALUES (?)", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self.close()
            raise StoreError(
                f"The evaluation database {self.path} cannot be used ({e}). Fix: if it is not "
                "a SQLite database, point ledger.path (or --db) at another file."
            ) from None
        except StoreError:
            self.close()
            raise

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._conn is None:
            raise StoreError(f"The evaluation database {self.path} is not open.")
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"The evaluation database {self.path} failed: {e}.") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _check_version(rows: list[Any], store: _SqlStore) -> None:
    if rows and int(rows[0][0]) > SCHEMA_VERSION:
        raise StoreError(
            f"The evaluation tables in {store.where} have schema version {rows[0][0]}, written "
            f"by a newer hedge (this one reads up to {SCHEMA_VERSION}). Fix: upgrade hedge."
        )


_MIGRATION_LOCK = 0x68657661  # "heva": serialises creating the tables between processes


class PostgresEvalStore(_SqlStore):
    """The tables in the ledger's PostgreSQL database (psycopg 3, autocommit)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.where = "the ledger's PostgreSQL database"
        self._conn: Any = None

    def open(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "The ledger is in PostgreSQL but psycopg is not installed. Fix: "
                "pip install 'hedge[postgres]', or pass --db PATH to use a SQLite file."
            ) from None
        try:
            self._conn = psycopg.connect(self._dsn, autocommit=True)
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                for statement in SCHEMA:
                    self._conn.execute(statement)
                rows = self._conn.execute("SELECT version FROM eval_schema").fetchall()
                _check_version(rows, self)
                if not rows:
                    self._conn.execute(
                        "INSERT INTO eval_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
                    )
        except psycopg.Error as e:
            self.close()
            raise StoreError(f"The ledger's PostgreSQL database cannot be used: {e}") from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        if self._conn is None:
            raise StoreError("The evaluation database is not open.")
        try:
            cur = self._conn.execute(sql.replace("?", "%s"), tuple(params))
            return list(cur.fetchall()) if cur.description is not None else []
        except psycopg.Error as e:
            raise StoreError(f"The ledger's PostgreSQL database failed: {e}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def store_for(settings: Settings, db: str | None = None) -> EvalStore:
    """The ledger's database (or the SQLite file `db`), not yet opened."""
    if db is not None:
        return SqliteEvalStore(db)
    ledger = settings.config.ledger
    if ledger.backend == "sqlite":
        return SqliteEvalStore(ledger.path)
    if ledger.backend == "postgres" and settings.ledger_dsn:
        return PostgresEvalStore(settings.ledger_dsn)
    raise StoreError(
        f"{settings.source}: ledger.backend is '{ledger.backend}', so there is no ledger "
        "database to keep evaluation results in. Fix: set ledger.backend to sqlite or postgres, "
        "or pass --db PATH (a SQLite file)."
    )
