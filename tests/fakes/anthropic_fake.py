"""A loopback fake of Anthropic's Messages API, for integration tests of the anthropic backend.

It checks what the real API checks first (the x-api-key and anthropic-version headers, then the
body rules the backend must respect: max_tokens, alternating turns, tool_result ids that answer
an earlier tool_use) and answers in the documented shapes, streamed or not:

- with `tools` and no tool_result in the last turn: a tool_use block calling the first tool
  with {"text": <last user text>};
- otherwise: "echo: <last user text or tool result>".

The last user text "__cut__" makes a stream stop mid-answer and "__error__" makes it send an
`error` event, so the backend's handling of broken streams can be tested over a real socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_KEY = "sk-ant-test-key"
VERSION = "2023-06-01"
CUT = "__cut__"
ERROR = "__error__"


@dataclass
class FakeAnthropic:
    api_key: str = API_KEY
    version: str = VERSION
    base_url: str = ""
    hits: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != self.version:
            return _error(401, "authentication_error", "missing or unknown anthropic-version")
        body = await request.json()
        self.bodies.append(body)
        problem = _invalid(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        message = _reply(body)
        if body.get("stream"):
            return await _stream(request, message, _last_text(body["messages"]))
        return web.json_response(message)


@asynccontextmanager
async def running_fake(
    api_key: str = API_KEY, version: str = VERSION
) -> AsyncIterator[FakeAnthropic]:
    """Serve the fake on 127.0.0.1 at a free port; `base_url` is set once it listens."""
    fake = FakeAnthropic(api_key=api_key, version=version)
    app = web.Application()
    app.router.add_post("/v1/messages", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )


def _invalid(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    tool_ids: set[str] = set()
    for i, turn in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.get("role") != expected:
            return f"messages.{i}: roles must alternate between user and assistant"
        for block in turn.get("content") or ():
            if block.get("type") == "tool_use":
                tool_ids.add(block["id"])
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in tool_ids:
                return f"messages.{i}: tool_result block(s) with unknown tool_use_id"
    return None


def _last_text(messages: list[dict[str, Any]]) -> str:
    for block in reversed(messages[-1]["content"]):
        if block["type"] == "text":
            return str(block["text"])
        if block["type"] == "tool_result":
            content = block.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def _until_stop(text: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
    """As Anthropic does: the text is cut before the first of the request's stop sequences,
    which is then named in the answer."""
    found = [(text.find(s), s) for s in body.get("stop_sequences") or () if s in text]
    if not found:
        return text, "end_turn", None
    at, sequence = min(found)
    return text[:at], "stop_sequence", sequence


def _reply(body: dict[str, Any]) -> dict[str, Any]:
    messages = body["messages"]
    stop_sequence: str | None = None
    text = _last_text(messages)
    answered = any(b["type"] == "tool_result" for b in messages[-1]["content"])
    content: list[dict[str, Any]]
    if body.get("tools") and not answered:
        tool = body["tools"][0]["name"]
        call = {"type": "tool_use", "id": f"toolu_fake{len(messages):04d}", "name": tool}
        content = [{**call, "input": {"text": text}}]
        stop_reason = "tool_use"
    else:
        reply, stop_reason, stop_sequence = _until_stop(f"echo: {text}", body)
        content = [{"type": "text", "text": reply}]
    words = sum(len(_last_text([m]).split()) for m in messages)
    return {
        "id": f"msg_fake{len(messages):04d}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": {"input_tokens": words, "output_tokens": len(json.dumps(content)) // 10},
    }


async def _stream(
    request: web.Request, message: dict[str, Any], trigger: str
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in _events(message, trigger):
        data = json.dumps(event)
        await resp.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
    await resp.write_eof()
    return resp


def _events(message: dict[str, Any], trigger: str) -> list[dict[str, Any]]:
    head = {**message, "content": [], "stop_reason": None}
    head["usage"] = {**message["usage"], "output_tokens": 1}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": head}, {"type": "ping"}]
    for index, block in enumerate(message["content"]):
        events.extend(_block_events(index, block))
    if trigger == CUT:
        return events[:4]
    if trigger == ERROR:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return [*events[:4], {"type": "error", "error": error}]
    events.append(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    start: dict[str, Any]
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
    else:
        start = {**block, "input": {}}
        arguments = json.dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(arguments)]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
