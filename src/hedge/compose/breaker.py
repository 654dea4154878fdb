"""Per-deployment circuit breaker and kill switch, the innermost wrapper around a backend.

Every real upstream call passes through here exactly once, so this is also where each call is
counted against the request's budget and recorded as an Attempt.

States: closed (calls pass); open after `failures` consecutive failures (calls are refused
without touching the upstream); half-open once `cooldown_s` has passed (one probe call is let
through: success closes the breaker, failure opens it again). Independently, a deployment can
be revoked: by an operator's drill, or by the upstream itself answering 401/403. A revoked
deployment takes no traffic until it is restored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, TypeVar

from hedge import trace
from hedge.backends.base import Backend, DeploymentStatus, Embedder
from hedge.config import BreakerSettings
from hedge.errors import HedgeError, UpstreamError
from hedge.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
)

BreakerState = Literal["closed", "open", "half_open"]
# What a breaker tells its listener (hedge.shared_state shares these between processes).
BreakerEvent = Literal["opened", "closed", "revoked", "restored"]
Answer = TypeVar("Answer", ChatResponse, EmbeddingResponse)


class CircuitOpen(UpstreamError):
    status = 503
    code = "circuit_open"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class Breaker:
    def __init__(
        self,
        inner: Backend,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = inner.name
        self.inner = inner
        self.accepts_prefill = inner.accepts_prefill
        self.embedder = inner if isinstance(inner, Embedder) else None
        self.settings = settings
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.revoked: str | None = None
        self.listener: Callable[[Breaker, BreakerEvent], None] | None = None
        # Whether the opening / revocation in force came from another process (and so ends
        # when that process says so), rather than from this one's own calls or drill.
        self._peer_opening = False
        self._peer_revocation = False

    # ---- state ---------------------------------------------------------------------------

    def breaker_state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.settings.cooldown_s:
            return "half_open"
        return "open"

    def refusal(self) -> str | None:
        """Why no call may go to this deployment now (None when one may)."""
        if self.revoked is not None:
            return f"revoked: {self.revoked}"
        state = self.breaker_state()
        if state == "open":
            return (
                f"circuit open after {self._failures} consecutive failures; "
                f"next probe in {self._seconds_to_probe():.1f}s"
            )
        if state == "half_open" and self._probing:
            return "circuit half-open and its one probe is in flight"
        return None

    def _seconds_to_probe(self) -> float:
        assert self._opened_at is not None
        return max(0.0, self.settings.cooldown_s - (self._clock() - self._opened_at))

    @property
    def failures(self) -> int:
        return self._failures

    def revoke(self, reason: str) -> None:
        self.revoked, self._peer_revocation = reason, False
        self._tell("revoked")

    def restore(self) -> None:
        self._reset()
        self._tell("restored")

    def _reset(self) -> None:
        self.revoked, self._peer_revocation, self._peer_opening = None, False, False
        self._failures, self._opened_at, self._probing = 0, None, False

    def _tell(self, event: BreakerEvent) -> None:
        if self.listener is not None:
            self.listener(self, event)

    # ---- what other processes decided (hedge.shared_state) -------------------------------

    def adopt_opening(self, opened_at: float, failures: int) -> None:
        """Another process opened this breaker at `opened_at` (this process's clock): open
        here too, unless this process's own opening is as recent."""
        if self._opened_at is None or (opened_at > self._opened_at + 1e-3):
            self._opened_at, self._peer_opening = opened_at, True
            self._failures = max(self._failures, failures)

    def drop_peer_opening(self) -> None:
        """No process holds this breaker open any more: close it if only a peer opened it."""
        if self._peer_opening:
            self._failures, self._opened_at, self._peer_opening = 0, None, False

    def revocation_shared(self) -> None:
        """This process's revocation is now in the shared store, which decides its end."""
        if self.revoked is not None:
            self._peer_revocation = True

    def adopt_revocation(self, reason: str) -> None:
        if self.revoked is None:
            self.revoked, self._peer_revocation = reason, True

    def drop_peer_revocation(self) -> None:
        if self._peer_revocation:
            self._reset()

    def status(self) -> DeploymentStatus:
        inner = self.inner.status()
        breaker = self.breaker_state()
        if self.revoked is not None:
            return DeploymentStatus("revoked", self.revoked, breaker, inner.stats)
        return DeploymentStatus(inner.state, inner.detail, breaker, inner.stats)

    def _enter(self) -> None:
        why = self.refusal()
        if why is not None:
            raise CircuitOpen(f"deployment '{self.name}' skipped: {why}")
        if self.breaker_state() == "half_open":
            self._probing = True

    def _succeeded(self) -> None:
        was_open = self._opened_at is not None
        self._failures, self._opened_at, self._probing = 0, None, False
        if was_open:
            self._peer_opening = False
            self._tell("closed")

    def _failed(self, error: UpstreamError) -> None:
        self._probing = False
        if error.code == "upstream_auth":
            # The upstream refused our credentials: retrying cannot help, people must.
            self.revoke(f"the upstream refused our credentials ({error.message})")
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.settings.failures:
            # Told once per opening (and per failed probe), not for every call that was
            # already in flight when it opened.
            news = self._opened_at is None or self._peer_opening or self.breaker_state() != "open"
            self._opened_at, self._peer_opening = self._clock(), False
            if news:
                self._tell("opened")

    def _settle(self, error: BaseException | None) -> None:
        if isinstance(error, trace.BudgetExhausted):
            self._probing = False  # the request's own deadline says nothing about the upstream
        elif error is None or (
            isinstance(error, HedgeError) and not isinstance(error, UpstreamError)
        ):
            # A client error from the upstream is still a healthy upstream.
            self._succeeded()
        elif isinstance(error, UpstreamError):
            self._failed(error)
        else:  # cancelled (hedged request lost, client left): no verdict on the upstream
            self._probing = False

    # ---- Backend -------------------------------------------------------------------------

    def unsupported(self, request: ChatRequest) -> str | None:
        return self.inner.unsupported(request)

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def embedding_unsupported(self, request: EmbeddingRequest) -> str | None:
        if self.embedder is None:
            return "serves chat completions only, not embeddings"
        return self.embedder.embedding_unsupported(request)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self._call(lambda: self.inner.complete(request))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        inner = self.embedder
        if inner is None:
            raise UpstreamError(
                f"deployment '{self.name}' serves chat completions only, not embeddings",
                retryable=False,
            )
        return await self._call(lambda: inner.embed(request))

    async def _call(self, call: Callable[[], Awaitable[Answer]]) -> Answer:
        """One upstream call that answers whole: counted, timed, bounded by the request's
        deadline, and settled on the breaker."""
        self._enter()
        current = trace.active()
        attempt = current.begin(self.name)
        t0 = time.perf_counter()
        error: BaseException | None = None
        try:
            try:
                # (inline, not a context manager: this runs once per request)
                async with asyncio.timeout(max(0.0, current.remaining_s())):
                    response = await call()
            except TimeoutError:
                raise _past_deadline(current) from None
            attempt.usage = response.usage
            return response
        except BaseException as e:
            error = e
            attempt.error = e.message if isinstance(e, HedgeError) else type(e).__name__
            raise
        finally:
            attempt.seconds = time.perf_counter() - t0
            current.upstream_seconds += attempt.seconds
            self._settle(error)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self._enter()
        current = trace.active()
        attempt = current.begin(self.name)
        attempt.error = "stream abandoned"
        t0 = time.perf_counter()
        error: BaseException | None = None
        chunks = aiter(self.inner.stream(request))
        try:
            while True:
                t = time.perf_counter()
                try:
                    async with asyncio.timeout(max(0.0, current.remaining_s())):
                        chunk = await anext(chunks)
                except TimeoutError:
                    raise _past_deadline(current) from None
                except StopAsyncIteration:
                    attempt.error = None
                    return
                finally:
                    current.upstream_seconds += time.perf_counter() - t
                attempt.usage = chunk.usage or attempt.usage
                yield chunk
        except BaseException as e:
            error = e
            if isinstance(e, HedgeError):
                attempt.error = e.message
            raise
        finally:
            attempt.seconds = time.perf_counter() - t0
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
            if error is None and attempt.error is not None:
                error = GeneratorExit()  # closed early by the consumer: no verdict
            self._settle(error)


def _past_deadline(current: trace.Trace) -> trace.BudgetExhausted:
    """A running call cut off by what was left of the request's deadline."""
    return trace.BudgetExhausted(
        f"Request reached its deadline ({current.deadline_s:g}s) during an upstream call: "
        + "; ".join(f"{a.deployment}: {a.error or 'in progress'}" for a in current.attempts)
    )
