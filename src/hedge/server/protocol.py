"""hedge's HTTP/1.1 connection: httptools parsing, ASGI, and the limits a gateway needs.

uvicorn still runs the server (sockets, lifespan, signals, graceful stop, `--workers`); this is
the per-connection protocol it drives (its `http` option). It replaces uvicorn's own httptools
protocol, chosen by measurement (bench/hot_path.py; figures in the README), for what a gateway's
hot path pays per request:

- one write per plain answer: the response head waits for the first body bytes and goes out
  with them (uvicorn writes the head, then the body: two socket writes per answer, and on
  loopback each write runs the peer's receive path too);
- no timer per request: one timer per connection, re-armed lazily from a deadline;
- no regular expressions over response headers: the header block is checked once for stray
  CR or LF (the bytes that could split a response), the only framing risk.

And the limits uvicorn does not have (it buffered a 1 MiB header, and waited forever for a
head sent half-way):

- a head size bound: the request line and headers together (`max_header_bytes`) and their
  count (`max_headers`); past either, 431 and the connection is closed. Raw bytes still
  unparsed count too, so a single endless header is cut off as it arrives, not once complete;
- a head time bound: a head must be complete within `header_timeout_s` of the connection
  opening or of the request's first byte, else 408 and close; an idle keep-alive connection is
  closed quietly after uvicorn's `timeout_keep_alive`;
- malformed HTTP gets an OpenAI-shaped 400 (uvicorn answered it in plain text).

Bodies are bounded by the ASGI app (`server.max_body_bytes`).
"""

from __future__ import annotations

import asyncio
import http
import logging
import urllib.parse
from collections import deque
from typing import Any, cast

import httptools
import orjson

from hedge.config import ServerSettings
from hedge.server.asgi import INTERNAL_ERROR, Message

log = logging.getLogger("hedge.server")

