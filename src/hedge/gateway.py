"""The one use case: serve a chat request on a route, trying the plan's deployments in order.

The server parses and renders; this module decides which deployments may be tried, tries them,
and keeps the per-request `Trace` that the response headers (and later the ledger) report.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from hedge.backends.base import Backend
from hedge.backends.http import HttpPool
from hedge.config import (
    AnthropicDeployment,
    EmbeddedDeployment,
    HedgeConfig,
    OpenAICompatDeployment,
    Settings,
)
from hedge.errors import (
    AllAttemptsFailed,
    HedgeError,
    ModelNotFound,
    NotReady,
    Unsupported,
    UpstreamError,
)
from hedge.types import ChatRequest, ChatResponse, Chunk, Usage


@dataclass(slots=True)
class Attempt:
    deployment: str
    seconds: float
    error: str | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class Trace:
    """What happened while serving one request."""

    route: str
    request_id: str = field(default_factory=lambda: f"chatcmpl-{os.urandom(12).hex()}")
    started: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    upstream_seconds: float = 0.0
    answered_by: str | None = None

    def overhead_ms(self) -> float:
        """Wall time spent in the gateway itself, excluding time waiting on upstreams."""
        return max(0.0, (time.perf_counter() - self.started - self.upstream_seconds) * 1000)


@dataclass(frozen=True, slots=True)
class Refusal:
    deployment: str
    reason: str


def build_backends(settings: Settings, pool: HttpPool) -> dict[str, Backend]:
    """One backend per configured deployment. Imports are deferred so that a gateway with no
    embedded deployment never loads llama.cpp."""
    backends: dict[str, Backend] = {}
    data_dir = Path(settings.config.server.data_dir)
    for name, dep in settings.config.deployments.items():
        if isinstance(dep, EmbeddedDeployment):
            from hedge.backends.embedded import EmbeddedBackend

            backends[name] = EmbeddedBackend(name, dep, data_dir)
        elif isinstance(dep, OpenAICompatDeployment):
            from hedge.backends.openai_compat import OpenAICompatBackend

            backends[name] = OpenAICompatBackend(name, dep, settings.secret_for(name), pool)
        elif isinstance(dep, AnthropicDeployment):
            from hedge.backends.anthropic import AnthropicBackend

            backends[name] = AnthropicBackend(name, dep, settings.secret_for(name), pool)
    return backends


class Gateway:
    def __init__(self, config: HedgeConfig, backends: dict[str, Backend], pool: HttpPool) -> None:
        self.config = config
        self.backends = backends
        self._pool = pool
        # Routes resolve to backends once, at start-up, not per request.
        self.routes: dict[str, tuple[Backend, ...]] = {
            name: tuple(backends[d] for d in route.deployments)
            for name, route in config.routes.items()
        }
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        pool = HttpPool()
        return cls(settings.config, build_backends(settings, pool), pool)

    async def start(self, wait: bool = False) -> None:
        """Start every backend. Model loading runs in the background unless `wait`, so the
        server answers /healthz at once and /readyz tells when each deployment is ready."""
        self._tasks = [asyncio.create_task(b.start()) for b in self.backends.values()]
        if wait:
            await asyncio.gather(*self._tasks)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for backend in self.backends.values():
            await backend.aclose()
        await self._pool.aclose()

    def plan(self, request: ChatRequest) -> list[Backend]:
        """The deployments to try for this request, in order. Raises when there are none,
        with every deployment's reason."""
        route = self.routes.get(request.model)
        if route is None:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist on this gateway. "
                f"Available models: {', '.join(sorted(self.routes))}.",
                param="model",
            )
        admitted: list[Backend] = []
        refusals: list[Refusal] = []
        for backend in route:
            state = backend.status()
            if state.state in ("unavailable", "failed"):
                refusals.append(Refusal(backend.name, f"{state.state}: {state.detail}"))
            elif (why := backend.unsupported(request)) is not None:
                refusals.append(Refusal(backend.name, why))
            else:
                admitted.append(backend)
        if admitted:
            return admitted
        reasons = "; ".join(f"{r.deployment}: {r.reason}" for r in refusals)
        if all(b.status().state in ("unavailable", "failed") for b in route):
            raise NotReady(f"No deployment of model '{request.model}' is available ({reasons}).")
        raise Unsupported(
            f"No deployment of model '{request.model}' can serve this request ({reasons})."
        )

    async def chat(self, request: ChatRequest, trace: Trace) -> ChatResponse:
        last: HedgeError | None = None
        for backend in self.plan(request):
            t0 = time.perf_counter()
            try:
                response = await backend.complete(request)
            except UpstreamError as e:
                # The deployment failed; another may not. Client errors are not caught here:
                # they would fail the same way everywhere.
                self._record(trace, backend.name, t0, error=e.message)
                last = e
                continue
            except HedgeError as e:
                self._record(trace, backend.name, t0, error=e.message)
                raise
            self._record(trace, backend.name, t0, usage=response.usage)
            trace.answered_by = backend.name
            return response
        raise _all_failed(trace, last)

    async def stream(self, request: ChatRequest, trace: Trace) -> AsyncIterator[Chunk]:
        """Returns once a deployment has produced its first chunk: until then, failures move
        on to the next deployment without the client seeing anything."""
        last: HedgeError | None = None
        for backend in self.plan(request):
            t0 = time.perf_counter()
            chunks = aiter(backend.stream(request))
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                self._record(trace, backend.name, t0, error="empty stream")
                continue
            except UpstreamError as e:
                self._record(trace, backend.name, t0, error=e.message)
                last = e
                await _aclose(chunks)
                continue
            except HedgeError as e:
                self._record(trace, backend.name, t0, error=e.message)
                await _aclose(chunks)
                raise
            trace.upstream_seconds += time.perf_counter() - t0
            trace.answered_by = backend.name
            return self._relay(first, chunks, trace, backend.name, t0)
        raise _all_failed(trace, last)

    async def _relay(
        self, first: Chunk, chunks: AsyncIterator[Chunk], trace: Trace, name: str, t0: float
    ) -> AsyncIterator[Chunk]:
        usage: Usage | None = None
        error: str | None = "stream abandoned"
        try:
            yield first
            while True:
                t = time.perf_counter()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    error = None
                    break
                finally:
                    trace.upstream_seconds += time.perf_counter() - t
                usage = chunk.usage or usage
                yield chunk
        except HedgeError as e:
            error = e.message
            raise
        finally:
            await _aclose(chunks)
            trace.attempts.append(Attempt(name, time.perf_counter() - t0, error=error, usage=usage))

    @staticmethod
    def _record(
        trace: Trace, name: str, t0: float, *, error: str | None = None, usage: Usage | None = None
    ) -> None:
        elapsed = time.perf_counter() - t0
        trace.upstream_seconds += elapsed
        trace.attempts.append(Attempt(name, elapsed, error=error, usage=usage))


async def _aclose(chunks: AsyncIterator[Chunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _all_failed(trace: Trace, last: HedgeError | None) -> HedgeError:
    if last is not None and len(trace.attempts) == 1:
        return last
    tried = "; ".join(f"{a.deployment}: {a.error}" for a in trace.attempts)
    return AllAttemptsFailed(f"Every deployment of model '{trace.route}' failed ({tried}).")
