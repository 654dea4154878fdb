"""The few ASGI primitives hedge needs, written directly against the protocol.

A gateway's hot path is mostly plumbing, so it is kept to what is measured to matter: one
bounded body read, pre-encoded header names, and JSON bytes written in one send.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol

import orjson

from hedge.errors import HedgeError, InvalidRequest, PayloadTooLarge
from hedge.types import Chunk

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# Where the key guard leaves a metered request's body once it has parsed it (a JSON object), so
# the handler behind it validates that object instead of parsing the same bytes again.
PARSED_BODY = "hedge.parsed_body"

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

INTERNAL_ERROR = {
    "error": {
        "message": "hedge hit an internal error; it has been logged.",
        "type": "server_error",
        "code": "internal_error",
        "param": None,
    }
}


class ClientGone(Exception):
    """The client disconnected while we were reading its request."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def bearer_token(scope: Scope) -> bytes:
    """The token of an `Authorization: Bearer ...` header (the scheme in any case), or b""."""
    given = header(scope, b"authorization")
    if given is None:
        return b""
    scheme, _, value = given.partition(b" ")
    return value.strip() if scheme.lower() == b"bearer" else b""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused as soon as it is known to exceed `limit` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("The Content-Length header is not a number.") from None
        if size > limit:
            raise _too_large(limit, size)
    parts: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int, declared: int | None = None) -> PayloadTooLarge:
    size = "" if declared is None else f" ({declared} bytes)"
    return PayloadTooLarge(
        f"The request body{size} exceeds this gateway's limit of {limit} bytes "
        "(server.max_body_bytes). Send a smaller request or raise the limit."
    )


async def send_bytes(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: Any, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, orjson.dumps(payload), [*JSON_HEADERS, *extra])


async def send_error(
    send: Send, error: HedgeError, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send_json(send, error.status, error.body(), [*headers, *extra])


class EventEncoder(Protocol):
    """One stream's wire encoding: what goes first, per chunk, last, and on failure."""

    def start(self) -> bytes: ...

    def feed(self, chunk: Chunk) -> bytes | None: ...

    def finish(self) -> bytes: ...

    def error(self, error: HedgeError) -> bytes: ...


async def relay_events(
    chunks: AsyncIterator[Chunk],
    encoder: EventEncoder,
    headers: list[tuple[bytes, bytes]],
    receive: Receive,
    send: Send,
    finished: Callable[[int], None],
) -> None:
    """Relay a stream as server-sent events. `finished(status)` runs once, before the last
    event goes out: 200 for a complete stream, the error's status for a failed one (the
    client sees the encoder's error event, never a short answer presented as complete), 499
    when the client left (then the upstream is closed too)."""
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})
    opening = encoder.start()
    if opening:
        await send({"type": "http.response.body", "body": opening, "more_body": True})
    watcher = asyncio.create_task(_wait_disconnect(receive))
    try:
        async for chunk in chunks:
            if watcher.done():
                finished(499)
                break
            event = encoder.feed(chunk)
            if event:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        else:
            last = encoder.finish()
            finished(200)
            await send({"type": "http.response.body", "body": last, "more_body": False})
            return
    except HedgeError as e:
        finished(e.status)
        await send({"type": "http.response.body", "body": encoder.error(e), "more_body": False})
        return
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
