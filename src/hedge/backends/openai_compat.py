"""Any OpenAI-compatible server: vLLM, SGLang, Ollama, llama.cpp, TensorRT-LLM, and the hosted
APIs that copy OpenAI's wire (DeepSeek, Moonshot, Z.ai, DashScope, MiniMax, Mistral, OpenAI).

Pure converters `to_wire` / `from_wire` / `chunks_from_wire`, then one short sender. Differences
between servers are data (`providers.yaml`), not branches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import orjson

from hedge import vectors
from hedge.backends.base import DeploymentStatus
from hedge.backends.http import HttpPool, JsonEndpoint
from hedge.backends.quirks import Quirks, quirks_for, reasoning_fields
from hedge.config import OpenAICompatDeployment, SamplingDefaults
from hedge.errors import UpstreamError
from hedge.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "eos": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
}


def to_wire(
    request: ChatRequest,
    upstream_model: str,
    quirks: Quirks,
    defaults: SamplingDefaults,
) -> dict[str, Any]:
    body = request.model_dump(exclude_none=True, by_alias=True, exclude={"hedge"})
    body["model"] = upstream_model
    limit = request.token_limit or defaults.max_tokens
    body.pop("max_tokens", None)
    body.pop("max_completion_tokens", None)
    if limit is not None:
        body[quirks.max_tokens_field] = limit
    if request.temperature is None and defaults.temperature is not None:
        body["temperature"] = defaults.temperature
    if request.top_p is None and defaults.top_p is not None:
        body["top_p"] = defaults.top_p
    effort = body.pop("reasoning_effort", None)
    if effort is not None:
        body.update(reasoning_fields(quirks.reasoning, effort))
    if quirks.prefill_fields and request.messages[-1].role == "assistant":
        body.update(quirks.prefill_fields)
    if request.stream:
        if quirks.stream_usage == "stream_options":
            # Always ask for usage: accounting needs it even when the client did not.
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
    return body


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        # DeepSeek reports cache hits as prompt_cache_hit_tokens rather than in the details.
        cached_tokens=int(
            prompt_details.get("cached_tokens") or raw.get("prompt_cache_hit_tokens") or 0
        ),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _reasoning(obj: dict[str, Any], quirks: Quirks) -> str | None:
    for name in quirks.reasoning_fields:
        value = obj.get(name)
        if isinstance(value, str):
            return value
    return None


def _finish(value: Any) -> FinishReason | None:
    return _FINISH.get(value, "stop") if isinstance(value, str) else None


def from_wire(payload: Any, quirks: Quirks, deployment: str) -> ChatResponse:
    """A non-streamed completion payload -> ChatResponse. A malformed payload is the
    upstream's failure, not an answer."""
    if isinstance(payload, dict) and "error" in payload and "choices" not in payload:
        # Some servers (llama.cpp, Ollama, proxies) answer 200 with an error body.
        raise UpstreamError(
            f"deployment '{deployment}' answered with an error: {str(payload['error'])[:500]}",
            retryable=True,
        )
    try:
        choices = []
        for i, raw in enumerate(payload["choices"]):
            msg = raw.get("message") or {}
            calls = tuple(
                ToolCall(
                    id=str(c.get("id") or f"call_{i}_{j}"),
                    name=str(c["function"]["name"]),
                    arguments=str(c["function"].get("arguments") or ""),
                )
                for j, c in enumerate(msg.get("tool_calls") or ())
            )
            content = msg.get("content")
            choices.append(
                Choice(
                    index=int(raw.get("index", i)),
                    content=content if isinstance(content, str) else None,
                    finish_reason=_finish(raw.get("finish_reason")) or "stop",
                    tool_calls=calls,
                    reasoning=_reasoning(msg, quirks),
                    refusal=msg.get("refusal") if isinstance(msg.get("refusal"), str) else None,
                )
            )
        if not choices:
            raise ValueError("no choices")
        return ChatResponse(
            choices=tuple(choices),
            usage=_usage(payload.get("usage")),
            upstream_model=str(payload.get("model") or ""),
            id=str(payload.get("id") or ""),
            created=int(payload.get("created") or 0),
            system_fingerprint=payload.get("system_fingerprint"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UpstreamError(
            f"deployment '{deployment}' sent a malformed completion ({type(e).__name__}: {e})",
            retryable=True,
        ) from None


def chunks_from_wire(payload: Any, quirks: Quirks) -> Iterator[Chunk]:
    """One streamed `chat.completion.chunk` -> Chunks (one per choice delta, one for usage).
    Raises KeyError/TypeError/ValueError on a malformed event."""
    for raw in payload["choices"]:
        delta = raw.get("delta") or {}
        calls = tuple(
            ToolCallDelta(
                index=int(c.get("index", 0)),
                id=c.get("id"),
                name=(c.get("function") or {}).get("name"),
                arguments=(c.get("function") or {}).get("arguments"),
            )
            for c in delta.get("tool_calls") or ()
        )
        content = delta.get("content")
        yield Chunk(
            index=int(raw.get("index", 0)),
            content=content if isinstance(content, str) else None,
            reasoning=_reasoning(delta, quirks),
            tool_calls=calls,
            finish_reason=_finish(raw.get("finish_reason")),
            role="assistant" if delta.get("role") == "assistant" else None,
        )
    if payload.get("usage"):
        yield Chunk(usage=_usage(payload["usage"]))


def embeddings_to_wire(request: EmbeddingRequest, upstream_model: str) -> dict[str, Any]:
    """The upstream's `/embeddings` body. `encoding_format` is left out, so every server
    answers in its default (floats); `from_wire` reads base64 too."""
    body = request.model_dump(exclude_none=True, exclude={"hedge", "encoding_format"})
    body["model"] = upstream_model
    return body


def embeddings_from_wire(
    payload: Any, request: EmbeddingRequest, deployment: str
) -> EmbeddingResponse:
    """An `/embeddings` answer -> EmbeddingResponse, checked against the request: one vector
    per input, all of one size, and of the size asked for. Anything else is the upstream's
    failure, never an answer."""

    def malformed(why: str) -> UpstreamError:
        return UpstreamError(
            f"deployment '{deployment}' sent a malformed embeddings answer ({why})",
            retryable=True,
        )

    if isinstance(payload, dict) and "error" in payload and "data" not in payload:
        raise UpstreamError(
            f"deployment '{deployment}' answered with an error: {str(payload['error'])[:500]}",
            retryable=True,
        )
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise malformed("no 'data' array")
    by_index: dict[int, bytes] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise malformed(f"data[{i}] is not an object")
        index = item.get("index", i)
        raw = item.get("embedding")
        try:
            if isinstance(raw, str):
                vector = vectors.from_base64(raw)
            elif isinstance(raw, list) and all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in raw
            ):
                vector = vectors.pack(raw)
            else:
                raise ValueError("not an array of numbers or a base64 string")
        except (ValueError, OverflowError) as e:
            raise malformed(f"data[{i}].embedding: {e}") from None
        if not isinstance(index, int) or isinstance(index, bool) or index in by_index:
            raise malformed(f"data[{i}].index {index!r} is not a new integer")
        by_index[index] = vector
    if sorted(by_index) != list(range(request.count)):
        raise malformed(
            f"{len(by_index)} vectors with indexes {sorted(by_index)[:8]} for "
            f"{request.count} inputs"
        )
    ordered = tuple(by_index[i] for i in range(request.count))
    sizes = {vectors.dimensions(v) for v in ordered}
    if len(sizes) != 1 or 0 in sizes:
        raise malformed(f"vectors of sizes {sorted(sizes)}")
    if request.dimensions is not None and sizes != {request.dimensions}:
        raise UpstreamError(
            f"deployment '{deployment}' answered {sizes.pop()}-dimensional vectors where "
            f"dimensions={request.dimensions} was asked",
            retryable=False,
        )
    usage = payload.get("usage") if isinstance(payload, dict) else None
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return EmbeddingResponse(
        vectors=ordered,
        usage=Usage(prompt_tokens=prompt if isinstance(prompt, int) else 0),
        upstream_model=str(payload.get("model") or ""),
    )


class ToolCallHeaders:
    """Drops repeated tool-call headers from a stream.

    OpenAI sends a tool call's `id` and `name` once, in its first delta, and clients concatenate
    every fragment they get. llama-cpp-python's server repeats both on every arguments delta,
    which clients would glue into `get_weatherget_weather...`; only the first mention goes on.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int], str] = {}
        self._names: dict[tuple[int, int], str] = {}

    def __call__(self, chunk: Chunk) -> Chunk:
        if not chunk.tool_calls:
            return chunk
        calls = tuple(self._one(chunk.index, d) for d in chunk.tool_calls)
        return chunk if calls == chunk.tool_calls else dataclasses.replace(chunk, tool_calls=calls)

    def _one(self, choice: int, delta: ToolCallDelta) -> ToolCallDelta:
        key = (choice, delta.index)
        call_id, name = delta.id, delta.name
        if call_id is not None:
            if self._ids.get(key) == call_id:
                call_id = None
            else:
                self._ids.setdefault(key, call_id)
        if name is not None:
            if self._names.get(key) == name:
                name = None
            else:
                self._names.setdefault(key, name)
        if call_id == delta.id and name == delta.name:
            return delta
        return dataclasses.replace(delta, id=call_id, name=name)


class OpenAICompatBackend:
    def __init__(
        self, name: str, deployment: OpenAICompatDeployment, api_key: str | None, pool: HttpPool
    ) -> None:
        self.name = name
        self.deployment = deployment
        self.quirks = quirks_for(deployment.provider, deployment.quirks)
        headers = {"Content-Type": "application/json", **deployment.headers}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._endpoint = JsonEndpoint(
            pool,
            name,
            f"{deployment.base_url}/chat/completions",
            headers,
            deployment.timeouts,
            None if api_key else deployment.api_key_env,
        )
        self._embeddings = JsonEndpoint(
            pool,
            name,
            f"{deployment.base_url}/embeddings",
            headers,
            deployment.timeouts,
            None if api_key else deployment.api_key_env,
        )
        self.accepts_prefill = self.quirks.assistant_prefill

    def unsupported(self, request: ChatRequest) -> str | None:
        if request.choices_wanted > 1 and not self.quirks.supports_n:
            return f"n > 1 is not supported by provider '{self.deployment.provider}'"
        if request.tools and not self.quirks.supports_tools:
            return f"tools are not supported by provider '{self.deployment.provider}'"
        return None

    def embedding_unsupported(self, request: EmbeddingRequest) -> str | None:
        return None  # the upstream's own /embeddings says what it cannot do

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        body = embeddings_to_wire(request, self.deployment.upstream_model)
        return embeddings_from_wire(await self._embeddings.answer(body), request, self.name)

    def status(self) -> DeploymentStatus:
        return self._endpoint.status()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        return to_wire(
            request, self.deployment.upstream_model, self.quirks, self.deployment.defaults
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return from_wire(await self._endpoint.answer(self._body(request)), self.quirks, self.name)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        finished: set[int] = set()
        headers = ToolCallHeaders()
        async with aclosing(self._endpoint.events(self._body(request))) as events:
            async for data in events:
                if data == b"[DONE]":
                    break
                for chunk in self._parse_event(data):
                    if chunk.finish_reason is not None:
                        finished.add(chunk.index)
                    yield headers(chunk)
        # A missing [DONE] is fine; a stream that never said how it finished is truncated.
        if len(finished) < request.choices_wanted:
            raise UpstreamError(
                f"deployment '{self.name}' ended its stream before the answer was complete",
                retryable=True,
            )

    def _parse_event(self, data: bytes) -> list[Chunk]:
        try:
            payload = orjson.loads(data)
            if isinstance(payload, dict) and "error" in payload:
                raise UpstreamError(
                    f"deployment '{self.name}' reported an error mid-stream: "
                    f"{str(payload['error'])[:500]}",
                    retryable=True,
                )
            return list(chunks_from_wire(payload, self.quirks))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise UpstreamError(
                f"deployment '{self.name}' sent a malformed stream event", retryable=True
            ) from None
