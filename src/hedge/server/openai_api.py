"""The OpenAI wire at the front door: parse and validate requests, render responses and SSE.

No business logic lives here: a handler parses, calls the gateway, and renders what it got.
Rendering is a set of pure functions so the exact bytes a client sees can be tested as data.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from hedge import types
from hedge.config import format_path
from hedge.errors import HedgeError, InvalidRequest
from hedge.gateway import Caller, Gateway
from hedge.policy import Provenance
from hedge.server.asgi import (
    JSON_HEADERS,
    PARSED_BODY,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    relay_events,
    send_bytes,
)
from hedge.trace import Trace
from hedge.types import ChatRequest, ChatResponse, Chunk, EmbeddingRequest, FieldError, Usage

M = TypeVar("M", bound=BaseModel)


def parse_chat_request(body: bytes, parsed: Any = None) -> ChatRequest:
    """Bytes -> ChatRequest, or an InvalidRequest that says what is wrong and where."""
    return parse_body(body, ChatRequest, parsed)


def parse_body(body: bytes, model: type[M], parsed: Any = None) -> M:
    """Bytes -> a validated request `model`, or an InvalidRequest that says what is wrong
    and where. `parsed`: the body already parsed as JSON (by the key guard), when it was."""
    data = parsed if parsed is not None else load_json(body)
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not {json_kind(data)}.", code="invalid_json"
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        message, param = describe_validation(e)
        raise InvalidRequest(message, param=param) from None


def load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(not_json(body, e), code="invalid_json") from None


def not_json(body: bytes, error: orjson.JSONDecodeError) -> str:
    if not body.strip():
        return "The request body is empty: send a JSON object."
    try:
        body.decode()
    except UnicodeDecodeError as u:
        # orjson blames this on "surrogates", which tells a client nothing.
        return (
            f"The request body is not valid UTF-8 (byte 0x{body[u.start]:02x} at offset "
            f"{u.start}). Encode the JSON as UTF-8."
        )
    return f"The request body is not valid JSON ({error}). Send a JSON object encoded as UTF-8."


_KINDS: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def json_kind(value: Any) -> str:
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


# pydantic puts the union member it tried into an error's location: 'str', 'list[...]',
# "literal['none',...]", 'function-after[...]', a model's class name, '[key]' for a dict key.
_TYPE_LABELS = {"str", "int", "float", "bool", "none", "[key]"} | {
    name
    for name, obj in vars(types).items()
    if isinstance(obj, type) and issubclass(obj, BaseModel)
}
_GENERIC_LABEL = re.compile(r"[\w-]+\[.*\]", re.DOTALL)


def _is_branch_label(part: str | int) -> bool:
    return isinstance(part, str) and (part in _TYPE_LABELS or bool(_GENERIC_LABEL.fullmatch(part)))


_REWORDED = {
    "missing": "this field is required",
    "extra_forbidden": "unknown field; remove it or check its spelling",
    "model_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
    "dict_type": "Input should be an object",
}
_SHOW_INPUT = {
    "literal_error",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "string_too_short",
}
_HINTS = {
    ("float_type", str): "Send the number without quotes.",
    ("int_type", str): "Send the number without quotes.",
    ("int_type", float): "Send a whole number, such as 16.",
    ("bool_type", str): "Send true or false, without quotes.",
}


def describe_validation(err: ValidationError) -> tuple[str, str | None]:
    """The first problem of a pydantic error, as a sentence and an OpenAI `param` path."""
    errors = err.errors(include_url=False)

    def union_head(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
        cut = next((i for i, p in enumerate(loc) if _is_branch_label(p)), len(loc))
        return tuple(loc[:cut])

    def reworded(e: Any) -> str:
        text = _REWORDED.get(e["type"]) or str(e["msg"]).removeprefix("Value error, ")
        return text.replace(" after validation", "")

    first = union_head(tuple(errors[0]["loc"]))
    group = [e for e in errors if union_head(tuple(e["loc"])) == first]
    # Within one union, the member that got furthest says the most; a type mismatch the least.
    group.sort(key=lambda e: (-len(e["loc"]), e["type"].endswith("_type")))
    best = group[0]
    kind = best["type"]
    loc = tuple(p for p in best["loc"] if not _is_branch_label(p))
    blamed = (best.get("ctx") or {}).get("error")
    if isinstance(blamed, FieldError):
        loc += tuple(blamed.path.split("."))
    msg = reworded(best)
    peers = [e for e in group if len(e["loc"]) == len(best["loc"]) and e["type"].endswith("_type")]
    if kind.endswith("_type") and len(peers) > 1:
        kinds = sorted({reworded(e).removeprefix("Input should be ") for e in peers})
        msg = "Input should be " + " or ".join(kinds)
    value = best.get("input")
    if kind.endswith("_type") or kind in _SHOW_INPUT:
        msg += f" (got {json_kind(value)}: {_short(value)})"
    hint = _HINTS.get((kind, type(value)))
    path = format_path(loc)
    text = f"Invalid request body: {msg}." if not loc else f"Invalid '{path}': {msg}."
    return (f"{text} {hint}" if hint else text), (path if loc else None)


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
                {
                    "id": t.id,
                    "type": "function",
                    "function": {"name": t.name, "arguments": t.arguments},
                }
                for t in c.tool_calls
            ]
        if c.reasoning is not None:
            message["reasoning_content"] = c.reasoning
        if c.refusal is not None:
            message["refusal"] = c.refusal
        choices.append(
            {
                "index": c.index,
                "message": message,
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
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

    def start(self) -> bytes:
        return b""

    def finish(self) -> bytes:
        return DONE

    def error(self, error: HedgeError) -> bytes:
        return error_event(error)

    def feed(self, chunk: Chunk) -> bytes | None:
        return self.event(chunk)

    def event(self, chunk: Chunk) -> bytes | None:
        """The SSE bytes for one chunk: its delta, then its usage (when asked for), or None."""
        delta: dict[str, Any] = {}
        if chunk.content is not None:
            delta["content"] = chunk.content
        if chunk.reasoning is not None:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.tool_calls:
            delta["tool_calls"] = [_tool_delta(t) for t in chunk.tool_calls]
        out = b""
        if delta or chunk.finish_reason is not None or chunk.role is not None:
            if chunk.index not in self._started:
                # OpenAI opens every choice with the role; some clients rely on it.
                self._started.add(chunk.index)
                delta = {"role": "assistant", **delta}
            if delta or chunk.finish_reason is not None:
                choice = {
                    "index": chunk.index,
                    "delta": delta,
                    "finish_reason": chunk.finish_reason,
                    "logprobs": None,
                }
                payload: dict[str, Any] = {**self._head, "choices": [choice]}
                if self._include_usage:
                    payload["usage"] = None
                out += _sse(payload)
        if chunk.usage is not None and self._include_usage:
            out += _sse({**self._head, "choices": [], "usage": render_usage(chunk.usage)})
        return out or None


def _sse(payload: dict[str, Any]) -> bytes:
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
    return _sse(error.body())


DONE = b"data: [DONE]\n\n"


# ---- handlers -----------------------------------------------------------------------------


def trace_headers(trace: Trace) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-request-id", trace.request_id.encode()),
        (b"x-hedge-deployment", (trace.answered_by or "").encode()),
        (b"x-hedge-attempts", str(len(trace.attempts) or 1).encode()),
        (b"x-hedge-overhead-ms", f"{trace.overhead_ms():.3f}".encode()),
    ]
    if trace.cache is not None:
        headers.append((b"x-hedge-cache", trace.cache.encode()))
    if trace.similarity is not None:
        headers.append((b"x-hedge-cache-similarity", f"{trace.similarity:.4f}".encode()))
    if trace.stage is not None:
        headers.append((b"x-hedge-stage", str(trace.stage).encode()))
        verdict = {True: b"accepted", False: b"rejected", None: b"unvalidated"}[trace.accepted]
        headers.append((b"x-hedge-verdict", verdict))
        if trace.rejections:
            headers.append((b"x-hedge-rejections", header_text(" | ".join(trace.rejections))))
    if trace.plan is not None:
        headers.append((b"x-hedge-policies", ",".join(trace.plan.policies).encode()))
        refused = sorted({r.deployment for r in trace.plan.refusals})
        headers.append((b"x-hedge-refused", ",".join(refused).encode()))
    return headers


def header_text(text: str, limit: int = 1000) -> bytes:
    """Free text made safe for a header value: one line, ASCII, bounded."""
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[: limit - 3] + "..."
    return flat.encode("ascii", "replace")


def provenance_headers(p: Provenance) -> list[tuple[bytes, bytes]]:
    """What a client (and its auditors) may want to know about the deployment that answered."""
    facts = {
        b"x-hedge-model": p.model,
        b"x-hedge-model-version": p.model_version,
        b"x-hedge-licence": p.licence,
        b"x-hedge-origin": p.origin,
        b"x-hedge-hosting": p.hosting,
        b"x-hedge-operator": p.operator,
        b"x-hedge-operator-jurisdiction": p.operator_jurisdiction,
    }
    return [(k, (v or "unknown").encode()) for k, v in facts.items()]


def caller_of(scope: Scope, request: ChatRequest | EmbeddingRequest) -> Caller:
    """The narrowing a request asks for, in its headers or its body's `hedge` field: more
    policies (both sources add up) and a data class (they must agree)."""
    raw = (header(scope, b"x-hedge-policy") or b"").decode("latin-1")
    policies = [p.strip() for p in raw.split(",") if p.strip()]
    data_class = (header(scope, b"x-hedge-data-class") or b"").decode("latin-1").strip() or None
    options = request.hedge
    if options is not None:
        policies += options.policies
        if options.data_class is not None:
            if data_class is not None and data_class != options.data_class:
                raise InvalidRequest(
                    f"The X-Hedge-Data-Class header says '{data_class}' and the body's "
                    f"hedge.data_class says '{options.data_class}': send one, or the same.",
                    param="hedge.data_class",
                )
            data_class = options.data_class
    control = header(scope, b"cache-control")
    key = scope.get("hedge.key")  # set by server.auth: the API key's record, when keys exist
    if key is not None:
        policies += key.policies  # a key's policies only narrow, like the request's own
    return Caller(
        policies=tuple(dict.fromkeys(policies)),
        data_class=data_class,
        cache_control=control.decode("latin-1") if control else None,
        key=None if key is None else key.id,
    )


class ChatCompletions:
    """POST /v1/chat/completions."""

    def __init__(self, gateway: Gateway, max_body: int, *, worker: bool = False) -> None:
        self.gateway = gateway
        self.max_body = max_body
        # Constant per deployment (and per process): encoded once, not per response.
        own = [(b"x-hedge-worker", str(os.getpid()).encode())] if worker else []
        self.provenance = {
            name: [*provenance_headers(p), *own] for name, p in gateway.provenance.items()
        }
        self.provenance[""] = own

    def headers(self, trace: Trace) -> list[tuple[bytes, bytes]]:
        return [*trace_headers(trace), *self.provenance.get(trace.answered_by or "", ())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Trace:
        body = await read_body(scope, receive, self.max_body)
        request = parse_chat_request(body, scope.get(PARSED_BODY))
        trace = Trace(route=request.model)
        caller = caller_of(scope, request)
        try:
            if not request.stream:
                response = await self.gateway.chat(request, trace, caller)
                payload = orjson.dumps(render_completion(response, request.model, trace.request_id))
                # Recorded before the answer goes out, so feedback sent right after finds it.
                self.gateway.record(trace, 200)
                await send_bytes(send, 200, payload, [*JSON_HEADERS, *self.headers(trace)])
                return trace
            chunks = await self.gateway.stream(request, trace, caller)
        except HedgeError as e:
            e.headers.setdefault("x-request-id", trace.request_id)
            if trace.attempts:
                e.headers.setdefault("x-hedge-attempts", str(len(trace.attempts)))
            self.gateway.record(trace, e.status, e.code)
            raise
        await relay_events(
            chunks,
            ChunkRenderer(request.model, trace.request_id, request.wants_usage_in_stream),
            self.headers(trace),
            receive,
            send,
            lambda status: self.gateway.record(trace, status),
        )
        return trace
