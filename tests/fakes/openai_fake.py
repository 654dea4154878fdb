"""A loopback fake OpenAI-compatible upstream whose behaviour is chosen by the model name.

It runs in its own thread and event loop so a hedge subprocess can reach it over TCP while the
test reads its hit log directly.

The `model` field of a request picks the behaviour. Anything after a `#` is a scenario key that
only makes the name distinct: `fail-once#t1` and `fail-once#t2` behave alike but keep separate
state (hit counts, "first hit" clocks), so each test gets a fresh upstream.

What an answer says (the "planned answer"):

- `count-<n>` as the model, or `stream-cut-<k>-of-<n>`, or a last user message containing
  `count <n>`: "t1 t2 ... t<n>", streamed one token per event.
- otherwise "echo: <last user text>"; with tools, a call to the first tool.
- When the last message is an assistant message (a prefill), the answer is the rest of the
  planned answer after that prefix, so a resumed stream joins up without duplicate text. A
  prefill that is not a prefix of the planned answer is answered with `PREFILL_MISMATCH`.

Behaviours:

- `echo`, `count-<n>` (or anything unknown): answers as above.
- `say:<text>`: answers exactly `<text>` (a judge's score, a fixed JSON document...).
- `fail-<status>`: answers that HTTP status with an OpenAI error body, always; `fail-429` sends
  Retry-After: 1.
- `fail-once`: 500 on the first hit, then answers.
- `rate-limit-once-<s>`: 429 with `Retry-After: <s>` on the first hit, then answers.
- `rate-limit-date`: 429 on the first hit with Retry-After as an HTTP-date 1 to 2 s ahead (the
  value and the instant it names are kept on the hit), then answers.
- `rate-limit`: 429 without Retry-After, always.
- `down-for-<s>`: 503 for `s` seconds counted from its first hit, then answers.
- `unauthorized` / `forbidden`: 401 / 403 with OpenAI's invalid_api_key body.
- `context-length`: 400 with OpenAI's context_length_exceeded body.
- `content-policy`: 400 with code content_policy_violation and `CONTENT_POLICY_REASON`.
- `no-prefill`: 400 when the last message is an assistant message, otherwise answers.
- `reset`: resets the TCP connection before any response byte.
- `blackhole`: reads the request and never answers (until the client leaves).
- `first-token-<s>`: stream: the response head at once, the first event after `s` seconds;
  plain: the answer after `s` seconds.
- `stream-cut-<k>-of-<n>`: stream: `k` of `n` tokens, then the connection is dropped; plain:
  the head and part of the body, then the connection is dropped.
- `stream-stall-<k>`: stream: `k` tokens, then silence; plain: the head and part of the body,
  then silence.
- `malformed-event` / `malformed-event-<k>`: stream: one event that is not JSON after `k`
  (default 2) tokens, then the rest of a good stream; plain: a truncated JSON body.
- `slow-<s>`: waits, then answers. `stall-<s>`: head (and, on a stream, the first event) at
  once, the rest after `s` seconds.
- `cut-stream`: streams a few chunks, then drops the connection without finishing.
- `no-done`: streams a complete answer but never sends `data: [DONE]`.
- `not-json`: answers 200 with a body that is not JSON.

`POST /v1/embeddings` shares the failure behaviours above (`fail-*`, `rate-limit-*`,
`down-for-<s>`, `reset`, `blackhole`, `unauthorized`...), plus `slow-<s>` and `not-json`, and
otherwise answers one deterministic unit vector per input (`fake_vector`); see
`_handle_embeddings` for the size and shape behaviours.

Every waiting behaviour gives up as soon as the client leaves and records that on its `Hit`
(`outcome == "client-gone"`), which is how a test sees that hedge cancelled a request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PREFILL_MISMATCH = " <<prefill is not a prefix of the planned answer>>"
CONTENT_POLICY_REASON = "fake-policy: the prompt asks for instructions to build a weapon"
MAX_HOLD_S = 300.0  # a blackhole or stall never holds a connection longer than this


@dataclass
class Hit:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() when the request arrived
    wall: float = 0.0  # time.time() at the same instant
    ended: float | None = None  # time.monotonic() when the fake was done with it
    outcome: str = "open"  # answered | error | reset | cut | client-gone | open
    status: int | None = None
    retry_after: str | None = None
    retry_after_at: float | None = None  # the wall-clock instant an HTTP-date Retry-After names
    usage: dict[str, int] | None = None
    tokens_sent: int = 0  # content events written on a stream

    @property
    def base(self) -> str:
        return self.model.split("#", 1)[0]

    @property
    def prefill(self) -> str | None:
        return _prefill(self.body)

    def mentions(self, marker: str) -> bool:
        return marker in json.dumps(self.body.get("messages", self.body.get("input")))

    def finish(self, outcome: str, status: int | None = None) -> None:
        if self.ended is None:
            self.ended = time.monotonic()
            self.outcome = outcome
            if status is not None:
                self.status = status


@dataclass
class FakeOpenAI:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    first_hit: dict[str, float] = field(default_factory=dict)

    def hits_for(self, model: str, marker: str | None = None) -> list[Hit]:
        """Hits on exactly this model name (scenario key included), optionally only those
        whose messages mention `marker`."""
        return [
            h
            for h in list(self.hits)
            if h.model == model and (marker is None or h.mentions(marker))
        ]

    def hits_with(self, marker: str) -> list[Hit]:
        """Every hit, on any model, whose messages mention `marker`."""
        return [h for h in list(self.hits) if h.mentions(marker)]

    def reset(self) -> None:
        """Forget every hit and every per-model state ("once", "down-for" clocks)."""
        self.hits.clear()
        self.counts.clear()
        self.first_hit.clear()


# ---- what an answer says ------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _prefill(body: dict[str, Any]) -> str | None:
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "assistant":
        return _text_of(messages[-1].get("content"))
    return None


_COUNT_MODEL = re.compile(r"count-(\d+)")
_CUT_MODEL = re.compile(r"stream-cut-(\d+)-of-(\d+)")
_COUNT_PROMPT = re.compile(r"\bcount (\d+)\b")


# Bounds a real upstream has too, so a fuzzed request cannot make the fake build a huge answer.
MAX_COUNT = 10_000
MAX_DIMENSIONS = 4096


def counted(n: int) -> str:
    """The planned answer of `count-<n>`: "t1 t2 ... t<n>" (n at most MAX_COUNT)."""
    return " ".join(f"t{i}" for i in range(1, min(n, MAX_COUNT) + 1))


def planned_text(base: str, body: dict[str, Any]) -> str:
    """The whole answer this model means to give, before any prefill is taken off."""
    if base.startswith("say:"):
        return base.removeprefix("say:")
    if m := _COUNT_MODEL.fullmatch(base):
        return counted(int(m.group(1)))
    if m := _CUT_MODEL.fullmatch(base):
        return counted(int(m.group(2)))
    if m := _COUNT_PROMPT.search(_last_user_text(body)):
        return counted(int(m.group(1)))
    return f"echo: {_last_user_text(body)}"


def _answer(base: str, body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str]:
    tools = body.get("tools") or []
    if tools and body.get("tool_choice") != "none":
        fn = tools[0]["function"]["name"]
        call = {
            "id": "call_fake_1",
            "type": "function",
            "function": {"name": fn, "arguments": json.dumps({"q": _last_user_text(body)})},
        }
        return None, [call], "tool_calls"
    text = planned_text(base, body)
    prefill = _prefill(body)
    if prefill is not None:
        text = text[len(prefill) :] if text.startswith(prefill) else PREFILL_MISMATCH
    return text, [], "stop"


def _pieces(text: str) -> list[str]:
    """One piece per word, each carrying the whitespace before it: joined, they are `text`."""
    return re.findall(r"\s*\S+", text)


def _usage(body: dict[str, Any], text: str | None) -> dict[str, int]:
    prompt = sum(len(_text_of(m.get("content")).split()) for m in body.get("messages", []))
    completion = len((text or "").split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _number(base: str, prefix: str) -> float:
    return float(base.removeprefix(prefix))


# ---- error answers ----------------------------------------------------------------------------


def _error(
    hit: Hit,
    status: int,
    message: str,
    *,
    type_: str = "fake",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    hit.finish("error", status)
    return web.json_response(
        {"error": {"message": message, "type": type_, "code": code, "param": param}},
        status=status,
        headers=headers,
    )


def _fixed_error(hit: Hit, base: str, body: dict[str, Any]) -> web.Response | None:
    """The behaviours that always (or, here, this time) answer with an error status."""
    if base == "unauthorized":
        return _error(
            hit,
            401,
            "Incorrect API key provided: sk-fake***. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            type_="invalid_request_error",
            code="invalid_api_key",
        )
    if base == "forbidden":
        return _error(
            hit,
            403,
            "Your API key does not have access to this model.",
            type_="invalid_request_error",
            code="model_not_found",
        )
    if base == "context-length":
        return _error(
            hit,
            400,
            "This model's maximum context length is 4096 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages.",
            type_="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
        )
    if base == "content-policy":
        return _error(
            hit,
            400,
            f"Your request was rejected as a result of our safety system. {CONTENT_POLICY_REASON}",
            type_="invalid_request_error",
            code="content_policy_violation",
            param="messages",
        )
    if base == "no-prefill" and _prefill(body) is not None:
        return _error(
            hit,
            400,
            "This model does not support assistant message prefill: the last message must "
            "have role 'user' or 'tool'.",
            type_="invalid_request_error",
            code="invalid_request_error",
            param="messages",
        )
    if base == "rate-limit":
        return _error(hit, 429, "Rate limit reached for requests.", type_="requests")
    return None


# ---- the handler ------------------------------------------------------------------------------


async def _hold(request: web.Request, seconds: float, hit: Hit) -> bool:
    """Wait up to `seconds`; True if the client left meanwhile (and the hit says so)."""
    end = time.monotonic() + min(seconds, MAX_HOLD_S)
    while True:
        if request.transport is None or request.transport.is_closing():
            hit.finish("client-gone")
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(0.02, left))


def _reset(request: web.Request, hit: Hit) -> web.Response:
    """Drop the connection with a TCP RST before any response byte."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    hit.finish("reset")
    return web.Response(status=499)  # nobody reads this: the connection is gone


