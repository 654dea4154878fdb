"""Server-Sent Events as upstreams send them: the `data:` payloads, one per event, under a
first-event deadline and an idle-gap deadline. Transport-neutral: it reads any body that can be
read in blocks and released.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Protocol

from hedge.config import Timeouts
from hedge.errors import UpstreamError, UpstreamTimeout

# The longest event line accepted, and how much is read at a time.
_READ_LIMIT = 1024 * 1024
_READ_BLOCK = 64 * 1024


class _Body(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Streamed(Protocol):
    """What sse_data needs of a response: its body, and a way to hand the connection back."""

    @property
    def content(self) -> _Body: ...

    def release(self) -> None: ...


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def sse_data(
    resp: Streamed, deployment: str, timeouts: Timeouts
) -> AsyncGenerator[bytes, None]:
    """The `data:` payloads of a Server-Sent Events body, one per event.

    The first event must come within `first_token` seconds and every later one within `idle`
    (each line within that gap of the previous one); a connection that drops mid-stream
    raises `UpstreamError`. The caller decides what a missing end marker means.

    The body is read in blocks and split here, so a block holding several lines (an upstream
    that writes a few events at once) costs one wait and one timer, not one per line.
    """
    content = resp.content
    loop = asyncio.get_running_loop()
    end = loop.time() + timeouts.total
    gap = timeouts.first_token
    data: list[bytes] = []
    buf = b""
    at = 0  # where the next line starts in buf
    deadline: float | None = None  # for the line being waited for
    try:
        while True:
            newline = buf.find(b"\n", at)
            if newline >= 0:
                line = buf[at:newline]
                at = newline + 1
                deadline = None
            else:
                buf, at = buf[at:], 0
                if len(buf) > _READ_LIMIT:
                    raise ValueError(f"an event line longer than {_READ_LIMIT} bytes")
                if deadline is None:
                    deadline = min(loop.time() + gap, end)
                try:
                    async with asyncio.timeout_at(deadline):
                        more = await content.read(_READ_BLOCK)
                except TimeoutError:
                    what = "ran past its total" if deadline >= end else "stalled for"
                    limit = timeouts.total if deadline >= end else gap
                    raise UpstreamTimeout(
                        f"deployment '{deployment}' stream {what} {limit:g}s"
                    ) from None
                if more:
                    buf += more
                    continue
                if buf.strip(b"\r") and buf.startswith(b"data:"):  # a last line, unended
                    data.append(buf.rstrip(b"\r")[5:].lstrip(b" "))
                if data:
                    yield b"\n".join(data)
                return
            line = line.rstrip(b"\r")
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
                    gap = timeouts.idle
                continue
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            # event:, id:, retry: and comments carry nothing we need: the JSON says it all.
    except (OSError, ValueError) as e:  # ValueError: a line longer than _READ_LIMIT
        raise UpstreamError(
            f"deployment '{deployment}' stream broke: {_describe(e)}", retryable=True
        ) from None
    finally:
        resp.release()
