"""The Redis cache store against a real redis-server (tests/redis_server.py): the store contract
of the other stores, entries shared between separate clients and processes, damaged entries,
the server's own memory bound, and a server that is not there.

Skipped only when redis-server is not installed (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from hedge.cache import CacheSettings, CacheStore, open_store
from hedge.cache.redis import RedisStore, describe_url
from tests import redis_server
from tests.unit.test_cache_stores import CORRUPT, ENTRY_BYTES, Clock, MakeStore, answer

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[redis_server.RedisServer]:
    binary = redis_server.find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed; run scripts/system-deps.sh")
    with redis_server.throwaway_redis(binary) as running:
        yield running


@pytest.fixture
def prefix() -> str:
    # Every test in its own namespace on the shared server.
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def raw(server: redis_server.RedisServer) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(server.url)
    yield client
    client.close()


class TestRedisStoreContract:
    """The parts of the store contract that do not need a fake clock or the store's own
    bounds: Redis expires entries on its own clock, and bounds its memory itself."""

    @pytest.fixture
    def make(self, server: redis_server.RedisServer, prefix: str) -> MakeStore:
        def make(
            clock: Clock | None = None,
            max_entries: int = 0,
            max_bytes: int = 0,
            max_entry_bytes: int | None = None,
        ) -> CacheStore:
            return RedisStore(
                server.url, prefix=prefix, max_entry_bytes=max_entry_bytes or (1 << 20)
            )

        return make

    def test_hit_and_miss(self, make: MakeStore) -> None:
        async def go() -> None:
            store = make()
            await store.start()
            assert await store.get("k1") is None
            assert await store.put("k1", answer(), 60)
            assert await store.get("k1") == answer()
            assert await store.get("k2") is None
            await store.aclose()

        asyncio.run(go())

    def test_no_cross_key_leakage(self, make: MakeStore) -> None:
        async def go() -> None:
            store = make()
            keys = [f"{i:064x}" for i in range(50)]
            for i, k in enumerate(keys):
                assert await store.put(k, answer(f"answer {i}", f"dep{i}"), 60)
            for i, k in enumerate(keys):
                found = await store.get(k)
                assert found is not None
                assert (found.choices[0].content, found.deployment) == (f"answer {i}", f"dep{i}")
            await store.aclose()

        asyncio.run(go())

    def test_prefixes_separate_namespaces(self, server: redis_server.RedisServer) -> None:
        async def go() -> None:
            a = RedisStore(server.url, prefix="ns-a:")
            b = RedisStore(server.url, prefix="ns-b:")
            await a.put("k", answer("a"), 60)
            assert await b.get("k") is None
            await a.aclose()
            await b.aclose()

        asyncio.run(go())

    def test_put_overwrites(self, make: MakeStore) -> None:
        async def go() -> None:
            store = make()
            await store.put("k", answer("old"), 60)
            await store.put("k", answer("new"), 60)
            found = await store.get("k")
            assert found is not None and found.choices[0].content == "new"
            await store.aclose()

        asyncio.run(go())

    def test_ttl_expiry(self, make: MakeStore, raw: redis_sync.Redis, prefix: str) -> None:
        async def go() -> None:
            store = make()
            assert await store.put("short", answer(), 0.3)
            assert await store.put("long", answer(), 60)
            assert 0 < int(raw.pttl(prefix + "short")) <= 300
            assert await store.get("short") is not None
            await asyncio.sleep(0.6)
            assert await store.get("short") is None
            assert await store.get("long") is not None
            assert not await store.put("zero", answer(), 0)
            await store.aclose()

        asyncio.run(go())

    def test_an_entry_larger_than_the_cap_is_not_stored(
        self, make: MakeStore, raw: redis_sync.Redis, prefix: str
    ) -> None:
        async def go() -> None:
            store = make(max_entry_bytes=ENTRY_BYTES * 2)
            assert await store.put("small", answer(), 60)
            assert not await store.put("big", answer("y" * ENTRY_BYTES * 3), 60)
            assert await store.get("big") is None
            assert raw.exists(prefix + "big") == 0
            await store.aclose()

        asyncio.run(go())

    @pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
    def test_a_corrupt_entry_is_a_miss_and_is_removed(
        self, make: MakeStore, raw: redis_sync.Redis, prefix: str, data: bytes
    ) -> None:
        async def go() -> None:
            store = make()
            await store.put("good", answer(), 60)
            raw.set(prefix + "bad", data, ex=60)
            assert await store.get("bad") is None
            assert raw.exists(prefix + "bad") == 0
            assert await store.get("good") == answer()
            await store.aclose()

        asyncio.run(go())

    def test_a_key_of_another_type_is_a_miss(
        self, make: MakeStore, raw: redis_sync.Redis, prefix: str
    ) -> None:
        # GET on a list is a WRONGTYPE error from the server: a miss, not an exception.
        raw.rpush(prefix + "list", "a")

        async def go() -> None:
            store = make()
            assert await store.get("list") is None
            assert await store.put("list", answer(), 60)  # SET replaces it
            assert await store.get("list") == answer()
            await store.aclose()

        asyncio.run(go())


def test_two_clients_share_entries(server: redis_server.RedisServer, prefix: str) -> None:
    # Two gateway processes: separate stores, separate connection pools.
    settings = CacheSettings(enabled=True, backend="redis", key_prefix=prefix)

    async def go() -> None:
        one = open_store(settings, redis_url=server.url)
        two = open_store(settings, environ={"HEDGE_CACHE_URL": server.url})
        await one.start()
        await two.start()
        assert await one.put("shared", answer("from one", "dep-1"), 60)
        found = await two.get("shared")
        assert found is not None and found.deployment == "dep-1"
        assert await two.put("shared", answer("from two", "dep-2"), 60)
        found = await one.get("shared")
        assert found is not None and found.choices[0].content == "from two"
        await one.aclose()
        await two.aclose()

    asyncio.run(go())


WRITER = """
import asyncio, sys
from hedge.cache.redis import RedisStore
from tests.unit.test_cache_stores import answer

