"""Fail-over across a plan's deployments: the first good answer wins.

One loop serves both the plain and the hedged case: candidates start in plan order, the next
one when the previous has failed, or, with hedging, also when the previous has been slow for
`hedge_after` seconds; the first success cancels the rest. Errors decide what comes next:
- an upstream failure moves on to the next deployment;
- a context-length error moves on only to deployments with a larger context window;
- any other client error (a content-policy refusal, a bad parameter) ends the request, since
  it would fail the same way everywhere.

Streams fail over until the client has seen bytes. The first `head_chunks` chunks are held
back, so a stream that breaks early is replaced without the client noticing; a stream that
breaks later is resumed on another deployment with the partial answer as an assistant prefill
(when the route allows it and it is safe), or ends with an error the server turns into an
SSE error event. A truncated answer is never presented as complete.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from hedge.errors import AllAttemptsFailed, ContextLengthExceeded, HedgeError, UpstreamError
from hedge.types import ChatRequest, ChatResponse, Chunk, Message

T = TypeVar("T")


class Named(Protocol):
    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=Named)


class Candidate(Protocol):
    """A deployment as the fail-over loop sees it."""

    name: str
    accepts_prefill: bool

    def unsupported(self, request: ChatRequest) -> str | None: ...

    def complete(self, request: ChatRequest) -> Awaitable[ChatResponse]: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]: ...


@dataclass(frozen=True, slots=True)
class Options:
    hedge_after_s: float | None = None
    head_chunks: int = 0
    resume: bool = False


def balanced_order(
    names: Sequence[str], weights: dict[str, float], rng: Callable[[], float] = random.random
) -> list[str]:
    """A weighted random order (weight 1 when unset): each pick is proportional to weight
    among those not yet picked, so the first pick spreads load and the rest are fallbacks."""
    left = list(names)
    order: list[str] = []
    while left:
        total = sum(weights.get(n, 1.0) for n in left)
        point = rng() * total
        for n in left:
            point -= weights.get(n, 1.0)
            if point < 0:
                break
        order.append(n)
        left.remove(n)
    return order


def still_eligible(
    error: HedgeError, failed: str, later: Sequence[str], windows: dict[str, int | None]
) -> list[str] | None:
    """Which later deployments may still be tried after `failed` raised `error` (pure).
    None means: stop, the error goes to the client."""
    if isinstance(error, ContextLengthExceeded):
        own = windows.get(failed)
        larger = [
            n for n in later if (w := windows.get(n)) is not None and (own is None or w > own)
        ]
        return larger or None
    if isinstance(error, UpstreamError):
        return list(later)
    return None


async def first_success(
    candidates: Sequence[C],
    call: Callable[[C], Awaitable[T]],
    windows: dict[str, int | None],
    hedge_after_s: float | None,
    route: str,
) -> tuple[T, C]:
    """Run `call` on candidates in order until one succeeds (see the module docstring)."""
    if hedge_after_s is None:
        return await _in_turn(candidates, call, windows, route)
    queue = list(candidates)
    running: dict[asyncio.Task[T], C] = {}
    errors: list[tuple[str, HedgeError]] = []

    def launch() -> None:
        candidate = queue.pop(0)
        running[asyncio.ensure_future(call(candidate))] = candidate

    launch()
    try:
        while running:
            hedge = hedge_after_s is not None and queue and len(running) == 1
            done, _ = await asyncio.wait(
                running,
                timeout=hedge_after_s if hedge else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:  # the one in flight is slow: hedge with the next
                launch()
                continue
            for task in done:
                candidate = running.pop(task)
                error = task.exception()
                if error is None:
                    return task.result(), candidate
                if not isinstance(error, HedgeError):
                    raise error
                errors.append((candidate.name, error))
                eligible = still_eligible(error, candidate.name, [c.name for c in queue], windows)
                if eligible is None:
                    if running and not isinstance(error, ContextLengthExceeded):
                        continue  # a hedge is still running; let it answer
                    raise error
                queue = [c for c in queue if c.name in eligible]
            if not running and queue:
                launch()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    raise _exhausted(route, errors)


async def _in_turn(
    candidates: Sequence[C],
    call: Callable[[C], Awaitable[T]],
    windows: dict[str, int | None],
    route: str,
) -> tuple[T, C]:
    """`first_success` without hedging: one call at a time, awaited in the caller's task (no
    task and no asyncio.wait per request: about 5% of a request's CPU on the hot path)."""
    queue = list(candidates)
    errors: list[tuple[str, HedgeError]] = []
    while queue:
        candidate = queue.pop(0)
        try:
            return await call(candidate), candidate
        except HedgeError as error:
            errors.append((candidate.name, error))
            eligible = still_eligible(error, candidate.name, [c.name for c in queue], windows)
            if eligible is None:
                raise
            queue = [c for c in queue if c.name in eligible]
    raise _exhausted(route, errors)


