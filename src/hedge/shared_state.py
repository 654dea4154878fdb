"""Breaker state and kill-switch revocations shared by every gateway process through Redis.

Without it each process (each `--workers` child, each replica) learns about a failing upstream
from its own failures and about a drill only if the drill reached it. With it, what one process
decides is seen by the others within `sync_interval_s`:

- a breaker that opens is written as `{prefix}open` hash field deployment -> {"at": wall time,
  "failures": n}; a process whose own breaker is closed adopts it (same remaining cooldown, so
  every process probes at about the same time; each lets one probe through). A probe that
  succeeds anywhere deletes the field, and processes that only held the peer's opening close.
- a revocation (drill, or an upstream refusing our credentials) is written as `{prefix}revoked`
  deployment -> reason, and a restore deletes it: one drill on one replica cuts every replica.

Redis being down never fails a request: writes are best-effort and a failed poll keeps the
local state (each process then behaves as without sharing). Local decisions are pushed at once;
peers' are pulled by polling two small hashes, which costs two round trips per interval however
busy the gateway is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import orjson

from hedge.compose.breaker import Breaker, BreakerEvent
from hedge.config import SharedStateSettings

log = logging.getLogger("hedge.shared_state")

__all__ = ["RedisSharedState"]


class RedisSharedState:
    def __init__(self, url: str, settings: SharedStateSettings) -> None:
        from redis.asyncio import Redis

        self._client: Any = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._open_key = settings.prefix + "open"
        self._revoked_key = settings.prefix + "revoked"
        self._interval = settings.sync_interval_s
        self._breakers: dict[str, Breaker] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writing = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        self.process = os.urandom(6).hex()

    async def start(self, breakers: dict[str, Breaker]) -> None:
        self._breakers = breakers
        for breaker in breakers.values():
            breaker.listener = self._publish
        await self.sync()  # start from what the others already decided
        self._poller = asyncio.create_task(self._poll())

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    # ---- local decisions -> Redis --------------------------------------------------------

    def _publish(self, breaker: Breaker, event: BreakerEvent) -> None:
        task = asyncio.get_running_loop().create_task(self._write(breaker, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, breaker: Breaker, event: BreakerEvent) -> None:
        name = breaker.name
        # One write at a time, in the order they were asked for: a revoke then a restore
        # must not reach Redis the other way round.
        async with self._writing:
            try:
                if event == "opened":
                    value = {"at": time.time(), "failures": breaker.failures, "by": self.process}
                    await self._client.hset(self._open_key, name, orjson.dumps(value))
                elif event == "closed":
                    await self._client.hdel(self._open_key, name)
                elif event == "revoked":
                    await self._client.hset(self._revoked_key, name, breaker.revoked or "revoked")
                    # Shared now: a restore made by any process ends it here too.
                    breaker.revocation_shared()
                else:  # restored
                    await self._client.hdel(self._revoked_key, name)
                    await self._client.hdel(self._open_key, name)
            except Exception as e:  # redis errors, timeouts: sharing is best-effort
                self._warn(f"could not share {name}'s breaker {event}: {e}")

    # ---- Redis -> local state --------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sync()

    async def sync(self) -> None:
        try:
            opened = await self._client.hgetall(self._open_key)
            revoked = await self._client.hgetall(self._revoked_key)
        except Exception as e:
            self._warn(f"could not read shared breaker state, keeping this process's: {e}")
            return
        now_wall, now = time.time(), time.monotonic()
        for name, breaker in self._breakers.items():
            reason = revoked.get(name.encode())
            if reason is not None:
                breaker.adopt_revocation(reason.decode(errors="replace"))
            else:
                breaker.drop_peer_revocation()
            peer = _opening(opened.get(name.encode()), self.process)
            if peer is None:
                breaker.drop_peer_opening()
            else:
                at, failures = peer
                breaker.adopt_opening(now - max(0.0, now_wall - at), failures)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60 or self._last_warning == 0:
            self._last_warning = now
            log.warning("%s", message)


def _opening(raw: bytes | None, process: str) -> tuple[float, int] | None:
    """Another process's opening as (wall time, failures); None when absent, unreadable or
    this process's own (already in force here)."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
        if value.get("by") == process:
            return None
        return float(value["at"]), int(value["failures"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
