"""Per-key rate limits and spend budgets: the arithmetic, and where the counts are kept.

Rate limits are token buckets holding a minute's allowance and refilled continuously (the
same admissions as GCRA): `rpm` takes 1 per request; `tpm` takes the request's estimated
prompt tokens before the call and is corrected to the real count after it. A bucket may go
below zero (a long answer), which then delays the next request by the debt.

A budget is spend per key per period (UTC day, UTC month, or ever). Before any upstream call
the request *reserves* a cost estimate that covers its worst case (prompt bound from the body
size, completion from max_tokens times n, at the dearest prices of the route's deployments;
calls to a cascade's judges are not in that bound); the reservation is admitted
only if spent + held + estimate fits the budget, atomically, so concurrent requests cannot
overspend together. After the call it settles: the hold is dropped and the real cost added.
A hold carries an expiry, so a process that dies mid-request does not pin budget forever.

Backends: `memory` (rate limits in this process; budget spend in a SQLite file beside the key
store, `<keys>-budgets.db`, which every process on the host shares and which survives
restarts) and `redis` (both shared by every process, made atomic by Lua scripts run on the
server). Spend has a file of its own because servers notice new keys by the key store's file
changing: spend written there made every server reload its keys on every refresh.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hedge.accounting import cost_usd
from hedge.config import HedgeConfig, Prices
from hedge.errors import HedgeError
from hedge.keys import Period
from hedge.trace import Trace

# Prompt tokens are bounded by the body: a token is at least two bytes of JSON text for every
# tokenizer in use on ordinary text (the JSON envelope is counted too, so this over-estimates).
BYTES_PER_TOKEN_BOUND = 2
WINDOW_S = 60.0


class LimitsUnavailable(HedgeError):
    """The store that counts limits cannot be reached: refuse rather than serve unmetered."""

    status = 503
    type = "server_error"
    code = "limits_unavailable"


# ---- pure ---------------------------------------------------------------------------------


def refill(level: float, at: float, now: float, capacity: float) -> float:
    return min(capacity, level + max(0.0, now - at) * capacity / WINDOW_S)


def admit(level: float, cost: float, capacity: float) -> float | None:
    """None when `cost` fits in the bucket now, else the seconds until it does. A request
    dearer than the whole minute's allowance needs a full bucket, not an impossible one."""
    need = min(cost, capacity)
    if level >= need:
        return None
    return (need - level) * WINDOW_S / capacity


def period_id(period: Period, now: float) -> str:
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "day":
        return f"d{t:%Y-%m-%d}"
    if period == "month":
        return f"m{t:%Y-%m}"
    return "total"


def period_end(period: Period, now: float) -> float | None:
    """When this period's spend resets (Unix time); None for `total`."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "day":
        start = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)
        return (start + dt.timedelta(days=1)).timestamp()
    if period == "month":
        year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
        return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp()
    return None


@dataclass(frozen=True, slots=True)
class RoutePrice:
    """The most one request on a route can be billed per token: the dearest deployment's
    prices (USD per 1M tokens) times the calls that may all be billed (a cascade's stages and
    judges, or a hedged second call)."""

    input: float
    output: float
    calls: int


def route_prices(config: HedgeConfig) -> dict[str, RoutePrice]:
    out: dict[str, RoutePrice] = {}
    for name, route in config.routes.items():
        prices = [config.deployments[d].prices for d in route.deployments]
        if route.cascade is not None:
            calls = len(route.deployments)
        else:
            calls = 2 if route.hedge_after_ms is not None else 1
        out[name] = RoutePrice(
            input=max((p.input for p in prices), default=0.0),
            output=max((p.output for p in prices), default=0.0),
            calls=calls,
        )
    return out


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt_tokens: int
    completion_tokens: int
    usd: float


def estimate(body_bytes: int, completion_tokens: int, price: RoutePrice | None) -> Estimate:
    """The worst case of one request, before it is sent."""
    prompt = math.ceil(body_bytes / BYTES_PER_TOKEN_BOUND)
    usd = 0.0
    if price is not None:
        usd = price.calls * (prompt * price.input + completion_tokens * price.output) / 1e6
    return Estimate(prompt, completion_tokens, usd)


@dataclass(frozen=True, slots=True)
class Actual:
    usd: float
    tokens: int
    known: bool  # False when some billed call did not report its usage


def actual(trace: Trace | None, prices: Mapping[str, Prices]) -> Actual:
    """What a finished request cost, from its trace's attempts. A call that neither failed nor
    reported usage (a stream the client left) is unknown: the caller charges the estimate."""
    if trace is None:
        return Actual(0.0, 0, True)
    usd, tokens, known = 0.0, 0, True
    for a in trace.attempts:
        if a.usage is None:
            known = known and a.error is not None
            continue
        usd += cost_usd(a.usage, prices.get(a.deployment, Prices()))
        tokens += a.usage.prompt_tokens + a.usage.completion_tokens
    return Actual(usd, tokens, known)


# ---- rate limiters ------------------------------------------------------------------------


class RateLimiter(Protocol):
    async def take(self, name: str, cost: float, per_minute: int) -> float | None:
        """Take `cost` from bucket `name` if it fits: None, else seconds to wait."""

    async def adjust(self, name: str, delta: float, per_minute: int) -> None:
        """Take `delta` more (or give back a negative one) unconditionally."""

    async def aclose(self) -> None: ...


class MemoryRateLimiter:
    """Buckets in this process's memory: exact for one process, per process with several."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, name: str, per_minute: int, now: float) -> float:
        level, at = self._buckets.get(name, (float(per_minute), now))
        return refill(level, at, now, per_minute)

    async def take(self, name: str, cost: float, per_minute: int) -> float | None:
        now = self._clock()
        level = self._level(name, per_minute, now)
        wait = admit(level, cost, per_minute)
        if wait is None:
            self._buckets[name] = (level - cost, now)
        return wait

    async def adjust(self, name: str, delta: float, per_minute: int) -> None:
        now = self._clock()
        self._buckets[name] = (self._level(name, per_minute, now) - delta, now)

    async def aclose(self) -> None:
        pass