async def _arrive(fake: FakeOpenAI, request: web.Request) -> tuple[Hit, str, int, float]:
    """Record a request: its hit, its behaviour (the model name before any `#`), how many
    times this model name was hit, and when it was first hit."""
    body = await request.json()
    model = str(body.get("model", ""))
    hit = Hit(model, body, dict(request.headers), time.monotonic(), wall=time.time())
    fake.hits.append(hit)
    fake.counts[model] += 1
    first = fake.first_hit.setdefault(model, hit.at)
    return hit, model.split("#", 1)[0], fake.counts[model], first


async def _handle(fake: FakeOpenAI, request: web.Request) -> web.StreamResponse:
    hit, base, nth, first = await _arrive(fake, request)
    body, model = hit.body, hit.model
    stream = bool(body.get("stream"))
    if (failed := await _misbehave(request, hit, base, nth, first)) is not None:
        return failed
    if base.startswith("slow-") or (base.startswith("first-token-") and not stream):
        delay = _number(base, "slow-" if base.startswith("slow-") else "first-token-")
        if await _hold(request, delay, hit):
            return web.Response(status=499)  # the client gave up; nobody reads this
    if base == "not-json":
        hit.finish("answered", 200)
        return web.Response(text="<html>oops</html>", content_type="text/html")

    text, calls, finish = _answer(base, body)
    created = int(time.time())
    hit.usage = _usage(body, text)
    if not stream:
        return await _plain(request, hit, base, model, text, calls, finish, created)
    return await _stream(request, hit, base, model, text, calls, finish, created)


