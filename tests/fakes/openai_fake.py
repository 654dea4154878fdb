"""A loopback fake OpenAI-compatible upstream whose behaviour is chosen by the model name.

It runs in its own thread and event loop so a hedge subprocess can reach it over TCP while the
test reads its hit log directly. Behaviours (the `model` field of the request):

- `echo` (or anything unknown): answers "echo: <last user text>"; with tools, calls the first.
- `fail-<status>`: answers that HTTP status with an OpenAI error body; `fail-429` sends
  Retry-After: 1.
- `slow-<seconds>`: waits, then echoes (quietly gives up if the client left meanwhile).
- `stall-<seconds>`: sends the response head (and, on a stream, the first event) at once, then
  waits before sending the rest: a server whose head is quick but whose answer is not.
- `cut-stream`: streams a few chunks, then drops the connection without finishing.
- `no-done`: streams a complete answer but never sends `data: [DONE]`.
- `not-json`: answers 200 with a body that is not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Hit:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class FakeOpenAI:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)

    def hits_for(self, model: str) -> list[Hit]:
        return [h for h in self.hits if h.model == model]


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else " ".join(p.get("text", "") for p in c)
    return ""


def _answer(body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str]:
    tools = body.get("tools") or []
    if tools and body.get("tool_choice") != "none":
        fn = tools[0]["function"]["name"]
        call = {
            "id": "call_fake_1",
            "type": "function",
            "function": {"name": fn, "arguments": json.dumps({"q": _last_user_text(body)})},
        }
        return None, [call], "tool_calls"
    return f"echo: {_last_user_text(body)}", [], "stop"


def _usage(body: dict[str, Any], text: str | None) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion = len((text or "").split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _handle(fake: FakeOpenAI, request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = str(body.get("model", ""))
    fake.hits.append(Hit(model, body, dict(request.headers), time.monotonic()))
    if model.startswith("fail-"):
        status = int(model.removeprefix("fail-"))
        headers = {"Retry-After": "1"} if status == 429 else {}
        return web.json_response(
            {"error": {"message": f"fake failure {status}", "type": "fake", "code": None}},
            status=status,
            headers=headers,
        )
    if model.startswith("slow-"):
        await asyncio.sleep(float(model.removeprefix("slow-")))
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=499)  # the client gave up; nobody reads this
    if model == "not-json":
        return web.Response(text="<html>oops</html>", content_type="text/html")
    text, calls, finish = _answer(body)
    created = int(time.time())
    stall = float(model.removeprefix("stall-")) if model.startswith("stall-") else 0.0
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(body, text),
        }
        if not stall:
            return web.json_response(completion)
        return await _stalled_json(request, json.dumps(completion).encode(), stall)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def event(payload: dict[str, Any]) -> None:
        await resp.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    head = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    await event(
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    )
    if stall:
        await asyncio.sleep(stall)
        if request.transport is None or request.transport.is_closing():
            return resp
    if calls:
        await event(
            {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": calls[0]["id"],
                                    "type": "function",
                                    "function": {
                                        "name": calls[0]["function"]["name"],
                                        "arguments": "",
                                    },
                                }
                            ]
                        },
                        "finish_reason": None,
                    }
                ],
            }
        )
        await event(
            {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "function": {"arguments": calls[0]["function"]["arguments"]},
                                }
                            ]
                        },
                        "finish_reason": None,
                    }
                ],
            }
        )
    else:
        words = (text or "").split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            await event(
                {
                    **head,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
            )
            if model == "cut-stream" and i == 1:
                assert request.transport is not None
                request.transport.close()
                return resp
    await event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        await event({**head, "choices": [], "usage": _usage(body, text)})
    if model != "no-done":
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _stalled_json(request: web.Request, payload: bytes, stall: float) -> web.StreamResponse:
    """The head and the first bytes of a JSON body at once, the rest after `stall` seconds."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(payload)
    await resp.prepare(request)
    await resp.write(payload[:10])
    await asyncio.sleep(stall)
    with contextlib.suppress(ConnectionError):
        await resp.write(payload[10:])
        await resp.write_eof()
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

        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app, access_log=None)
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
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
