"""The one pooled HTTP client and the transport rules every HTTP upstream shares:
sending a JSON body under bounded timeouts and mapping failures onto the error tree (Server-Sent
Events are read by hedge.backends.sse).

The client is HTTP/1.1 written directly on asyncio's protocol layer with httptools' parser (the
same parser uvicorn uses at the front door): keep-alive connections pooled per upstream, each
request's head bytes prepared once per endpoint, gzip/deflate decoded, flow control on the
body. Measured against aiohttp's client on the same proxy path (bench/hot_path.py), it costs
well under half as much CPU per request, which is most of what a gateway spends.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import ssl
import time
import zlib
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools
import orjson

from hedge.backends.base import DeploymentStatus
from hedge.backends.sse import sse_data
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
# A body buffer above twice this pauses reading from the upstream until the reader catches up.
_READ_LIMIT = 1024 * 1024

_MAX_IDLE_PER_UPSTREAM = 512
_IDLE_S = 60.0  # an idle pooled connection older than this is closed rather than reused


class BrokenResponse(ConnectionError):
    """The upstream's bytes are not a valid HTTP response, or stopped short of one."""


class Body(Protocol):
    """What `sse_data` reads a stream from (an asyncio.StreamReader fits)."""

    async def read(self, n: int = -1) -> bytes: ...


class Response(Protocol):
    """What `sse_data` needs of a response: its body and a way to give the connection back."""

    @property
    def content(self) -> Body: ...

    def release(self) -> None: ...


class UpstreamResponse:
    """A response whose head has arrived; the body is read from `content` (or `read()`), or
    is already whole in `body` (a request sent with `whole=True`). `release()` returns the
    connection to the pool once the body is complete, else closes it; it must be called once
    the caller is done."""

    __slots__ = ("_conn", "body", "content", "headers", "status")

    def __init__(
        self,
        conn: _Connection,
        status: int,
        headers: dict[str, str],
        content: asyncio.StreamReader | _Whole,
        body: bytes | None = None,
    ) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers  # lower-case names
        self.content = content
        self.body = body

    async def read(self) -> bytes:
        return self.body if self.body is not None else await self.content.read()

    def release(self) -> None:
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.finish()


class _Whole:
    """The `content` of a response whose body came whole (in `body`): nothing to read."""

    async def read(self, n: int = -1) -> bytes:
        return b""


