"""The response cache and prompt compaction as the gateway applies them to a route.

One `RouteCache` per route with caching or compaction on: it compacts the request, decides
whether the cache may be read or written, files the answer under a key that covers everything
that changes it (the route's settings, the admitted deployments, the policies in force, the
data class, the tenant), and writes answers in the background so a slow store never delays a
client. The cache never fails a request: store errors are misses.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hedge import policy
from hedge.cache import CachedAnswer, CacheSettings, CacheStore, StreamRecorder, record_stream
from hedge.cache.keys import Decision, cache_key, cache_tenant, decide, storable
from hedge.compaction import CompactionSettings, compact
from hedge.config import Route
from hedge.types import ChatRequest, ChatResponse, Chunk


@dataclass(slots=True)
class Lookup:
    """One request's cache decision, key and (on a hit) answer."""

    decision: Decision
    key: str | None
    hit: CachedAnswer | None

    @property
    def header(self) -> bytes:
        if self.hit is not None:
            return b"hit"
        return b"miss" if self.decision.read or self.decision.write else b"bypass"


class RouteCache:
    def __init__(
        self,
        name: str,
        route: Route,
        cache: CacheSettings,
        compaction: CompactionSettings,
        store: CacheStore | None,
    ) -> None:
        self.name = name
        self.cache = cache
        self.compaction = compaction
        self.store = store
        # Any change to the route's configuration changes every key: a new answer, not a
        # stale one, after a deploy.
        self._fingerprint = hashlib.sha256(route.model_dump_json().encode()).hexdigest()
        self._writes: set[asyncio.Task[bool]] = set()

    def prepare(self, request: ChatRequest) -> ChatRequest:
        if not self.compaction.enabled:
            return request
        compacted, _ = compact(request, self.compaction)
        return compacted

    async def lookup(
        self,
        request: ChatRequest,
        plan: policy.Plan,
        data_class: str | None,
        cache_control: str | None,
        tenant: str | None,
    ) -> Lookup:
        decision = decide(request, self.cache, cache_control)
        if self.store is None or not (decision.read or decision.write):
            return Lookup(decision, None, None)
        key = cache_key(
            request,
            route=self.name,
            deployment_scope=[self._fingerprint, *plan.admitted],
            policy_names=plan.policies,
            data_class=data_class,
            tenant=cache_tenant(self.cache, tenant),
        )
        hit = await self.store.get(key) if decision.read else None
        return Lookup(decision, key, hit)

    def remember(self, lookup: Lookup, answer: CachedAnswer | None) -> None:
        """Store a fresh answer in the background, if the decision and the answer allow."""
        if (
            self.store is None
            or lookup.key is None
            or not lookup.decision.write
            or answer is None
            or storable(answer.to_response()) is not None
        ):
            return
        task = asyncio.create_task(self.store.put(lookup.key, answer, self.cache.ttl_s))
        self._writes.add(task)  # keep a reference until it is done
        task.add_done_callback(self._writes.discard)

    def remember_response(self, lookup: Lookup, response: ChatResponse, deployment: str) -> None:
        self.remember(lookup, CachedAnswer.from_response(response, deployment))

    def recording(
        self, lookup: Lookup, chunks: AsyncIterator[Chunk], deployment: str
    ) -> AsyncIterator[Chunk]:
        """The stream as the client gets it, stored once it has ended normally."""
        if lookup.key is None or not lookup.decision.write:
            return chunks

        def done(recorder: StreamRecorder) -> None:
            self.remember(lookup, recorder.answer(deployment=deployment))

        return record_stream(chunks, done)

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self.store is not None:
            await self.store.aclose()


def age_s(hit: CachedAnswer) -> int:
    return max(0, int(time.time() - hit.stored_at))