async def _misbehave(
    request: web.Request, hit: Hit, base: str, nth: int, first: float
) -> web.StreamResponse | None:
    """The behaviours that fail this request (an error status, a reset, silence), or None."""
    if base == "fail-once":
        if nth == 1:
            return _error(hit, 500, "fake failure 500 (once)")
    elif base.startswith("fail-"):
        status = int(base.removeprefix("fail-"))
        headers = {"Retry-After": "1"} if status == 429 else {}
        if headers:
            hit.retry_after = "1"
        return _error(hit, status, f"fake failure {status}", headers=headers)
    elif base.startswith("rate-limit-once-"):
        if nth == 1:
            value = base.removeprefix("rate-limit-once-")
            hit.retry_after = value
            return _error(hit, 429, "Rate limit reached (once).", headers={"Retry-After": value})
    elif base == "rate-limit-date":
        if nth == 1:
            when = math.ceil(time.time()) + 1
            value = email.utils.formatdate(when, usegmt=True)
            hit.retry_after, hit.retry_after_at = value, float(when)
            return _error(
                hit, 429, "Rate limit reached (HTTP-date).", headers={"Retry-After": value}
            )
    elif base.startswith("down-for-"):
        if hit.at - first < _number(base, "down-for-"):
            return _error(hit, 503, "fake outage: service unavailable")
    elif base == "reset":
        return _reset(request, hit)
    elif base == "blackhole":
        await _hold(request, MAX_HOLD_S, hit)
        hit.finish("client-gone")
        return web.Response(status=499)
    elif (fixed := _fixed_error(hit, base, hit.body)) is not None:
        return fixed
    return None