def _exhausted(route: str, errors: list[tuple[str, HedgeError]]) -> HedgeError:
    if len(errors) == 1:
        return errors[0][1]
    last = errors[-1][1] if errors else None
    tried = "; ".join(f"{name}: {e.message}" for name, e in errors)
    error = AllAttemptsFailed(f"Every deployment of model '{route}' failed ({tried}).")
    if isinstance(last, UpstreamError) and last.retry_after_s is not None:
        error.headers["Retry-After"] = str(max(1, round(last.retry_after_s)))
    return error


# ---- streams ----------------------------------------------------------------------------


@dataclass(slots=True)
class OpenStream:
    """A stream whose head has arrived: the held-back chunks and the rest to come."""

    head: list[Chunk]
    rest: AsyncIterator[Chunk] | None  # None: the whole answer fit in the head


async def open_stream(candidate: Candidate, request: ChatRequest, head_chunks: int) -> OpenStream:
    """Start a stream and read its head (at least one chunk). Any failure in the head is
    raised here, before the client has seen anything."""
    chunks = aiter(candidate.stream(request))
    head: list[Chunk] = []
    try:
        while len(head) < max(1, head_chunks):
            try:
                head.append(await anext(chunks))
            except StopAsyncIteration:
                return OpenStream(head, None)
    except BaseException:
        await _close(chunks)
        raise
    return OpenStream(head, chunks)


async def relay(
    opened: OpenStream,
    answered_by: Candidate,
    later: Sequence[Candidate],
    request: ChatRequest,
    options: Options,
    on_resume: Callable[[Candidate], None],
) -> AsyncIterator[Chunk]:
    """The client's stream: the head, then the rest; on a later break, a resumption."""
    text: list[str] = []
    safe = request.choices_wanted == 1
    for chunk in opened.head:
        safe = safe and _track(chunk, text)
        yield chunk
    if opened.rest is None:
        return
    try:
        async for chunk in opened.rest:
            safe = safe and _track(chunk, text)
            yield chunk
        return
    except UpstreamError as broke:
        if not (options.resume and safe and later):
            raise
        failure: HedgeError = broke
    finally:
        await _close(opened.rest)
    # Continue elsewhere: the next deployment is asked to go on from the partial answer.
    continued = continuation(request, "".join(text))
    for candidate in later:
        if not candidate.accepts_prefill or candidate.unsupported(continued) is not None:
            continue
        try:
            resumed = await open_stream(candidate, continued, 1)
        except UpstreamError as e:
            failure = e
            continue
        except HedgeError as e:  # e.g. the deployment refuses an assistant prefill
            raise UpstreamError(
                f"stream from '{answered_by.name}' broke and could not be resumed on "
                f"'{candidate.name}': {e.message}",
                retryable=False,
            ) from None
        on_resume(candidate)
        for chunk in resumed.head:
            yield chunk
        if resumed.rest is not None:
            try:
                async for chunk in resumed.rest:
                    yield chunk
            finally:
                await _close(resumed.rest)
        return
    raise failure


def _track(chunk: Chunk, text: list[str]) -> bool:
    """Collect the answer's text; False once resuming would be unsafe (tool calls, n > 1)."""
    if chunk.content:
        text.append(chunk.content)
    return not chunk.tool_calls and chunk.index == 0


def continuation(request: ChatRequest, partial: str) -> ChatRequest:
    """The same request with the partial answer appended as an assistant prefill (pure)."""
    messages = [*request.messages, Message(role="assistant", content=partial)]
    return request.model_copy(update={"messages": messages})


async def _close(chunks: AsyncIterator[Chunk] | None) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
