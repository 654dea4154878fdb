"""Rate-limit buckets, budget periods, cost estimates and settlement, and budget holds that
stay within the budget under concurrency (SQLite, and Redis through a real redis-server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hedge.config import Prices
from hedge.limits import (
    Hold,
    MemoryRateLimiter,
    RedisBudgets,
    RedisRateLimiter,
    Refusal,
    RoutePrice,
    SqliteBudgets,
    actual,
    admit,
    estimate,
    period_end,
    period_id,
    refill,
)
from hedge.trace import Attempt, Trace
from hedge.types import Usage
from tests import redis_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_arithmetic() -> None:
    assert refill(0, 0, 30, 60) == 30  # half a minute refills half the allowance
    assert refill(50, 0, 600, 60) == 60  # never above one minute's allowance
    assert admit(1, 1, 3) is None
    assert admit(0, 1, 3) == pytest.approx(20)  # 3/min: one every 20 s
    assert admit(5, 100, 10) == pytest.approx(30)  # dearer than a minute: needs a full bucket


def test_memory_limiter_requests_per_minute_and_token_debt() -> None:
    clock = Clock()
    rates = MemoryRateLimiter(clock)

    async def run() -> None:
        assert [await rates.take("k:rpm", 1, 3) for _ in range(3)] == [None] * 3
        wait = await rates.take("k:rpm", 1, 3)
        assert wait == pytest.approx(20)
        clock.now += 20
        assert await rates.take("k:rpm", 1, 3) is None
        # tokens: 100/min; a long answer puts the bucket 50 in debt
        assert await rates.take("k:tpm", 40, 100) is None
        await rates.adjust("k:tpm", 110, 100)
        assert await rates.take("k:tpm", 10, 100) == pytest.approx(36)  # 60 tokens at 100/min
        assert await rates.take("other:rpm", 1, 3) is None  # keys do not share buckets

    asyncio.run(run())


def test_periods_are_utc_days_and_months() -> None:
    t = 1_735_689_599.0  # 2024-12-31 23:59:59 UTC
    assert period_id("day", t) == "d2024-12-31"
    assert period_id("month", t) == "m2024-12"
    assert period_id("total", t) == "total"
    assert period_end("day", t) == t + 1
    assert period_end("month", t) == t + 1
    assert period_end("total", t) is None


def test_estimate_covers_the_worst_case_and_actual_prices_the_attempts() -> None:
    price = RoutePrice(input=2.0, output=10.0, calls=2)
    est = estimate(400, 100, price)
    assert est.prompt_tokens == 200
    assert est.usd == pytest.approx(2 * (200 * 2.0 + 100 * 10.0) / 1e6)
    assert estimate(400, 100, None).usd == 0
    trace = Trace(route="r")
    trace.attempts = [
        Attempt("a", error="500"),  # failed, no usage: not billed
        Attempt("b", usage=Usage(prompt_tokens=10, completion_tokens=5)),
    ]
    got = actual(trace, {"b": Prices(input=1.0, output=2.0)})
    assert got.known and got.tokens == 15 and got.usd == pytest.approx(20 / 1e6)
    trace.attempts.append(Attempt("b"))  # a stream the client left: usage unknown
    assert not actual(trace, {}).known
    assert actual(None, {}).usd == 0


async def _race(budgets: SqliteBudgets | RedisBudgets, key: str) -> list[Hold | Refusal]:
    return await asyncio.gather(*(budgets.reserve(key, "total", 1.0, 0.1, 60) for _ in range(25)))


def test_sqlite_budget_holds_never_exceed_the_budget(tmp_path: Path) -> None:
    async def run() -> None:
        budgets = SqliteBudgets(str(tmp_path / "keys.db"))
        results = await _race(budgets, "k")
        holds = [r for r in results if isinstance(r, Hold)]
        assert len(holds) == 10  # 10 x 0.1 fills 1.0 exactly
        for hold in holds:
            await budgets.settle(hold, 0.05)  # each cost half its estimate
        assert await budgets.spent("k", "total") == pytest.approx(0.5)
        again = await _race(budgets, "k")
        assert sum(isinstance(r, Hold) for r in again) == 5
        refusal = next(r for r in again if isinstance(r, Refusal))
        assert refusal.spent == pytest.approx(0.5) and refusal.held == pytest.approx(0.5)
        await budgets.aclose()

    asyncio.run(run())


def test_expired_holds_release_their_budget(tmp_path: Path) -> None:
    clock = Clock()

    async def run() -> None:
        budgets = SqliteBudgets(str(tmp_path / "keys.db"), clock)
        assert isinstance(await budgets.reserve("k", "total", 1.0, 1.0, 30), Hold)
        assert isinstance(await budgets.reserve("k", "total", 1.0, 0.5, 30), Refusal)
        clock.now += 31  # the process holding it died
        assert isinstance(await budgets.reserve("k", "total", 1.0, 0.5, 30), Hold)
        await budgets.aclose()

    asyncio.run(run())


@pytest.fixture(scope="module")
def redis() -> Iterator[redis_server.RedisServer]:
    binary = redis_server.find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed; run scripts/system-deps.sh")
    with redis_server.throwaway_redis(binary) as running:
        yield running


def test_redis_budgets_and_buckets_are_atomic(redis: redis_server.RedisServer) -> None:
    import redis.asyncio as aioredis

    async def run() -> None:
        prefix = f"t:{uuid.uuid4().hex[:8]}:"
        clients = [aioredis.from_url(redis.url) for _ in range(2)]
        budgets = [RedisBudgets(c, prefix) for c in clients]
        results = [*await _race(budgets[0], "k"), *await _race(budgets[1], "k")]
        holds = [r for r in results if isinstance(r, Hold)]
        assert len(holds) == 10
        for hold in holds:
            await budgets[1].settle(hold, 0.1)
        assert await budgets[0].spent("k", "total") == pytest.approx(1.0)
        assert isinstance(await budgets[0].reserve("k", "total", 1.0, 0.01, 60), Refusal)
        # one bucket seen from two clients (two processes in production)
        rates = [RedisRateLimiter(c, prefix) for c in clients]
        taken = await asyncio.gather(*(rates[i % 2].take("k:rpm", 1, 4) for i in range(10)))
        assert sum(t is None for t in taken) == 4
        assert all(t is None or 0 < t <= 15 for t in taken)
        for c in clients:
            await c.aclose()

    asyncio.run(run())