_HIGH_WATER = 64 * 1024  # request body bytes buffered before the socket stops being read
_DISCONNECT: Message = {"type": "http.disconnect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


_STATUS_LINES = {code: _status_line(code) for code in range(100, 600)}


def error_response(status: int, code: str, message: str) -> bytes:
    """A whole OpenAI-shaped error answer that closes the connection."""
    error = {"message": message, "type": "invalid_request_error", "code": code, "param": None}
    return _closing_answer(status, orjson.dumps({"error": error}))


def _closing_answer(status: int, body: bytes) -> bytes:
    return b"".join(
        [
            _STATUS_LINES[status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_INTERNAL_ERROR = _closing_answer(500, orjson.dumps(INTERNAL_ERROR))


class _HeadTooLarge(Exception):
    pass


class _DefaultHeaders:
    """uvicorn's default headers (Date, refreshed every second) encoded once per change."""

    source: list[tuple[bytes, bytes]] | None = None
    encoded = b""

    @classmethod
    def encode(cls, headers: list[tuple[bytes, bytes]]) -> bytes:
        if headers is not cls.source:
            cls.source = headers
            cls.encoded = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return cls.encoded


class Exchange:
    """One request and its response: the ASGI `receive` and `send` of one call of the app."""

    __slots__ = (
        "body",
        "body_size",
        "chunked",
        "complete",
        "conn",
        "delivered",
        "disconnected",
        "done",
        "expect_continue",
        "head",
        "head_only",
        "keep_alive",
        "remaining",
        "scope",
        "started",
        "waiter",
    )

    def __init__(
        self, conn: Http1, scope: dict[str, Any], keep_alive: bool, expect_continue: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False  # the request body has been received whole
        self.delivered = False  # ...and handed to the app
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.started = False  # the app has given the response head
        self.head: bytes | None = None  # the head, waiting for the first body bytes
        self.chunked = False
        self.remaining: int | None = None  # Content-Length still to send; None: unbounded
        self.done = False  # the response has been sent whole

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Message:
        while True:
            if self.disconnected or self.done:
                return _DISCONNECT
            if self.body or (self.complete and not self.delivered):
                data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                self.body_size = 0
                self.delivered = self.complete
                self.conn.resume_reading()
                return {"type": "http.request", "body": data, "more_body": not self.complete}
            if self.expect_continue:
                self.expect_continue = False
                self.conn.transport.write(_CONTINUE)
            self.conn.resume_reading()
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            # The head first: if its headers are refused, nothing has started and the app
            # can still answer 500.
            self.head = self._head(message["status"], message.get("headers", ()))
            self.started = True
            self.expect_continue = False  # answered without reading the body: no 100
            return
        if self.done or kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} after the response")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.head_only:
            out = b""
        elif self.chunked:
            out = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                out += b"0\r\n\r\n"
        else:
            out = body
            if self.remaining is not None:
                self.remaining -= len(body)
                if self.remaining < 0 or (not more and self.remaining):
                    raise RuntimeError("response body length differs from its Content-Length")
        if self.head is not None:
            out = self.head + out
            self.head = None
        if out:
            conn.transport.write(out)
        if not more:
            self.done = True
            self.wake()
            conn.response_done(self)

    def _head(self, status: int, headers: Any) -> bytes:
        length: int | None = None
        chunked = close = False
        lines = []
        for raw_name, value in headers:
            name = raw_name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
            lines.append(name + b": " + value + b"\r\n")
        block = b"".join(lines)
        if block.count(b"\n") != len(lines) or block.count(b"\r") != len(lines):
            raise RuntimeError("a response header name or value contains CR or LF")
        if close:
            self.keep_alive = False
        elif not self.keep_alive:
            block += b"connection: close\r\n"
        if status in _NO_BODY_STATUSES:
            self.remaining = 0
        elif chunked:
            self.chunked = True
        elif length is not None:
            self.remaining = 0 if self.head_only else length
        elif not self.head_only:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                block += b"transfer-encoding: chunked\r\n"
            else:
                self.keep_alive = False  # an HTTP/1.0 body without a length ends at close
        status_line = _STATUS_LINES.get(status) or _status_line(status)
        defaults = _DefaultHeaders.encode(self.conn.server_state.default_headers)
        return status_line + defaults + block + b"\r\n"


class Http1(asyncio.Protocol):
    """One client connection. `protocol_class` makes the subclass uvicorn instantiates, with
    the limits as class attributes."""

    max_header_bytes = 32 * 1024
    max_headers = 100
    header_timeout_s = 10.0

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.keep_alive_s: float = config.timeout_keep_alive
        self.root_path: str = config.root_path
        self.parser = httptools.HttpRequestParser(self)
        # Answer a request whose client half-closed after sending it (as uvicorn does).
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.template: dict[str, Any] = {}
        self.serving: Exchange | None = None  # the exchange whose response is being written
        self.parsing: Exchange | None = None  # the exchange whose request is being read
        self.waiting: deque[Exchange] = deque()  # pipelined requests, in order
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.upgraded = False
        # the head being read
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.in_head = True
        self.head_bytes = self.head_count = self.raw = 0
        self.too_large = False
        # one timer per connection: it fires at `deadline`, or re-arms itself when moved later
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TCP transport is not registered as an asyncio.Transport subclass)
        self.transport = transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(self)
        server = _address(transport.get_extra_info("sockname"))
        client = _address(transport.get_extra_info("peername"))
        self.template = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "scheme": "https" if transport.get_extra_info("sslcontext") else "http",
            "server": server,
            "client": client,
            "root_path": self.root_path,
        }
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for exchange in (self.serving, self.parsing, *self.waiting):
            if exchange is not None:
                exchange.disconnected = True
                exchange.wake()
        self.waiting.clear()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.write_paused = False

    def eof_received(self) -> bool | None:
        return None  # the transport closes; a response in flight sees the disconnect

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            return  # bytes of a protocol we did not switch to
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A request asking to switch protocols is served as plain HTTP; what follows it is
            # not HTTP, so the connection closes after the answer.
            self.upgraded = True
            if self.parsing is not None:
                self.parsing.keep_alive = False
                self.parsing.complete = True
                self.parsing.wake()
            return
        except httptools.HttpParserError as e:
            if self.too_large:
                self._refuse(self._head_too_large())
            else:
                reason = str(e) or "unparseable request"
                self._refuse(
                    error_response(
                        400,
                        "invalid_http",
                        f"Malformed HTTP/1.1 request ({reason}). Send a valid HTTP/1.1 request.",
                    )
                )
            return
        # Still reading a head after this read: it was all head (a body only follows a
        # complete head), so an endless header is cut off as it arrives. (With pipelining, a
        # read may also carry the end of the previous body: counted too, a bound on the read
        # rather than the head, which clients that pipeline rarely reach.)
        if self.in_head and not self.transport.is_closing():
            self.raw += len(data)
            if self.raw > self.max_header_bytes:
                self._refuse(self._head_too_large())

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # ---- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        # (`raw` already counts this request's first bytes: it is reset when a head ends.)
        self.url = b""
        self.headers = []
        self.expect_continue = False
        self.head_bytes = self.head_count = 0
        self.in_head = True
        self._arm(self.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head, self.raw = False, 0
        self.deadline = None
        parser = self.parser
        version = parser.get_http_version()
        url = self.url
        if b"?" in url or not url.startswith(b"/"):
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        else:
            raw_path, query = url, b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = self.template.copy()
        scope["http_version"] = version
        scope["method"] = parser.get_method().decode("ascii")
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = query
        scope["headers"] = self.headers
        if self.app_state:
            scope["state"] = self.app_state.copy()
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = Exchange(self, scope, keep_alive, self.expect_continue)
        self.parsing = exchange
        if self.serving is None:
            self._serve(exchange)
        else:  # pipelined: answered in order, and nothing more is read meanwhile
            self.waiting.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.done:
            return  # answered without reading its body: the rest is dropped
        exchange.body.append(body)
        exchange.body_size += len(body)
        if exchange.body_size > _HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.complete = True
            exchange.wake()

    # ---- serving ------------------------------------------------------------------------

    def _serve(self, exchange: Exchange) -> None:
        self.serving = exchange
        task = self.loop.create_task(self._run(exchange))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive, exchange.send)
        except BaseException:
            log.exception("unhandled error in the ASGI app")
            self._abandon(exchange)
        else:
            if not exchange.done and not exchange.disconnected:
                log.error("the ASGI app returned without completing its response")
                self._abandon(exchange)

    def _abandon(self, exchange: Exchange) -> None:
        """A response the app failed to finish: a 500 when nothing was sent, else a cut."""
        if exchange.disconnected or self.transport.is_closing():
            return
        if not exchange.started or exchange.head is not None:
            self.transport.write(_INTERNAL_ERROR)
        self.transport.close()

    def response_done(self, exchange: Exchange) -> None:
        self.server_state.total_requests += 1
        self.serving = None
        if self.transport.is_closing():
            return
        if not exchange.keep_alive:
            self.transport.close()
            return
        self.resume_reading()
        if self.waiting:
            self._serve(self.waiting.popleft())
        elif not self.in_head or not self.raw:
            self._arm(self.keep_alive_s)

    def shutdown(self) -> None:
        """The server is stopping: close when idle, else after the response in flight."""
        if self.serving is None:
            self.transport.close()
        else:
            self.serving.keep_alive = False
            self.waiting.clear()

    # ---- flow control -------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.read_paused and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = self.loop.create_future()
        await self.drained

    # ---- limits -------------------------------------------------------------------------

    def _count(self, size: int, headers: int) -> None:
        self.head_bytes += size
        self.head_count += headers
        if self.head_bytes > self.max_header_bytes or self.head_count > self.max_headers:
            self.too_large = True
            raise _HeadTooLarge  # httptools stops parsing and raises HttpParserCallbackError

    def _head_too_large(self) -> bytes:
        return error_response(
            431,
            "request_header_fields_too_large",
            f"The request line and headers exceed {self.max_header_bytes} bytes or "
            f"{self.max_headers} headers. Fix: send fewer or shorter headers.",
        )

    def _refuse(self, response: bytes) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _arm(self, delay: float) -> None:
        self.deadline = deadline = self.loop.time() + delay
        timer = self.timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            timer = None
        if timer is None:
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None or self.transport.is_closing():
            return
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        self.deadline = None
        if self.in_head and self.raw:
            # a head left half-sent is told why; an idle connection is closed quietly
            self._refuse(
                error_response(
                    408,
                    "request_timeout",
                    f"The request head did not arrive within {self.header_timeout_s:g} seconds.",
                )
            )
        elif self.serving is None:
            if self.transport.get_write_buffer_size():
                # idle only once the last answer has left: a slow reader is still reading it
                self._arm(self.keep_alive_s)
            else:
                self.transport.close()


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def protocol_class(max_header_bytes: int, max_headers: int, header_timeout_s: float) -> type[Http1]:
    """The connection class with these limits (pass it as uvicorn's `http`)."""
    return type(
        "HedgeHttp1",
        (Http1,),
        {
            "max_header_bytes": max_header_bytes,
            "max_headers": max_headers,
            "header_timeout_s": header_timeout_s,
        },
    )


def protocol_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn options for hedge's connection protocol, from `server:` settings."""
    return {
        "http": protocol_class(
            server.max_header_bytes, server.max_headers, server.header_timeout_s
        ),
        "server_header": False,  # uvicorn's `server: uvicorn` would name the wrong software
    }