# ---- embeddings -------------------------------------------------------------------------------

EMBED_DIMS = 16  # the size of a fake vector unless the model name or `dimensions` says


def fake_vector(text: str, dims: int = EMBED_DIMS) -> list[float]:
    """A deterministic unit vector for `text`: the same text always gets the same vector."""
    seed = hashlib.sha256(text.encode()).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dims:
        block = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw += [b / 127.5 - 1.0 for b in block]
        counter += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


_DIMS_MODEL = re.compile(r"embed-(\d+)")


async def _handle_embeddings(fake: FakeOpenAI, request: web.Request) -> web.StreamResponse:
    """POST /v1/embeddings: the failure behaviours of chat by model name, `slow-<s>`,
    `not-json`; otherwise one `fake_vector` per input. `embed-<n>` answers n-dimensional
    vectors, `dimensions` in the request is honoured unless the model is `ignores-dimensions`;
    `wrong-count` answers one vector too few; `encoding_format: base64` is honoured."""
    hit, base, nth, first = await _arrive(fake, request)
    body = hit.body
    if (failed := await _misbehave(request, hit, base, nth, first)) is not None:
        return failed
    if base.startswith("slow-") and await _hold(request, _number(base, "slow-"), hit):
        return web.Response(status=499)
    if base == "not-json":
        hit.finish("answered", 200)
        return web.Response(text="<html>oops</html>", content_type="text/html")
    raw = body.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        texts = [json.dumps(raw)]  # one array of token ids
    elif isinstance(raw, list):
        texts = [x if isinstance(x, str) else json.dumps(x) for x in raw]
    else:
        return _error(hit, 400, "'input' is required", type_="invalid_request_error")
    dims = EMBED_DIMS
    if m := _DIMS_MODEL.fullmatch(base):
        dims = int(m.group(1))
    if isinstance(body.get("dimensions"), int) and base != "ignores-dimensions":
        dims = body["dimensions"]
    if not 1 <= dims <= MAX_DIMENSIONS:
        return _error(
            hit, 400, f"'dimensions' must be 1 to {MAX_DIMENSIONS}", type_="invalid_request_error"
        )
    if base == "wrong-count":
        texts = texts[:-1]
    base64_out = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vector = fake_vector(text, dims)
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if base64_out else vector
        )
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(len(t.split()) for t in texts)
    hit.usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    hit.finish("answered", 200)
    return web.json_response(
        {"object": "list", "data": data, "model": hit.model, "usage": hit.usage}
    )


