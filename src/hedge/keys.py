"""API keys: their format, how a secret is checked, and the SQLite file they are kept in.

A key reads `hk_<id>_<secret>`. The id is public (it names the key in `hedge keys list`, in
the ledger and in logs), so checking a key is one lookup by id and one constant-time compare
of a salted hash; the secret itself is shown once, at creation, and never stored.

The hash is HMAC-SHA256 keyed by a random per-key salt. A slow KDF (scrypt, PBKDF2) exists to
make guessing a *low-entropy* password expensive; these secrets are 192 random bits, which no
amount of guessing reaches, so a slow hash would only add milliseconds to every request. The
salt keeps two stores from sharing precomputation and makes equal secrets hash differently.

The store is written by the CLI while servers read it (and the servers write budget spend to
it, see hedge.limits), so it is one SQLite file in WAL mode, every write one short transaction.
Each commit changes the file's or its WAL's size or mtime, which is how a server notices a new
or revoked key without querying per request (`KeyCache` in hedge.server.auth).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

Period = Literal["day", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "month", "total")
PREFIX = "hk_"
ID_BYTES = 6  # 12 hex digits: ids never collide in practice, and are short to type
SECRET_BYTES = 24  # 192 bits


class KeyStoreError(Exception):
    """The key store cannot be opened or written, or a key named in a command is unknown.
    The message says what to do."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored: everything but the secret. `routes` empty means every route;
    a limit of None means no limit."""

    id: str
    name: str
    salt: bytes
    hash: bytes
    policies: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    budget_usd: float | None = None
    period: Period = "month"
    rpm: int | None = None
    tpm: int | None = None
    max_body_bytes: int | None = None
    max_messages: int | None = None
    max_tokens: int | None = None
    created: float = 0.0
    revoked: float | None = None

    def public(self) -> dict[str, object]:
        """What `hedge keys list` shows: no salt, no hash."""
        return {
            "id": self.id,
            "name": self.name,
            "policies": list(self.policies),
            "routes": list(self.routes),
            "budget_usd": self.budget_usd,
            "period": self.period,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_body_bytes": self.max_body_bytes,
            "max_messages": self.max_messages,
            "max_tokens": self.max_tokens,
            "created": self.created,
            "revoked": self.revoked,
        }


def digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def new_key() -> tuple[str, str, str]:
    """(id, secret, the full key a client sends). Hex only, so `_` splits it unambiguously."""
    key_id = secrets.token_hex(ID_BYTES)
    secret = secrets.token_hex(SECRET_BYTES)
    return key_id, secret, f"{PREFIX}{key_id}_{secret}"


def split_key(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not presented.startswith(PREFIX):
        return None
    key_id, sep, secret = presented[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != 2 * ID_BYTES or not secret:
        return None
    return key_id, secret


def verify(record: KeyRecord, secret: str) -> bool:
    """Whether `secret` is this key's; constant time in the secret's content."""
    return hmac.compare_digest(digest(record.salt, secret), record.hash)


SCHEMA = """CREATE TABLE IF NOT EXISTS keys (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    salt           BLOB NOT NULL,
    hash           BLOB NOT NULL,
    policies       TEXT NOT NULL,
    routes         TEXT NOT NULL,
    budget_usd     REAL,
    period         TEXT NOT NULL,
    rpm            INTEGER,
    tpm            INTEGER,
    max_body_bytes INTEGER,
    max_messages   INTEGER,
    max_tokens     INTEGER,
    created        REAL NOT NULL,
    revoked        REAL
)"""
COLUMNS = (
    "id, name, salt, hash, policies, routes, budget_usd, period, rpm, tpm, max_body_bytes,"
    " max_messages, max_tokens, created, revoked"
)


def _join(names: Sequence[str]) -> str:
    return ",".join(names)


def _split(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p)


def _row(r: KeyRecord) -> tuple[object, ...]:
    return (
        r.id,
        r.name,
        r.salt,
        r.hash,
        _join(r.policies),
        _join(r.routes),
        r.budget_usd,
        r.period,
        r.rpm,
        r.tpm,
        r.max_body_bytes,
        r.max_messages,
        r.max_tokens,
        r.created,
        r.revoked,
    )


def _record(row: sqlite3.Row | tuple[object, ...]) -> KeyRecord:
    (id_, name, salt, hash_, pol, routes, budget, period, rpm, tpm, body, msgs, toks, c, rv) = row
    return KeyRecord(
        id=str(id_),
        name=str(name),
        salt=bytes(salt),  # type: ignore[arg-type]
        hash=bytes(hash_),  # type: ignore[arg-type]
        policies=_split(str(pol)),
        routes=_split(str(routes)),
        budget_usd=None if budget is None else float(budget),  # type: ignore[arg-type]
        period=str(period),  # type: ignore[arg-type]
        rpm=rpm,  # type: ignore[arg-type]
        tpm=tpm,  # type: ignore[arg-type]
        max_body_bytes=body,  # type: ignore[arg-type]
        max_messages=msgs,  # type: ignore[arg-type]
        max_tokens=toks,  # type: ignore[arg-type]
        created=float(c),  # type: ignore[arg-type]
        revoked=None if rv is None else float(rv),  # type: ignore[arg-type]
    )


class KeyStore:
    """The keys table of one SQLite file. Opened per operation: the CLI and several server
    processes share the file, and a connection held open would pin nothing useful."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextmanager
    def _connect(self, create: bool) -> Iterator[sqlite3.Connection]:
        if not create and not Path(self.path).exists():
            raise FileNotFoundError(self.path)
        try:
            if create:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise KeyStoreError(
                f"cannot open the key store {self.path} ({e}). Fix: make its folder writable "
                "or set keys.path in hedge.yaml."
            ) from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            yield db
        except sqlite3.Error as e:
            raise KeyStoreError(f"the key store {self.path} failed: {e}.") from None
        finally:
            db.close()

    def create(
        self,
        name: str,
        *,
        policies: Sequence[str] = (),
        routes: Sequence[str] = (),
        budget_usd: float | None = None,
        period: Period = "month",
        rpm: int | None = None,
        tpm: int | None = None,
        max_body_bytes: int | None = None,
        max_messages: int | None = None,
        max_tokens: int | None = None,
        now: float | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: (the plaintext key, shown once, and its record, as stored)."""
        key_id, secret, plaintext = new_key()
        salt = secrets.token_bytes(16)
        record = KeyRecord(
            id=key_id,
            name=name,
            salt=salt,
            hash=digest(salt, secret),
            policies=tuple(policies),
            routes=tuple(routes),
            budget_usd=budget_usd,
            period=period,
            rpm=rpm,
            tpm=tpm,
            max_body_bytes=max_body_bytes,
            max_messages=max_messages,
            max_tokens=max_tokens,
            created=time.time() if now is None else now,
        )
        with self._connect(create=True) as db:
            db.execute(f"INSERT INTO keys ({COLUMNS}) VALUES ({', '.join('?' * 15)})", _row(record))
        return plaintext, record

    def all(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first; [] when the file does not exist."""
        try:
            with self._connect(create=False) as db:
                rows = db.execute(f"SELECT {COLUMNS} FROM keys ORDER BY created, id").fetchall()
        except FileNotFoundError:
            return []
        return [_record(r) for r in rows]

    def active(self) -> dict[str, KeyRecord]:
        return {r.id: r for r in self.all() if r.revoked is None}

    def revoke(self, id_or_name: str, now: float | None = None) -> KeyRecord:
        """Revoke the key with this id (or this name, when exactly one active key has it)."""
        found = [r for r in self.all() if r.revoked is None and id_or_name in (r.id, r.name)]
        if not found:
            raise KeyStoreError(
                f"no active key with id or name '{id_or_name}' in {self.path}. "
                "Fix: see `hedge keys list` for ids."
            )
        if len(found) > 1:
            raise KeyStoreError(
                f"{len(found)} active keys are named '{id_or_name}' "
                f"({', '.join(r.id for r in found)}). Fix: revoke by id."
            )
        record = replace(found[0], revoked=time.time() if now is None else now)
        with self._connect(create=False) as db:
            db.execute("UPDATE keys SET revoked = ? WHERE id = ?", (record.revoked, record.id))
        return record

    def signature(self) -> tuple[tuple[int, int] | None, ...]:
        """(mtime_ns, size) of the file and of its WAL: one of them changes on every commit."""
        out: list[tuple[int, int] | None] = []
        for path in (self.path, self.path + "-wal"):
            try:
                st = Path(path).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)
