"""The OpenAI wire at the front door: parse and validate requests, render responses and SSE.

No business logic lives here: a handler parses, calls the gateway, and renders what it got.
Rendering is a set of pure functions so the exact bytes a client sees can be tested as data.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError

from hedge.config import format_path
from hedge.errors import HedgeError, InvalidRequest
from hedge.gateway import Gateway, Trace
from hedge.server.asgi import (
    JSON_HEADERS,
    SSE_HEADERS,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
)
from hedge.types import ChatRequest, ChatResponse, Chunk, Usage


def parse_chat_request(body: bytes) -> ChatRequest:
    """Bytes -> ChatRequest, or an InvalidRequest that says what is wrong and where."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if not body.strip():
            raise InvalidRequest("The request body is empty: send a JSON object.") from None
        raise InvalidRequest(
            f"The request body is not valid JSON ({e}). Send a JSON object encoded as UTF-8.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not {_json_kind(data)}.", code="invalid_json"
        )
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        message, param = describe_validation(e)
        raise InvalidRequest(message, param=param) from None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _is_branch_label(part: str | int) -> bool:
    # pydantic puts the union member it tried into the error location ('str',
    # 'list[...]', 'ToolChoiceFunction', "literal['none',...]"); field names are snake_case.
    return isinstance(part, str) and (
        not part.replace("_", "").isalnum() or part[0].isupper() or part in _TYPE_LABELS
    )


_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "none"}


def describe_validation(err: ValidationError) -> tuple[str, str | None]:
    """The first problem of a pydantic error, as a sentence and an OpenAI `param` path."""
    errors = err.errors(include_url=False)

    def field_path(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
        return tuple(p for p in loc if not _is_branch_label(p))

    def union_head(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
        cut = next((i for i, p in enumerate(loc) if _is_branch_label(p)), len(loc))
        return tuple(loc[:cut])

    first = union_head(tuple(errors[0]["loc"]))
    group = [e for e in errors if union_head(tuple(e["loc"])) == first]
    # Within one union, the member that got furthest says the most; a type mismatch the least.
    group.sort(key=lambda e: (-len(e["loc"]), e["type"].endswith("_type")))
    best = group[0]
    path = format_path(field_path(tuple(best["loc"])))
    msg = str(best["msg"]).removeprefix("Value error, ")
    if best["type"] == "missing":
        msg = "this field is required"
    elif best["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif best["type"].endswith("_type") and len(group) > 1:
        kinds = sorted({str(e["msg"]).removeprefix("Input should be ") for e in group})
        msg = "Input should be " + " or ".join(kinds)
    if best["type"].endswith("_type") or best["type"] == "literal_error":
        msg += f" (got {_json_kind(best.get('input'))}: {_short(best.get('input'))})"
    if path == "<top level>":
        return (f"Invalid request body: {msg}.", None)
    return (f"Invalid '{path}': {msg}.", path)


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode() if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


# ---- rendering (pure) ---------------------------------------------------------------------


def render_usage(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def render_completion(response: ChatResponse, model: str, request_id: str) -> dict[str, Any]:
    choices = []
    for c in response.choices:
        message: dict[str, Any] = {"role": "assistant", "content": c.content}
        if c.tool_calls:
            message["tool_calls"] = [
                {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
                for t in c.tool_calls
            ]
        if c.reasoning is not None:
            message["reasoning_content"] = c.reasoning
        if c.refusal is not None:
            message["refusal"] = c.refusal
        choices.append(
            {"index": c.index, "message": message, "finish_reason": c.finish_reason, "logprobs": None}
        )
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": response.created or int(time.time()),
        "model": model,
        "choices": choices,
        "usage": render_usage(response.usage),
        "system_fingerprint": response.system_fingerprint,
    }


class ChunkRenderer:
    """Renders one stream's chunks as SSE events; the envelope is built once per stream."""

    def __init__(self, model: str, request_id: str, include_usage: bool) -> None:
        self._head = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self._include_usage = include_usage
        self._started: set[int] = set()

    def event(self, chunk: Chunk) -> bytes | None:
        if chunk.usage is not None and chunk.content is None and chunk.finish_reason is None:
            if not self._include_usage:
                return None
            payload: dict[str, Any] = {
                **self._head, "choices": [], "usage": render_usage(chunk.usage)
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"
        delta: dict[str, Any] = {}
        if chunk.index not in self._started:
            # OpenAI opens every choice with the role; some clients rely on it.
            self._started.add(chunk.index)
            delta["role"] = "assistant"
        if chunk.content is not None:
            delta["content"] = chunk.content
        if chunk.reasoning is not None:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.tool_calls:
            delta["tool_calls"] = [_tool_delta(t) for t in chunk.tool_calls]
        if not delta and chunk.finish_reason is None:
            return None
        choice = {"index": chunk.index, "delta": delta, "finish_reason": chunk.finish_reason, "logprobs": None}
        payload = {**self._head, "choices": [choice]}
        if self._include_usage:
            payload["usage"] = None
        return b"data: " + orjson.dumps(payload) + b"\n\n"


def _tool_delta(t: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": t.index}
    if t.id is not None:
        out["id"] = t.id
        out["type"] = "function"
    fn: dict[str, Any] = {}
    if t.name is not None:
        fn["name"] = t.name
    if t.arguments is not None:
        fn["arguments"] = t.arguments
    if fn:
        out["function"] = fn
    return out


def error_event(error: HedgeError) -> bytes:
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


DONE = b"data: [DONE]\n\n"


# ---- handlers -----------------------------------------------------------------------------


def trace_headers(trace: Trace) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", trace.request_id.encode()),
        (b"x-hedge-deployment", (trace.answered_by or "").encode()),
        (b"x-hedge-attempts", str(len(trace.attempts) or 1).encode()),
        (b"x-hedge-overhead-ms", f"{trace.overhead_ms():.3f}".encode()),
    ]


async def chat_completions(
    gateway: Gateway, scope: Scope, receive: Receive, send: Send, max_body: int
) -> Trace:
    body = await read_body(scope, receive, max_body)
    request = parse_chat_request(body)
    trace = Trace(route=request.model)
    try:
        if not request.stream:
            response = await gateway.chat(request, trace)
            payload = orjson.dumps(render_completion(response, request.model, trace.request_id))
            await send_bytes(send, 200, payload, [*JSON_HEADERS, *trace_headers(trace)])
            return trace
        chunks = await gateway.stream(request, trace)
    except HedgeError as e:
        e.headers.setdefault("x-request-id", trace.request_id)
        if trace.attempts:
            e.headers.setdefault("x-hedge-attempts", str(len(trace.attempts)))
        raise
    await _stream_out(chunks, request, trace, receive, send)
    return trace


async def _stream_out(
    chunks: AsyncIterator[Chunk], request: ChatRequest, trace: Trace, receive: Receive, send: Send
) -> None:
    renderer = ChunkRenderer(request.model, trace.request_id, request.wants_usage_in_stream)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *trace_headers(trace)]}
    )
    watcher = asyncio.create_task(_wait_disconnect(receive))
    body = {"type": "http.response.body", "body": b"", "more_body": True}
    try:
        async for chunk in chunks:
            if watcher.done():
                break  # the client left: stop pulling, which stops the upstream
            event = renderer.event(chunk)
            if event is not None:
                body["body"] = event
                await send(body)
        else:
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
            return
    except HedgeError as e:
        # Bytes are already out: the client must see a failure, never a short "complete" answer.
        await send({"type": "http.response.body", "body": error_event(e), "more_body": False})
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