# The server's clock (TIME) times every bucket, so processes on hosts whose clocks disagree
# still share one limit. ARGV: capacity, cost, mode ("take" checks first; "adjust" does not).
BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local rate = cap / 60
local s = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(s[1]) or cap
local at = tonumber(s[2]) or now
level = math.min(cap, level + math.max(0, now - at) * rate)
if ARGV[3] == 'take' then
  local need = math.min(cost, cap)
  if level < need then
    return tostring((need - level) / rate)
  end
end
level = level - cost
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 120 + math.ceil(math.max(0, -level) / rate))
return false
"""


class RedisRateLimiter:
    """Buckets on a Redis server: one limit for every process that uses the same server."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(BUCKET_LUA)

    async def _run(self, name: str, cost: float, per_minute: int, mode: str) -> float | None:
        from redis.exceptions import RedisError

        try:
            out = await self._script(
                keys=[f"{self._prefix}rate:{name}"], args=[per_minute, repr(float(cost)), mode]
            )
        except (RedisError, OSError) as e:
            raise LimitsUnavailable(
                f"The rate-limit store (Redis) is unreachable ({type(e).__name__}); "
                "requests are refused until it answers."
            ) from None
        return None if out is None else float(out)

    async def take(self, name: str, cost: float, per_minute: int) -> float | None:
        return await self._run(name, cost, per_minute, "take")

    async def adjust(self, name: str, delta: float, per_minute: int) -> None:
        await self._run(name, delta, per_minute, "adjust")

    async def aclose(self) -> None:
        await self._client.aclose()


# ---- budgets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    key: str
    period: str
    usd: float


@dataclass(frozen=True, slots=True)
class Refusal:
    spent: float
    held: float


def fits(spent: float, held: float, amount: float, budget: float) -> bool:
    return spent + held + amount <= budget


class Budgets(Protocol):
    async def reserve(
        self, key: str, period: str, budget: float, usd: float, hold_s: float
    ) -> Hold | Refusal: ...

    async def settle(self, hold: Hold, usd: float) -> None: ...

    async def spent(self, key: str, period: str) -> float: ...

    async def aclose(self) -> None: ...


