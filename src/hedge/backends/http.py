"""The one pooled HTTP client and the transport rules every HTTP upstream shares:
sending a JSON body under bounded timeouts, mapping failures onto the error tree, and reading
Server-Sent Events with a first-event and an idle-gap deadline."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from hedge.backends.base import DeploymentStatus
from hedge.config import Timeouts
from hedge.errors import (
    ContentPolicy,
    ContextLengthExceeded,
    HedgeError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)

_MAX_ERROR_BODY = 64 * 1024


class HttpPool:
    """One aiohttp session per process: connection reuse is most of an HTTP proxy's speed."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=512, ttl_dns_cache=300, keepalive_timeout=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def post_json(
    pool: HttpPool,
    deployment: str,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeouts: Timeouts,
    *,
    head_deadline: float,
) -> aiohttp.ClientResponse:
    """POST and return the response once its head has arrived with a 2xx status.

    `head_deadline` bounds the wait for the response head: the whole generation for a plain
    request, the time to first token for a streamed one. Everything else raises the right
    `HedgeError` with the upstream's own reason in it.
    """
    timeout = aiohttp.ClientTimeout(
        total=None, connect=timeouts.connect, sock_connect=timeouts.connect
    )
    try:
        async with asyncio.timeout(head_deadline):
            resp = await pool.session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=timeout
            )
    except TimeoutError:
        raise UpstreamTimeout(
            f"deployment '{deployment}' sent no response within {head_deadline:g}s"
        ) from None
    except aiohttp.ClientError as e:
        raise UpstreamError(
            f"deployment '{deployment}' could not be reached: {_describe(e)}", retryable=True
        ) from None
    if resp.status >= 400:
        try:
            raw = await resp.content.read(_MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        finally:
            resp.release()
        raise upstream_failure(deployment, resp.status, raw, resp.headers.get("Retry-After"))
    return resp


async def read_response(resp: aiohttp.ClientResponse, deployment: str, seconds: float) -> bytes:
    """The whole body of a response whose head has arrived, within `seconds`. A server can send
    its head at once and then stall: the deadline covers the body too. Releases `resp`."""
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            return await resp.read()
    except TimeoutError:
        raise UpstreamTimeout(
            f"deployment '{deployment}' did not finish its response before its total timeout"
        ) from None
    except (aiohttp.ClientError, OSError) as e:
        raise UpstreamError(
            f"deployment '{deployment}' broke off its response: {_describe(e)}", retryable=True
        ) from None
    finally:
        resp.release()


def upstream_failure(
    deployment: str, status: int, raw: bytes, retry_after: str | None
) -> HedgeError:
    """Map an upstream's error status and body onto our error tree (pure)."""
    message, code = _error_text(raw)
    reason = f"deployment '{deployment}' answered {status}: {message}"
    lowered = f"{code} {message}".lower()
    if status in (400, 413, 422):
        if any(k in lowered for k in ("context_length", "context length", "maximum context")):
            return ContextLengthExceeded(reason)
        if "content_policy" in lowered or "content_filter" in lowered or "safety" in lowered:
            return ContentPolicy(reason)
        if status == 413:
            return UpstreamError(reason, retryable=False, upstream_status=status)
        return InvalidRequest(reason)
    retryable = status in (408, 409, 425, 429) or status >= 500
    return UpstreamError(
        reason,
        retryable=retryable,
        upstream_status=status,
        retry_after_s=parse_retry_after(retry_after),
        code="upstream_auth" if status in (401, 403) else None,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf" and "nan" parse as floats but are no delay anyone can wait for.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _error_text(raw: bytes) -> tuple[str, str]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return (text[:500] or "no error body", "")
    if not isinstance(payload, dict):
        return (str(payload)[:500], "")
    err = payload.get("error")
    if isinstance(err, str):
        return (err[:1000], "")
    # OpenAI nests the error under "error"; vLLM's older ErrorResponse puts it at the top level
    # ({"object": "error", "message": ..., "type": ..., "code": 400}); FastAPI says "detail".
    body = err if isinstance(err, dict) else payload
    message = body.get("message") or body.get("detail")
    if not message:
        return (str(payload)[:500], "")
    return (str(message)[:1000], str(body.get("code") or body.get("type") or ""))


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def sse_data(
    resp: aiohttp.ClientResponse, deployment: str, timeouts: Timeouts
) -> AsyncGenerator[bytes, None]:
    """The `data:` payloads of a Server-Sent Events body, one per event.

    The first event must come within `first_token` seconds and every later one within `idle`;
    a connection that drops mid-stream raises `UpstreamError`. The caller decides what a
    missing end marker means.
    """
    content = resp.content
    loop = asyncio.get_running_loop()
    end = loop.time() + timeouts.total
    gap = timeouts.first_token
    data: list[bytes] = []
    try:
        while True:
            deadline = min(loop.time() + gap, end)
            try:
                async with asyncio.timeout_at(deadline):
                    line = await content.readline()
            except TimeoutError:
                what = "ran past its total" if deadline >= end else "stalled for"
                limit = timeouts.total if deadline >= end else gap
                raise UpstreamTimeout(
                    f"deployment '{deployment}' stream {what} {limit:g}s"
                ) from None
            if not line:
                if data:
                    yield b"\n".join(data)
                return
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
                    gap = timeouts.idle
                continue
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            # event:, id:, retry: and comments carry nothing we need: the JSON says it all.
    except aiohttp.ClientError as e:
        raise UpstreamError(
            f"deployment '{deployment}' stream broke: {_describe(e)}", retryable=True
        ) from None
    finally:
        resp.release()


class JsonEndpoint:
    """One upstream URL with its headers, timeouts and credential: what every HTTP backend
    sends through. A backend adds only its converters."""

    def __init__(
        self,
        pool: HttpPool,
        deployment: str,
        url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        missing_key_env: str | None = None,
    ) -> None:
        self.pool = pool
        self.deployment = deployment
        self.url = url
        self.headers = dict(headers)
        self.timeouts = timeouts
        self.missing_key_env = missing_key_env

    def status(self) -> DeploymentStatus:
        if self.missing_key_env is not None:
            return DeploymentStatus(
                "unavailable", f"environment variable {self.missing_key_env} is not set"
            )
        return DeploymentStatus("ready")

    async def answer(self, body: Mapping[str, Any]) -> Any:
        """POST and return the decoded JSON answer; `total` bounds head and body together."""
        t = self.timeouts
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await post_json(
            self.pool, self.deployment, self.url, body, self.headers, t, head_deadline=t.total
        )
        raw = await read_response(resp, self.deployment, t.total - (loop.time() - started))
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"deployment '{self.deployment}' sent a response that is not JSON",
                retryable=True,
            ) from None

    async def events(self, body: Mapping[str, Any]) -> AsyncGenerator[bytes, None]:
        """POST and yield the SSE `data:` payloads; the caller closes the generator."""
        t = self.timeouts
        resp = await post_json(
            self.pool,
            self.deployment,
            self.url,
            body,
            self.headers,
            t,
            head_deadline=t.first_token,
        )
        async with aclosing(sse_data(resp, self.deployment, t)) as events:
            async for data in events:
                yield data