_WHOLE = _Whole()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to one upstream; one request at a time."""

    def __init__(self, pool: HttpPool, key: tuple[str, str, int]) -> None:
        self._pool = pool
        self._key = key
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._headers: dict[str, str] = {}
        self._body: asyncio.StreamReader | None = None
        self._whole: list[bytes] | None = None  # the body's parts, when it is awaited whole
        self.head_seen = False
        self._complete = False
        self._keep_alive = False
        self._until_close = False  # body delimited by the end of the connection
        self._decoder: Any = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(BrokenResponse(f"invalid HTTP response ({e})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self._complete:
            if self.head_seen and self._until_close and exc is None:
                self.on_message_complete()
            else:
                why = f": {exc}" if exc else ""
                stage = "mid-response" if self.head_seen else "before answering"
                self._fail(BrokenResponse(f"the upstream closed the connection {stage}{why}"))

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self.head_seen = True
        self._status = parser.get_status_code()
        headers = self._headers
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._until_close = "content-length" not in headers and not chunked
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, detected
        if self._whole is not None:
            return  # the head future waits for the whole body
        body = asyncio.StreamReader(limit=_READ_LIMIT, loop=self._loop)
        assert self.transport is not None
        body.set_transport(self.transport)
        self._body = body
        head = self._head
        if head is not None and not head.done():
            head.set_result(UpstreamResponse(self, self._status, headers, body))

    def on_body(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as e:
                self._fail(BrokenResponse(f"the response body does not decompress ({e})"))
                self.close()
                return
        if not data:
            return
        if self._whole is not None:
            self._whole.append(data)
        elif self._body is not None:
            self._body.feed_data(data)

    def on_message_complete(self) -> None:
        self._flush_decoder()
        assert self._parser is not None
        # Asked here: llhttp answers for the message it is completing, not after it. (When
        # the body ended with the connection, there is nothing to keep alive.)
        self._keep_alive = not self.closed and self._parser.should_keep_alive()
        self._complete = True
        if self._body is not None:
            self._body.feed_eof()
        elif self._whole is not None:
            head = self._head
            if head is not None and not head.done():
                body = b"".join(self._whole)
                head.set_result(UpstreamResponse(self, self._status, self._headers, _WHOLE, body))

    # -- used by the pool --

    def send(self, data: bytes, whole: bool = False) -> asyncio.Future[UpstreamResponse]:
        """Write a request; the future gets the response's head (or, when `whole`, the
        response with its whole body in `body`)."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._headers = {}
        self._body = None
        self._whole = [] if whole else None
        self.head_seen = False
        self._complete = False
        self._keep_alive = False
        self._decoder = None
        self._head = self._loop.create_future()
        self.transport.write(data)
        return self._head

    def finish(self) -> None:
        """The caller is done with the response: reuse the connection if it can be."""
        reusable = self._complete and self._keep_alive and not self.closed
        self._parser = None
        self._head = None
        self._body = None
        self._whole = None
        if reusable:
            assert self.transport is not None
            self.transport.resume_reading()  # a large body may have paused it
            self._pool._put(self._key, self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _flush_decoder(self) -> None:
        if self._decoder is not None:
            rest = self._decoder.flush()
            self._decoder = None
            if rest:
                self.on_body(rest)

    def _fail(self, error: Exception) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved: a caller that has gone (timed out) raised already
        elif self._body is not None and not self._complete:
            self._body.set_exception(error)
        self._complete = False
        self._parser = None


class HttpPool:
    """The upstream connections of one process, pooled per (scheme, host, port): connection
    reuse is most of an HTTP proxy's speed."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _put(self, key: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= _MAX_IDLE_PER_UPSTREAM:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, key: tuple[str, str, int], connect_s: float) -> _Connection:
        idle = self._idle.get(key)
        if idle:
            too_old = time.monotonic() - _IDLE_S
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to be stale
                if not conn.closed and conn.idle_since > too_old:
                    return conn
                conn.close()
        scheme, host, port = key
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_s):
            transport, conn = await loop.create_connection(
                lambda: _Connection(self, key),
                host,
                port,
                ssl=tls,
                server_hostname=host if tls else None,
            )
        conn.transport = transport  # uvloop may call connection_made after returning
        return conn

    async def request(
        self, key: tuple[str, str, int], data: bytes, connect_s: float
    ) -> UpstreamResponse:
        """Send one prepared request and wait for the head of its response."""
        conn = await self._connect(key, connect_s)
        try:
            return await conn.send(data)
        except BaseException:
            conn.close()  # a cancelled or failed exchange leaves the connection unusable
            raise

    async def request_whole(
        self, key: tuple[str, str, int], data: bytes, connect_s: float, total_s: float
    ) -> tuple[UpstreamResponse | None, bool, OSError | None]:
        """Send one prepared request and wait, at most `total_s` from now (connecting
        included), for its whole response. One deadline and one timer for all of it.
        Returns (response, True, None), or on failure (None, whether the response's head had
        arrived, the error), the error being None when the time ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_s
        try:
            conn = await self._connect(key, min(connect_s, total_s))
        except TimeoutError:
            return None, False, None
        except OSError as e:
            return None, False, e
        try:
            async with asyncio.timeout_at(deadline):
                return await conn.send(data, whole=True), True, None
        except TimeoutError:
            conn.close()
            return None, conn.head_seen, None
        except OSError as e:
            conn.close()
            return None, conn.head_seen, e
        except BaseException:
            conn.close()
            raise

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class Upstream:
    """One upstream URL with its constant request head, prepared once: only the body and its
    length change per request."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        self.key = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
        if ":" in parts.hostname and not host.startswith("["):  # an IPv6 literal
            host = f"[{parts.hostname}]" + ("" if port == default_port else f":{port}")
        lines = [f"POST {target} HTTP/1.1", f"Host: {host}"]
        lowered = {k.lower() for k in headers}
        if "accept-encoding" not in lowered:
            lines.append("Accept-Encoding: gzip, deflate")
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
        if any(c in line for line in lines for c in "\r\n\0"):
            raise ValueError(f"a header for {url} contains a line break or NUL")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()

    def request_bytes(self, body: bytes) -> bytes:
        return b"".join((self._head, str(len(body)).encode(), b"\r\n\r\n", body))


async def post_json(
    pool: HttpPool,
    deployment: str,
    upstream: Upstream,
    body: Mapping[str, Any],
    timeouts: Timeouts,
    *,
    head_deadline: float,
) -> UpstreamResponse:
    """POST and return the response once its head has arrived with a 2xx status.

    `head_deadline` bounds the wait for the response head: the whole generation for a plain
    request, the time to first token for a streamed one. Everything else raises the right
    `HedgeError` with the upstream's own reason in it.
    """
    data = upstream.request_bytes(orjson.dumps(body))
    try:
        async with asyncio.timeout(head_deadline):
            resp = await pool.request(upstream.key, data, timeouts.connect)
    except TimeoutError:
        raise UpstreamTimeout(
            f"deployment '{deployment}' sent no response within {head_deadline:g}s"
        ) from None
    except OSError as e:
        raise UpstreamError(
            f"deployment '{deployment}' could not be reached: {_describe(e)}", retryable=True
        ) from None
    if resp.status >= 400:
        try:
            async with asyncio.timeout(timeouts.idle):
                raw = await resp.content.read(_MAX_ERROR_BODY)
        except (OSError, TimeoutError):
            raw = b""
        finally:
            resp.release()
        raise upstream_failure(deployment, resp.status, raw, resp.headers.get("retry-after"))
    return resp


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
        self.upstream = Upstream(url, self.headers)

    def status(self) -> DeploymentStatus:
        if self.missing_key_env is not None:
            return DeploymentStatus(
                "unavailable", f"environment variable {self.missing_key_env} is not set"
            )
        return DeploymentStatus("ready")

    async def answer(self, body: Mapping[str, Any]) -> Any:
        """POST and return the decoded JSON answer; `total` bounds head and body together."""
        t = self.timeouts
        name = self.deployment
        data = self.upstream.request_bytes(orjson.dumps(body))
        resp, head_seen, error = await self.pool.request_whole(
            self.upstream.key, data, t.connect, t.total
        )
        if resp is None:
            if error is not None and head_seen:
                raise UpstreamError(
                    f"deployment '{name}' broke off its response: {_describe(error)}",
                    retryable=True,
                )
            if error is not None:
                raise UpstreamError(
                    f"deployment '{name}' could not be reached: {_describe(error)}",
                    retryable=True,
                )
            if head_seen:  # a server can send its head at once and then stall
                raise UpstreamTimeout(
                    f"deployment '{name}' did not finish its response before its total timeout"
                )
            raise UpstreamTimeout(f"deployment '{name}' sent no response within {t.total:g}s")
        try:
            raw = resp.body or b""
            if resp.status >= 400:
                retry_after = resp.headers.get("retry-after")
                raise upstream_failure(name, resp.status, raw[:_MAX_ERROR_BODY], retry_after)
        finally:
            resp.release()
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
            self.pool, self.deployment, self.upstream, body, t, head_deadline=t.first_token
        )
        async with aclosing(sse_data(resp, self.deployment, t)) as events:
            async for data in events:
                yield data