BUDGET_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS budget_spend (
        key_id TEXT NOT NULL, period TEXT NOT NULL, spent_usd REAL NOT NULL,
        PRIMARY KEY (key_id, period))""",
    """CREATE TABLE IF NOT EXISTS budget_holds (
        id TEXT PRIMARY KEY, key_id TEXT NOT NULL, period TEXT NOT NULL,
        usd REAL NOT NULL, expires REAL NOT NULL)""",
)


class SqliteBudgets:
    """Spend in the key store's SQLite file, shared by every process on the host. Each call is
    one IMMEDIATE transaction (so check-and-hold is atomic across processes) on a thread of
    its own, never on the event loop."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hedge-budgets")
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in BUDGET_SCHEMA:
                db.execute(statement)
            self._db = db
        return self._db

    async def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return out

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except (sqlite3.Error, OSError) as e:
            raise LimitsUnavailable(
                f"The budget store {self.path} failed ({e}); requests with a budget are "
                "refused until it works."
            ) from None

    async def reserve(
        self, key: str, period: str, budget: float, usd: float, hold_s: float
    ) -> Hold | Refusal:
        now = self._clock()

        def run(db: sqlite3.Connection) -> Hold | Refusal:
            db.execute("DELETE FROM budget_holds WHERE expires < ?", (now,))
            row = db.execute(
                "SELECT spent_usd FROM budget_spend WHERE key_id = ? AND period = ?",
                (key, period),
            ).fetchone()
            spent = float(row[0]) if row else 0.0
            held = float(
                db.execute(
                    "SELECT COALESCE(SUM(usd), 0) FROM budget_holds WHERE key_id = ? "
                    "AND period = ?",
                    (key, period),
                ).fetchone()[0]
            )
            if not fits(spent, held, usd, budget):
                return Refusal(spent, held)
            hold = Hold(uuid.uuid4().hex, key, period, usd)
            db.execute(
                "INSERT INTO budget_holds (id, key_id, period, usd, expires) VALUES (?,?,?,?,?)",
                (hold.id, key, period, usd, now + hold_s),
            )
            return hold

        result: Hold | Refusal = await self._call(run)
        return result

    async def settle(self, hold: Hold, usd: float) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM budget_holds WHERE id = ?", (hold.id,))
            db.execute(
                "INSERT INTO budget_spend (key_id, period, spent_usd) VALUES (?, ?, ?) "
                "ON CONFLICT (key_id, period) DO UPDATE SET spent_usd = spent_usd + ?",
                (hold.key, hold.period, usd, usd),
            )

        await self._call(run)

    async def spent(self, key: str, period: str) -> float:
        def run(db: sqlite3.Connection) -> float:
            row = db.execute(
                "SELECT spent_usd FROM budget_spend WHERE key_id = ? AND period = ?",
                (key, period),
            ).fetchone()
            return float(row[0]) if row else 0.0

        value: float = await self._call(run)
        return value

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


# KEYS: spent, holds. ARGV: budget, usd, hold id, hold expiry (server seconds from now).
# Holds are a hash of id -> "usd:expires"; expired ones are dropped as they are met.
RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local usd, exp = string.match(all[i + 1], '([^:]+):([^:]+)')
  if tonumber(exp) < now then
    redis.call('HDEL', KEYS[2], all[i])
  else
    held = held + tonumber(usd)
  end
end
if spent + held + tonumber(ARGV[2]) > tonumber(ARGV[1]) then
  return {0, tostring(spent), tostring(held)}
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2] .. ':' .. tostring(now + tonumber(ARGV[4])))
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[4])) + 60)
return {1, tostring(spent), tostring(held)}
"""
# KEYS: spent, holds. ARGV: hold id, usd, seconds to keep the spend (0: forever).
SETTLE_LUA = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


class RedisBudgets:
    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)

    def _keys(self, key: str, period: str) -> list[str]:
        base = f"{self._prefix}budget:{key}:{period}"
        return [f"{base}:spent", f"{base}:holds"]

    async def _run(self, script: Any, keys: list[str], args: list[object]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as e:
            raise LimitsUnavailable(
                f"The budget store (Redis) is unreachable ({type(e).__name__}); requests "
                "with a budget are refused until it answers."
            ) from None

    async def reserve(
        self, key: str, period: str, budget: float, usd: float, hold_s: float
    ) -> Hold | Refusal:
        hold_id = uuid.uuid4().hex
        ok, spent, held = await self._run(
            self._reserve, self._keys(key, period), [repr(budget), repr(usd), hold_id, hold_s]
        )
        if int(ok) != 1:
            return Refusal(float(spent), float(held))
        return Hold(hold_id, key, period, usd)

    async def settle(self, hold: Hold, usd: float) -> None:
        # Spend outlives its period by a margin, then Redis forgets it; `total` is kept.
        keep = {"d": 3 * 86400, "m": 45 * 86400}.get(hold.period[:1], 0)
        await self._run(self._settle, self._keys(hold.key, hold.period), [hold.id, repr(usd), keep])

    async def spent(self, key: str, period: str) -> float:
        value = await self._client.get(self._keys(key, period)[0])
        return float(value) if value is not None else 0.0

    async def aclose(self) -> None:
        pass  # the client is closed by the rate limiter that shares it


@dataclass
class Limits:
    """The two counters a guarded request goes through."""

    rates: RateLimiter
    budgets: Budgets

    async def aclose(self) -> None:
        await self.budgets.aclose()
        await self.rates.aclose()


def open_limits(config: HedgeConfig, redis_url: str | None, keys_path: str) -> Limits:
    if config.limits.backend == "redis":
        import redis.asyncio as aioredis

        assert redis_url is not None  # config.parse refuses a redis backend without a URL
        client = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return Limits(
            RedisRateLimiter(client, config.limits.prefix),
            RedisBudgets(client, config.limits.prefix),
        )
    return Limits(MemoryRateLimiter(), SqliteBudgets(budgets_path(keys_path)))


def budgets_path(keys_path: str) -> str:
    """Where budget spend is kept with the `memory` backend: beside the key store."""
    keys = Path(keys_path)
    return str(keys.with_name(keys.stem + "-budgets.db"))
