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

from hedge import policy
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
    InvalidRequest,
    ModelNotFound,
    NotReady,
    PolicyRefused,
    Unsupported,
    UpstreamError,
)
from hedge.provenance import all_provenance
from hedge.types import ChatRequest, ChatResponse, Chunk, Usage


@dataclass(slots=True)
class Attempt:
    deployment: str
    seconds: float
    error: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking and under which extra constraints: policies added by the request (or,
    later, its API key) and the request's data class. These can only narrow a route."""

    policies: tuple[str, ...] = ()
    data_class: str | None = None


@dataclass(slots=True)
class Trace:
    """What happened while serving one request."""

    route: str
    request_id: str = field(default_factory=lambda: f"chatcmpl-{os.urandom(12).hex()}")
    started: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    upstream_seconds: float = 0.0
    answered_by: str | None = None
    plan: policy.Plan | None = None

    def overhead_ms(self) -> float:
        """Wall time spent in the gateway itself, excluding time waiting on upstreams."""
        return max(0.0, (time.perf_counter() - self.started - self.upstream_seconds) * 1000)


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
    def __init__(
        self,
        config: HedgeConfig,
        backends: dict[str, Backend],
        pool: HttpPool,
        provenance: dict[str, policy.Provenance],
    ) -> None:
        self.config = config
        self.backends = backends
        self.provenance = provenance
        self._pool = pool
        # Routes resolve to backends once, at start-up, not per request.
        self.routes: dict[str, tuple[Backend, ...]] = {
            name: tuple(backends[d] for d in route.deployments)
            for name, route in config.routes.items()
        }
        self.data_classes = frozenset(c for p in config.policies.values() for c in p.data_classes)
        # Policy evaluation is pure, and its inputs are configured names only: each distinct
        # (route, policies, data class) is planned once and then reused.
        self._plans: dict[tuple[str, tuple[str, ...], str | None], policy.Plan] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        pool = HttpPool()
        return cls(
            settings.config,
            build_backends(settings, pool),
            pool,
            all_provenance(settings.config, settings.catalog),
        )

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

    def policy_plan(self, route: str, caller: Caller = Caller()) -> policy.Plan:
        """The route's deployments that its policies and the caller's admit (cached)."""
        key = (route, caller.policies, caller.data_class)
        found = self._plans.get(key)
        if found is None:
            for name in caller.policies:
                if name not in self.config.policies:
                    raise InvalidRequest(
                        f"Unknown policy '{name}' (known: "
                        f"{', '.join(sorted(self.config.policies)) or 'none'}).",
                        param="X-Hedge-Policy",
                    )
            if caller.data_class is not None and caller.data_class not in self.data_classes:
                raise InvalidRequest(
                    f"Unknown data class '{caller.data_class}' (known: "
                    f"{', '.join(sorted(self.data_classes)) or 'none'}): a data class must be "
                    "one that a configured policy has rules for.",
                    param="X-Hedge-Data-Class",
                )
            names = (*self.config.routes[route].policies, *caller.policies)
            unique = tuple(dict.fromkeys(names))
            found = policy.plan(
                route,
                [self.provenance[b.name] for b in self.routes[route]],
                [(n, self.config.policies[n]) for n in unique],
                caller.data_class,
            )
            self._plans[key] = found
        return found

    def plan(
        self, request: ChatRequest, caller: Caller = Caller(), trace: Trace | None = None
    ) -> list[Backend]:
        """The deployments to try for this request, in order. Raises when there are none,
        with every deployment's reason."""
        route = self.routes.get(request.model)
        if route is None:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist on this gateway. "
                f"Available models: {', '.join(sorted(self.routes))}.",
                param="model",
            )
        allowed = self.policy_plan(request.model, caller)
        if trace is not None:
            trace.plan = allowed
        if not allowed.admitted:
            error = PolicyRefused(
                f"Policy refuses every deployment of model '{request.model}': "
                + "; ".join(str(r) for r in allowed.refusals)
            )
            error.details["refusals"] = [
                {"deployment": r.deployment, "policy": r.policy, "rule": r.rule, "reason": r.reason}
                for r in allowed.refusals
            ]
            raise error
        admitted: list[Backend] = []
        reasons: list[str] = []
        for name in allowed.admitted:
            backend = self.backends[name]
            state = backend.status()
            if state.state in ("unavailable", "failed"):
                reasons.append(f"{name}: {state.state}: {state.detail}")
            elif (why := backend.unsupported(request)) is not None:
                reasons.append(f"{name}: {why}")
            else:
                admitted.append(backend)
        if admitted:
            return admitted
        reasons_text = "; ".join(reasons)
        if all(
            self.backends[n].status().state in ("unavailable", "failed") for n in allowed.admitted
        ):
            raise NotReady(
                f"No deployment of model '{request.model}' is available ({reasons_text})."
            )
        raise Unsupported(
            f"No deployment of model '{request.model}' can serve this request ({reasons_text})."
        )

    async def chat(
        self, request: ChatRequest, trace: Trace, caller: Caller = Caller()
    ) -> ChatResponse:
        last: HedgeError | None = None
        for backend in self.plan(request, caller, trace):
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

    async def stream(
        self, request: ChatRequest, trace: Trace, caller: Caller = Caller()
    ) -> AsyncIterator[Chunk]:
        """Returns once a deployment has produced its first chunk: until then, failures move
        on to the next deployment without the client seeing anything."""
        last: HedgeError | None = None
        for backend in self.plan(request, caller, trace):
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
            # Recorded now, so the headers sent with the first byte count it; the relay fills
            # in how the stream ended.
            attempt = Attempt(backend.name, 0.0, error="stream abandoned")
            trace.attempts.append(attempt)
            return self._relay(first, chunks, trace, attempt, t0)
        raise _all_failed(trace, last)

    async def _relay(
        self, first: Chunk, chunks: AsyncIterator[Chunk], trace: Trace, attempt: Attempt, t0: float
    ) -> AsyncIterator[Chunk]:
        attempt.usage = first.usage
        try:
            yield first
            while True:
                t = time.perf_counter()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    attempt.error = None
                    break
                finally:
                    trace.upstream_seconds += time.perf_counter() - t
                attempt.usage = chunk.usage or attempt.usage
                yield chunk
        except HedgeError as e:
            attempt.error = e.message
            raise
        finally:
            await _aclose(chunks)
            attempt.seconds = time.perf_counter() - t0

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
        error = last
    else:
        tried = "; ".join(f"{a.deployment}: {a.error}" for a in trace.attempts)
        error = AllAttemptsFailed(f"Every deployment of model '{trace.route}' failed ({tried}).")
    # When the last upstream said when to come back, so do we.
    if isinstance(last, UpstreamError) and last.retry_after_s is not None:
        error.headers.setdefault("Retry-After", str(max(1, round(last.retry_after_s))))
    return error