async def main():
    store = RedisStore(sys.argv[1], prefix=sys.argv[2])
    ok = await store.put("from-process", answer("written by another process", "dep-x"), 60)
    found = await store.get("from-this-test")
    print(ok, found.choices[0].content if found else None)
    await store.aclose()

asyncio.run(main())
"""


def test_another_process_shares_entries(server: redis_server.RedisServer, prefix: str) -> None:
    async def before() -> None:
        store = RedisStore(server.url, prefix=prefix)
        await store.put("from-this-test", answer("written by the test"), 60)
        await store.aclose()

    asyncio.run(before())
    done = subprocess.run(
        [sys.executable, "-c", WRITER, server.url, prefix],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    assert done.stdout.strip() == "True written by the test"

    async def after() -> None:
        store = RedisStore(server.url, prefix=prefix)
        found = await store.get("from-process")
        assert found is not None and found.deployment == "dep-x"
        await store.aclose()

    asyncio.run(after())


def test_the_servers_memory_bound_evicts_old_entries(
    server: redis_server.RedisServer, raw: redis_sync.Redis, prefix: str
) -> None:
    # The total is Redis's to bound (maxmemory, allkeys-lru): writes keep working when full.
    raw.config_set("maxmemory", "3mb")
    try:
        big = answer("z" * 20_000)

        async def go() -> list[int]:
            store = RedisStore(server.url, prefix=prefix)
            assert await store.check() == []
            for i in range(400):  # about 8 MB of entries
                assert await store.put(f"k{i}", big, 600)
            present = [i for i in range(400) if await store.get(f"k{i}") is not None]
            await store.aclose()
            return present

        present = asyncio.run(go())
        used = int(raw.info("memory")["used_memory"])
        assert used <= 3 * 1024 * 1024 * 1.1
        assert 0 < len(present) < 400
        assert 399 in present  # the newest entry is there
        assert 0 not in present
    finally:
        raw.config_set("maxmemory", "64mb")
        raw.flushdb()


def test_check_warns_about_an_unbounded_server(
    server: redis_server.RedisServer, raw: redis_sync.Redis
) -> None:
    raw.config_set("maxmemory", "0")
    try:
        problems = asyncio.run(RedisStore(server.url).check())
        assert len(problems) == 1 and "maxmemory" in problems[0]
        raw.config_set("maxmemory", "64mb")
        raw.config_set("maxmemory-policy", "noeviction")
        problems = asyncio.run(RedisStore(server.url).check())
        assert len(problems) == 1 and "noeviction" in problems[0]
    finally:
        raw.config_set("maxmemory", "64mb")
        raw.config_set("maxmemory-policy", "allkeys-lru")


def test_a_server_that_is_not_there_is_a_quick_miss() -> None:
    url = f"redis://:secret@127.0.0.1:{redis_server.free_port()}/0"

    async def go() -> float:
        store = RedisStore(url, timeout_s=0.2)
        started = time.monotonic()
        await store.start()  # warns, does not raise
        assert await store.get("k") is None
        assert not await store.put("k", answer(), 60)
        assert (await store.check())[0].startswith("the cache server does not answer")
        await store.aclose()
        return time.monotonic() - started

    assert asyncio.run(go()) < 5
    assert "secret" not in RedisStore(url).url


def test_describe_url_hides_the_password() -> None:
    assert describe_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert describe_url("redis://:pw@host/0") == "redis://***@host/0"
    assert describe_url("redis://host:6379") == "redis://host:6379"
