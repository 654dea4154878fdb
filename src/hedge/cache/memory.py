"""The in-process cache store: an LRU bounded by entry count and by bytes, with a TTL per entry.

Entries are kept as objects (a hit costs no decoding); their size is the length
of their serialised form, so `max_bytes` means the same here as in the other stores. When a put
takes the store over a bound, expired entries go first (found with a heap of expiry times), then
the least recently used. Everything runs on the event loop without awaiting, so no lock is
needed.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hedge.cache import CacheEntry

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Entry:
    answer: CacheEntry
    size: int
    expires_at: float


class MemoryStore:
    """A `CacheStore` in this process's memory. `clock` (monotonic seconds) is for tests."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        max_entry_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes or max_bytes, max_bytes)
        self._clock = clock
        # Least recently used first: a hit moves its entry to the end.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        # (expires_at, key), with stale pairs (overwritten or removed keys) skipped lazily.
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    async def start(self) -> None:
        return None

    async def get(self, key: str) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry.answer

    async def put(self, key: str, answer: CacheEntry, ttl_s: float) -> bool:
        size = len(answer.to_bytes()) + len(key)
        if size > self.max_entry_bytes or ttl_s <= 0:
            return False
        if key in self._entries:
            self._remove(key)
        now = self._clock()
        self._entries[key] = _Entry(answer, size, now + ttl_s)
        self._bytes += size
        heapq.heappush(self._expiries, (now + ttl_s, key))
        if self._over():
            self._drop_expired(now)
        while self._over():
            self._remove(next(iter(self._entries)))
        if len(self._expiries) > 2 * len(self._entries) + 64:
            # Rebuilt from the live entries so stale pairs cannot pile up.
            self._expiries = [(e.expires_at, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiries)
        return True

    async def aclose(self) -> None:
        self._entries.clear()
        self._expiries.clear()
        self._bytes = 0

    def _over(self) -> bool:
        return len(self._entries) > self.max_entries or self._bytes > self.max_bytes

    def _drop_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == expires_at:
                self._remove(key)

    def _remove(self, key: str) -> None:
        self._bytes -= self._entries.pop(key).size