async def _plain(
    request: web.Request,
    hit: Hit,
    base: str,
    model: str,
    text: str | None,
    calls: list[dict[str, Any]],
    finish: str,
    created: int,
) -> web.StreamResponse:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    completion = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": hit.usage,
    }
    payload = json.dumps(completion).encode()
    if base.startswith("stall-"):
        return await _stalled_json(request, hit, payload, _number(base, "stall-"))
    if base.startswith("stream-stall-"):
        return await _stalled_json(request, hit, payload, MAX_HOLD_S)
    if _CUT_MODEL.fullmatch(base):
        return await _cut_json(request, hit, payload)
    if base.startswith("malformed-event"):
        hit.finish("answered", 200)
        return web.Response(body=payload[: len(payload) // 2], content_type="application/json")
    hit.finish("answered", 200)
    return web.json_response(completion)


async def _stream(
    request: web.Request,
    hit: Hit,
    base: str,
    model: str,
    text: str | None,
    calls: list[dict[str, Any]],
    finish: str,
    created: int,
) -> web.StreamResponse:
    cut_after = stall_after = malformed_after = None
    if m := _CUT_MODEL.fullmatch(base):
        cut_after = int(m.group(1))
    elif base.startswith("stream-stall-"):
        stall_after = int(base.removeprefix("stream-stall-"))
    elif base.startswith("malformed-event"):
        rest = base.removeprefix("malformed-event").removeprefix("-")
        malformed_after = int(rest) if rest else 2
    stall = _number(base, "stall-") if base.startswith("stall-") else 0.0

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    head = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }

    async def event(payload: dict[str, Any]) -> None:
        await resp.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    try:
        if base.startswith("first-token-"):
            await resp.write(b": the first token is on its way\n\n")  # the head goes out now
            if await _hold(request, _number(base, "first-token-"), hit):
                return resp
        await event(choice({"role": "assistant"}))
        if stall and await _hold(request, stall, hit):
            return resp
        if calls:
            await _tool_call_events(event, choice, calls[0])
        else:
            for i, piece in enumerate(_pieces(text or "")):
                await event(choice({"content": piece}))
                hit.tokens_sent += 1
                if base == "cut-stream" and i == 1:
                    assert request.transport is not None
                    # A real cut does not land microseconds after the last write; aiohttp's
                    # reader drops lines still buffered when the error arrives first.
                    await asyncio.sleep(0.05)
                    request.transport.close()
                    hit.finish("cut", 200)
                    return resp
                if hit.tokens_sent == cut_after:
                    assert request.transport is not None
                    await asyncio.sleep(0.05)  # see cut-stream above
                    request.transport.close()
                    hit.finish("cut", 200)
                    return resp
                if hit.tokens_sent == stall_after:
                    await _hold(request, MAX_HOLD_S, hit)
                    hit.finish("client-gone")
                    return resp
                if hit.tokens_sent == malformed_after:
                    await resp.write(b'data: {"id": "chatcmpl-fake", "choices": [{"delta": \n\n')
        await event(choice({}, finish))
        if (hit.body.get("stream_options") or {}).get("include_usage"):
            await event({**head, "choices": [], "usage": hit.usage})
        if base != "no-done":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        hit.finish("client-gone")
        return resp
    hit.finish("answered", 200)
    return resp


async def _tool_call_events(event: Any, choice: Any, call: dict[str, Any]) -> None:
    await event(
        choice(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        )
    )
    await event(
        choice(
            {"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]}
        )
    )


async def _stalled_json(
    request: web.Request, hit: Hit, payload: bytes, stall: float
) -> web.StreamResponse:
    """The head and the first bytes of a JSON body at once, the rest after `stall` seconds."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(payload)
    await resp.prepare(request)
    await resp.write(payload[:10])
    if await _hold(request, stall, hit):
        return resp
    with contextlib.suppress(ConnectionError, RuntimeError):
        await resp.write(payload[10:])
        await resp.write_eof()
    hit.finish("answered", 200)
    return resp


async def _cut_json(request: web.Request, hit: Hit, payload: bytes) -> web.StreamResponse:
    """The head and part of a JSON body, then the connection is dropped."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(payload)
    await resp.prepare(request)
    await resp.write(payload[: len(payload) // 2])
    assert request.transport is not None
    request.transport.close()
    hit.finish("cut", 200)
    return resp


@contextlib.contextmanager
def fake_openai() -> Iterator[FakeOpenAI]:
    """Run the fake on a free loopback port in a background thread."""
    fake = FakeOpenAI()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()

        async def handle(request: web.Request) -> web.StreamResponse:
            return await _handle(fake, request)

        async def embeddings(request: web.Request) -> web.StreamResponse:
            return await _handle_embeddings(fake, request)

        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_post("/v1/embeddings", embeddings)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}/v1"
        runner_box.append(runner)
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
