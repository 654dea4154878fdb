"""Where an evaluation's requests go: the gateway, in this process or over HTTP.

In-process, the `Gateway` is built from the Settings exactly as `hedge serve` builds it, and each
case is served by `Gateway.chat` and recorded in the ledger like any request, so routes,
policies, cascades, the cache and accounting all apply. Over HTTP, a running hedge is called on
its OpenAI wire (`POST /v1/chat/completions`), and its own ledger records the calls.

Either way an `Answer` carries the request id (the ledger's key), the deployment that answered,
the latency, the tokens and the cost: in-process, every upstream call the request made
(retries and cascade stages included), priced at each call's deployment; over HTTP, the
answering call's usage at the answering deployment's prices. A deployment without `prices` in
hedge.yaml has an unknown cost (None), never a guessed one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from hedge.accounting import cost_usd
from hedge.config import HedgeConfig, Prices
from hedge.errors import HedgeError
from hedge.gateway import Gateway
from hedge.trace import Trace
from hedge.types import ChatRequest, ChatResponse, Choice, Usage

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Answer:
    response: ChatResponse
    request_id: str | None
    deployment: str | None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    attempts: int | None

    @property
    def text(self) -> str:
        choice = self.response.choices[0] if self.response.choices else None
        return (choice.content or "") if choice else ""


class CallFailed(Exception):
    """A request failed. `retryable`: the same request may succeed if sent again."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        request_id: str | None = None,
        attempts: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.request_id = request_id
        self.attempts = attempts
        self.retry_after_s = retry_after_s


class Target(Protocol):
    async def start(self) -> None: ...
    async def complete(self, request: ChatRequest) -> Answer: ...
    async def aclose(self) -> None: ...


def known_prices(config: HedgeConfig) -> dict[str, Prices | None]:
    """Each deployment's prices, or None where hedge.yaml gives none (unknown, not free)."""
    return {
        name: dep.prices if "prices" in dep.model_fields_set else None
        for name, dep in config.deployments.items()
    }


def priced(usage: Usage, prices: Prices | None) -> float | None:
    return None if prices is None else cost_usd(usage, prices)


class InProcessTarget:
    def __init__(self, gateway: Gateway, prices: Mapping[str, Prices | None]) -> None:
        self.gateway = gateway
        self.prices = prices

    async def start(self) -> None:
        await self.gateway.start(wait=True)

    async def complete(self, request: ChatRequest) -> Answer:
        trace = Trace(route=request.model)
        started = time.perf_counter()
        try:
            response = await self.gateway.chat(request, trace)
        except HedgeError as e:
            self.gateway.record(trace, e.status, e.code)
            raise CallFailed(
                f"{e.status} {e.code}: {e.message}",
                retryable=e.status in RETRYABLE_STATUS,
                request_id=trace.request_id,
                attempts=len(trace.attempts),
                retry_after_s=_seconds(e.headers.get("Retry-After")),
            ) from None
        except Exception as e:  # a bug, which the server would answer with a 500
            self.gateway.record(trace, 500)
            raise CallFailed(
                f"500 internal_error: {type(e).__name__}: {e}",
                retryable=False,
                request_id=trace.request_id,
                attempts=len(trace.attempts),
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000
        self.gateway.record(trace, 200)
        calls = [a for a in trace.attempts if a.usage is not None]
        costs = [priced(a.usage, self.prices.get(a.deployment)) for a in calls if a.usage]
        return Answer(
            response=response,
            request_id=trace.request_id,
            deployment=trace.answered_by,
            latency_ms=latency_ms,
            prompt_tokens=sum(a.usage.prompt_tokens for a in calls if a.usage),
            completion_tokens=sum(a.usage.completion_tokens for a in calls if a.usage),
            cost_usd=None if any(c is None for c in costs) else math.fsum(c or 0.0 for c in costs),
            attempts=len(trace.attempts),
        )

    async def aclose(self) -> None:
        await self.gateway.aclose()


class RemoteTarget:
    """A running hedge, on its OpenAI wire."""

    def __init__(
        self, url: str, prices: Mapping[str, Prices | None], timeout_s: float = 600.0
    ) -> None:
        self.url = url.rstrip("/")
        self.prices = prices
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            json_serialize=lambda v: orjson.dumps(v).decode(),
        )

    async def complete(self, request: ChatRequest) -> Answer:
        assert self._session is not None, "start() first"
        body = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
        started = time.perf_counter()
        try:
            async with self._session.post(f"{self.url}/v1/chat/completions", json=body) as resp:
                raw = await resp.read()
                headers = resp.headers
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CallFailed(
                f"no answer from {self.url}: {type(e).__name__}: {e}", retryable=True
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000
        request_id = headers.get("x-request-id")
        attempts = _int(headers.get("x-hedge-attempts"))
        try:
            payload: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = None
        if status != 200:
            error = payload.get("error") if isinstance(payload, dict) else None
            message = (
                error.get("message")
                if isinstance(error, dict)
                else raw[:200].decode(errors="replace")
            )
            code = error.get("code") if isinstance(error, dict) else None
            raise CallFailed(
                f"{status} {code}: {message}",
                retryable=status in RETRYABLE_STATUS,
                request_id=request_id,
                attempts=attempts,
                retry_after_s=_seconds(headers.get("Retry-After")),
            )
        response = _response(payload)
        if response is None:
            raise CallFailed(
                f"the gateway's answer is not a chat completion: {raw[:200]!r}", retryable=True
            )
        deployment = headers.get("x-hedge-deployment")
        return Answer(
            response=response,
            request_id=request_id,
            deployment=deployment,
            latency_ms=latency_ms,
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
            cost_usd=priced(response.usage, self.prices.get(deployment or "")),
            attempts=attempts,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _response(payload: Any) -> ChatResponse | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        return None
    choices = []
    for i, c in enumerate(payload["choices"]):
        message = c.get("message") if isinstance(c, dict) else None
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        choices.append(
            Choice(
                index=int(c.get("index", i)),
                content=content if isinstance(content, str) else None,
                finish_reason=c.get("finish_reason"),
                refusal=message.get("refusal"),
            )
        )
    raw_usage = payload.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    raw_details = usage.get("prompt_tokens_details")
    details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
    return ChatResponse(
        choices=tuple(choices),
        usage=Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        ),
        upstream_model=str(payload.get("model", "")),
        id=str(payload.get("id", "")),
    )


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _seconds(text: str | None) -> float | None:
    try:
        return None if text is None else max(0.0, float(text))
    except ValueError:
        return None


async def sleep_before_retry(
    attempt: int, retry_after_s: float | None, cap_s: float = 30.0
) -> None:
    """Full-jitter exponential backoff (0.5 s, 1 s, 2 s... ceilings), or the server's
    Retry-After when it gives one, capped."""
    import random

    if retry_after_s is not None:
        await asyncio.sleep(min(retry_after_s, cap_s))
        return
    await asyncio.sleep(random.uniform(0, min(cap_s, 0.5 * 2**attempt)))
