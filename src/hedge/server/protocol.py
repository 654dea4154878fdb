"""HTTP/1.1 connection limits uvicorn's httptools protocol does not have.

uvicorn reads a request head of any size (a 1 MiB header, or twenty thousand of them, is
buffered and accepted) and waits for it forever (a client that sends "GET /hea" and stops
holds its connection and buffers until it leaves). `guarded_protocol` adds, per connection:

- a head size bound: the request line and headers together (`max_header_bytes`) and their
  count (`max_headers`); past either, 431 and the connection is closed. Raw bytes still
  unparsed count too, so a single endless header is cut off as it arrives, not once complete;
- a head time bound: the head must be complete within `header_timeout_s` of the connection
  opening or of the request's first byte, else 408 and close.

Bodies are bounded elsewhere (`server.max_body_bytes`, read by the ASGI app).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hedge.config import ServerSettings


def _response(status: bytes, code: str, message: str) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": code,
                "param": None,
            }
        }
    )
    return b"".join(
        [
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _HeadTooLarge(Exception):
    pass


def guarded_protocol(
    max_header_bytes: int, max_headers: int, header_timeout_s: float
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits (pass it as uvicorn's `http`)."""
    too_large = _response(
        b"431 Request Header Fields Too Large",
        "request_header_fields_too_large",
        f"The request line and headers exceed {max_header_bytes} bytes or {max_headers} "
        "headers. Fix: send fewer or shorter headers.",
    )
    too_slow = _response(
        b"408 Request Timeout",
        "request_timeout",
        f"The request head did not arrive within {header_timeout_s:g} seconds.",
    )

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_bytes = 0
            self._head_count = 0
            self._raw = 0
            self._in_head = True
            self._too_large = False
            self._timer: asyncio.TimerHandle | None = None
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Still reading a head after this read: it was all head (a body only follows a
            # complete head), so an endless header is cut off as it arrives. (With pipelining,
            # a read may also carry the end of the previous body: counted too, a bound on the
            # read rather than the head, which clients that pipeline rarely reach.)
            if self._in_head and not self.transport.is_closing():
                self._raw += len(data)
                if self._raw > max_header_bytes:
                    self._refuse(too_large)

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers any parser error 400, including the one `_count` raises.
            if self._too_large:
                self._refuse(too_large)
            else:
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # (`_raw` already counts this request's first bytes: it is reset when a head ends.)
            self._head_bytes = self._head_count = 0
            self._in_head = True
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._count(len(url), 0)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4, 1)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._raw = False, 0
            self._disarm()
            super().on_headers_complete()

        def _count(self, size: int, headers: int) -> None:
            self._head_bytes += size
            self._head_count += headers
            if self._head_bytes > max_header_bytes or self._head_count > max_headers:
                self._too_large = True
                raise _HeadTooLarge  # httptools stops parsing; uvicorn then calls send_400_response

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _head_timed_out(self) -> None:
            self._timer = None
            if self._in_head and not self.transport.is_closing():
                # An idle keep-alive connection (no byte of a next request yet) is closed
                # quietly; a head left half-sent is told why.
                if self._raw:
                    self.transport.write(too_slow)
                self.transport.close()

        def _refuse(self, response: bytes) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return GuardedProtocol


def protocol_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn options for these limits, from `server:` settings."""
    return {
        "http": guarded_protocol(
            server.max_header_bytes, server.max_headers, server.header_timeout_s
        )
    }
