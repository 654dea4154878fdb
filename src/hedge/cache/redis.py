"""The shared cache store: Redis, reached with the asyncio client of the `redis` package.

Every gateway process pointed at the same server and `key_prefix` shares the entries. Each entry
is one string value set with an expiry (SET ... PX), so Redis itself removes expired answers.
hedge bounds each entry (`max_entry_bytes`); the total is bounded by the server's `maxmemory`
with an evicting `maxmemory-policy` (allkeys-lru, or volatile-lru since every entry has a TTL),
which `start` checks and warns about, because a managed server may not let a client set it.

A slow or unreachable server is a miss, not a wait: the socket timeout is short, and every
Redis error is logged (at most once a minute) and answered as a miss or a skipped write.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hedge.cache import CacheEntry, CorruptEntry, decode_entry

__all__ = ["RedisStore", "describe_url"]

log = logging.getLogger("hedge.cache")

_EVICTING_POLICIES = (
    "allkeys-lru",
    "allkeys-lfu",
    "volatile-lru",
    "volatile-lfu",
    "allkeys-random",
)


def describe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"


class RedisStore:
    """A `CacheStore` on a Redis server. Pass `client` to share one connection pool."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hedge:cache:",
        max_entry_bytes: int = 1024 * 1024,
        timeout_s: float = 0.25,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = describe_url(url)
        self.prefix = prefix
        self.max_entry_bytes = max_entry_bytes
        self._client = client or aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        self._last_warning = 0.0

    async def start(self) -> None:
        """Ping the server and warn when its memory is unbounded or never evicted. Does not
        raise: a cache server that is down at start-up may come up later."""
        for problem in await self.check():
            log.warning("%s (%s)", problem, self.url)

    async def check(self) -> list[str]:
        """What is wrong with the server for use as a bounded cache (empty when nothing)."""
        try:
            await self._client.ping()
        except RedisError as e:
            return [f"the cache server does not answer ({e}); requests will miss until it does"]
        try:
            config = await self._client.config_get("maxmemory*")
        except RedisError:
            return []  # CONFIG is often disabled on managed servers: nothing to check
        problems = []
        if str(config.get("maxmemory", "0")) == "0":
            problems.append(
                "the cache server has no maxmemory: the cache is bounded only per entry. "
                "Fix: set maxmemory and maxmemory-policy allkeys-lru on the server"
            )
        elif config.get("maxmemory-policy") not in _EVICTING_POLICIES:
            problems.append(
                f"the cache server's maxmemory-policy is {config.get('maxmemory-policy')!r}: "
                "writes will fail once it is full. Fix: use allkeys-lru"
            )
        return problems

    async def get(self, key: str) -> CacheEntry | None:
        name = self.prefix + key
        try:
            data = await self._client.get(name)
        except RedisError as e:
            self._warn(f"cache read failed, answering a miss: {e}")
            return None
        if data is None:
            return None
        try:
            if not isinstance(data, bytes):
                raise CorruptEntry(f"value of type {type(data).__name__}")
            return decode_entry(data)
        except CorruptEntry as e:
            log.warning("dropping a damaged cache entry %s...: %s", key[:12], e)
            try:
                # A plain DEL: if another process stored a fresh answer in between, the worst
                # case is one extra miss.
                await self._client.delete(name)
            except RedisError as err:
                self._warn(f"could not delete a damaged cache entry: {err}")
            return None

    async def put(self, key: str, answer: CacheEntry, ttl_s: float) -> bool:
        data = answer.to_bytes()
        if len(data) + len(key) > self.max_entry_bytes or ttl_s <= 0:
            return False
        try:
            await self._client.set(self.prefix + key, data, px=max(1, round(ttl_s * 1000)))
        except RedisError as e:
            self._warn(f"cache write failed, not stored: {e}")
            return False
        return True

    async def aclose(self) -> None:
        await self._client.aclose()

    def _warn(self, message: str) -> None:
        # An unreachable server would otherwise log once per request.
        now = time.monotonic()
        if now - self._last_warning >= 60 or self._last_warning == 0:
            self._last_warning = now
            log.warning("%s (%s)", message, self.url)
