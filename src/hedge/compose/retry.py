"""Retrying one deployment: exponential backoff with full jitter, and Retry-After honoured.

The decision is a pure function of the error, the try number and the settings; the wrapper
only sleeps and calls again. Only failures that another try at the same deployment may cure
are retried; everything else goes straight back to the caller (which may fail over).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

from hedge import trace
from hedge.backends.base import DeploymentStatus
from hedge.compose.breaker import Breaker
from hedge.config import RetrySettings
from hedge.errors import UpstreamError
from hedge.types import ChatRequest, ChatResponse, Chunk, EmbeddingRequest, EmbeddingResponse


def retry_delay(
    error: UpstreamError, tried: int, settings: RetrySettings, rng: Callable[[], float]
) -> float | None:
    """Seconds to wait before try number `tried + 1` on the same deployment, or None to stop."""
    if not error.retryable or tried >= settings.attempts_per_deployment:
        return None
    if error.retry_after_s is not None:
        # The upstream said when: wait that long if it is short, otherwise go elsewhere now.
        return error.retry_after_s if error.retry_after_s <= settings.retry_after_cap_s else None
    # "Full jitter": uniform in [0, min(cap, base * 2^n)], which spreads a thundering herd.
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * 2.0 ** (tried - 1))
    return rng() * ceiling


class Retrying:
    def __init__(
        self,
        inner: Breaker,
        settings: RetrySettings,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = inner.name
        self.inner = inner
        self.accepts_prefill = inner.accepts_prefill
        self.settings = settings
        self._rng = rng

    def unsupported(self, request: ChatRequest) -> str | None:
        return self.inner.unsupported(request)

    def embedding_unsupported(self, request: EmbeddingRequest) -> str | None:
        return self.inner.embedding_unsupported(request)

    def status(self) -> DeploymentStatus:
        return self.inner.status()

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _pause(self, error: UpstreamError, tried: int) -> None:
        delay = retry_delay(error, tried, self.settings, self._rng)
        if delay is None or delay >= trace.active().remaining_s():
            raise error
        if self.inner.refusal() is not None:
            raise error  # that failure opened the breaker: report it, not the open circuit
        await asyncio.sleep(delay)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        tried = 0
        while True:
            tried += 1
            try:
                return await self.inner.complete(request)
            except UpstreamError as e:
                await self._pause(e, tried)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        tried = 0
        while True:
            tried += 1
            try:
                return await self.inner.embed(request)
            except UpstreamError as e:
                await self._pause(e, tried)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Retries only until the first chunk: after that, repeating would repeat text."""
        tried = 0
        while True:
            tried += 1
            chunks = aiter(self.inner.stream(request))
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                return
            except UpstreamError as e:
                await _close(chunks)
                await self._pause(e, tried)
                continue
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
            finally:
                await _close(chunks)
            return


async def _close(chunks: AsyncIterator[Chunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
