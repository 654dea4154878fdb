"""What the cache keeps: an answer (`CachedAnswer`, which replays as a whole response or as a
stream with the same content) or an embeddings answer (`CachedEmbedding`), their one
serialised form, checked field by field on the way back (`decode_entry`), and the recorder that
rebuilds an answer from the stream it was relayed as."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, get_args

import orjson

from hedge import vectors
from hedge.types import (
    ChatResponse,
    Choice,
    Chunk,
    EmbeddingResponse,
    FinishReason,
    ToolCall,
    ToolCallDelta,
    Usage,
)

# Bumped whenever the stored layout changes: an entry written by another version is a miss
# (and is removed), never misread.
SCHEMA_VERSION = 1

_FINISH_REASONS: frozenset[str] = frozenset(get_args(FinishReason))


class CorruptEntry(ValueError):
    """Stored bytes that are not a cache entry of this schema version."""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A whole answer as it is stored: the response's choices and usage, which upstream model
    and which deployment produced it, and when it was stored (wall clock, seconds)."""

    choices: tuple[Choice, ...]
    usage: Usage
    upstream_model: str
    deployment: str
    created: int = 0
    system_fingerprint: str | None = None
    stored_at: float = 0.0

    @classmethod
    def from_response(
        cls, response: ChatResponse, deployment: str, *, stored_at: float | None = None
    ) -> CachedAnswer:
        return cls(
            choices=response.choices,
            usage=response.usage,
            upstream_model=response.upstream_model,
            deployment=deployment,
            created=response.created,
            system_fingerprint=response.system_fingerprint,
            stored_at=time.time() if stored_at is None else stored_at,
        )

    def to_response(self, response_id: str = "") -> ChatResponse:
        return ChatResponse(
            choices=self.choices,
            usage=self.usage,
            upstream_model=self.upstream_model,
            id=response_id,
            created=self.created,
            system_fingerprint=self.system_fingerprint,
        )

    def to_chunks(self, piece_chars: int | None = None) -> list[Chunk]:
        """The chunks a stream of this answer carries: per choice, the role with the content
        (in pieces of at most `piece_chars` characters when given), reasoning and tool calls,
        then the finish reason; the usage last. Concatenating the content of the chunks of a
        choice gives its cached content exactly."""
        out: list[Chunk] = []
        for choice in self.choices:
            pieces: list[str | None] = [choice.content]
            text = choice.content
            if piece_chars is not None and text and len(text) > piece_chars:
                pieces = [text[i : i + piece_chars] for i in range(0, len(text), piece_chars)]
            out.append(
                Chunk(
                    index=choice.index,
                    content=pieces[0],
                    reasoning=choice.reasoning,
                    tool_calls=tuple(
                        ToolCallDelta(i, t.id, t.name, t.arguments)
                        for i, t in enumerate(choice.tool_calls)
                    ),
                    role="assistant",
                )
            )
            out += [Chunk(index=choice.index, content=p) for p in pieces[1:]]
            out.append(
                Chunk(
                    index=choice.index,
                    finish_reason=choice.finish_reason,
                    stop_sequence=choice.stop_sequence,
                )
            )
        out.append(Chunk(usage=self.usage))
        return out

    async def stream(self, piece_chars: int | None = None) -> AsyncIterator[Chunk]:
        """`to_chunks` as the async iterator `Gateway.stream` returns."""
        for chunk in self.to_chunks(piece_chars):
            yield chunk

    # ---- serialisation ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        u = self.usage
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "model": self.upstream_model,
                "deployment": self.deployment,
                "created": self.created,
                "fingerprint": self.system_fingerprint,
                "stored_at": self.stored_at,
                "usage": [
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.cached_tokens,
                    u.reasoning_tokens,
                ],
                "choices": [
                    {
                        "i": c.index,
                        "content": c.content,
                        "finish": c.finish_reason,
                        "tools": [[t.id, t.name, t.arguments] for t in c.tool_calls],
                        "reasoning": c.reasoning,
                        "refusal": c.refusal,
                        "stop": c.stop_sequence,
                    }
                    for c in self.choices
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedAnswer:
        """Decode what `to_bytes` wrote, checking every field: anything else (garbage, another
        schema version, truncated JSON, wrong types, an embedding) raises `CorruptEntry`."""
        entry = decode_entry(data)
        if not isinstance(entry, CachedAnswer):
            raise CorruptEntry("an embedding where an answer was expected")
        return entry

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> CachedAnswer:
        usage = _ints(raw["usage"], 4)
        choices = tuple(_choice(c) for c in _list(raw["choices"]))
        if not choices:
            raise TypeError("no choices")
        return cls(
            choices=choices,
            usage=Usage(*usage),
            upstream_model=_str(raw["model"]),
            deployment=_str(raw["deployment"]),
            created=_ints([raw["created"]], 1)[0],
            system_fingerprint=_opt_str(raw["fingerprint"]),
            stored_at=_number(raw["stored_at"]),
        )


@dataclass(frozen=True, slots=True)
class CachedEmbedding:
    """An embeddings answer as it is stored: one float32 vector per input, in order."""

    vectors: tuple[bytes, ...]
    prompt_tokens: int
    upstream_model: str
    deployment: str
    stored_at: float = 0.0

    @classmethod
    def from_response(cls, response: EmbeddingResponse, deployment: str) -> CachedEmbedding:
        return cls(
            vectors=response.vectors,
            prompt_tokens=response.usage.prompt_tokens,
            upstream_model=response.upstream_model,
            deployment=deployment,
            stored_at=time.time(),
        )

    def to_response(self) -> EmbeddingResponse:
        return EmbeddingResponse(
            vectors=self.vectors,
            usage=Usage(prompt_tokens=self.prompt_tokens),
            upstream_model=self.upstream_model,
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "kind": "embedding",
                "model": self.upstream_model,
                "deployment": self.deployment,
                "stored_at": self.stored_at,
                "tokens": self.prompt_tokens,
                "vectors": [vectors.to_base64(v) for v in self.vectors],
            }
        )

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> CachedEmbedding:
        try:
            found = tuple(vectors.from_base64(_str(v)) for v in _list(raw["vectors"]))
        except ValueError as e:
            raise TypeError(f"a vector is damaged: {e}") from None
        if not found:
            raise TypeError("no vectors")
        return cls(
            vectors=found,
            prompt_tokens=_ints([raw["tokens"]], 1)[0],
            upstream_model=_str(raw["model"]),
            deployment=_str(raw["deployment"]),
            stored_at=_number(raw["stored_at"]),
        )


CacheEntry = CachedAnswer | CachedEmbedding


def decode_entry(data: bytes) -> CacheEntry:
    """Stored bytes -> the entry they hold, checking every field: anything else (garbage,
    another schema version, truncated JSON, wrong types) raises `CorruptEntry`."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CorruptEntry(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CorruptEntry("not an object")
    if raw.get("v") != SCHEMA_VERSION or type(raw.get("v")) is not int:
        raise CorruptEntry(f"schema version {raw.get('v')!r}, expected {SCHEMA_VERSION}")
    kind = raw.get("kind", "chat")
    try:
        if kind == "embedding":
            return CachedEmbedding._from_raw(raw)
        if kind == "chat":
            return CachedAnswer._from_raw(raw)
    except (KeyError, TypeError) as e:
        raise CorruptEntry(f"wrong shape: {e!r}") from None
    raise CorruptEntry(f"unknown entry kind {kind!r}")


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list, got {type(v).__name__}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _number(v: Any) -> float:
    if type(v) not in (int, float):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return float(v)


def _ints(v: Any, n: int) -> list[int]:
    items = _list(v)
    # type() rather than isinstance: a JSON true is no token count.
    if len(items) != n or any(type(x) is not int or x < 0 for x in items):
        raise TypeError(f"expected {n} non-negative integers")
    return items


def _choice(c: Any) -> Choice:
    if not isinstance(c, dict):
        raise TypeError("a choice must be an object")
    finish = c["finish"]
    if finish is not None and finish not in _FINISH_REASONS:
        raise TypeError(f"unknown finish reason {finish!r}")
    tools = []
    for t in _list(c["tools"]):
        if not isinstance(t, list) or len(t) != 3:
            raise TypeError("a tool call must be [id, name, arguments]")
        tools.append(ToolCall(_str(t[0]), _str(t[1]), _str(t[2])))
    return Choice(
        index=_ints([c["i"]], 1)[0],
        content=_opt_str(c["content"]),
        finish_reason=finish,
        tool_calls=tuple(tools),
        reasoning=_opt_str(c["reasoning"]),
        refusal=_opt_str(c["refusal"]),
        stop_sequence=_opt_str(c.get("stop")),
    )


class StreamRecorder:
    """Rebuilds the whole answer from the chunks of a stream as they pass, so a streamed miss
    can be stored: per choice the content and reasoning concatenated, tool calls assembled
    from their deltas (id and name as they come, arguments appended), the finish reason; and
    the usage. `answer()` is None until every choice seen has finished."""

    def __init__(self) -> None:
        self._content: dict[int, list[str]] = {}
        self._reasoning: dict[int, list[str]] = {}
        self._tools: dict[int, dict[int, list[str | None]]] = {}
        self._finish: dict[int, FinishReason | None] = {}
        self._stop_sequence: dict[int, str] = {}
        self._usage: Usage | None = None

    def add(self, chunk: Chunk) -> None:
        if chunk.usage is not None:
            self._usage = chunk.usage
        has_delta = (
            chunk.content is not None
            or chunk.reasoning is not None
            or bool(chunk.tool_calls)
            or chunk.finish_reason is not None
            or chunk.role is not None
        )
        if not has_delta:
            return  # a usage-only chunk belongs to no choice
        i = chunk.index
        self._finish.setdefault(i, None)
        if chunk.content is not None:
            self._content.setdefault(i, []).append(chunk.content)
        if chunk.reasoning is not None:
            self._reasoning.setdefault(i, []).append(chunk.reasoning)
        for delta in chunk.tool_calls:
            call = self._tools.setdefault(i, {}).setdefault(delta.index, [None, None, ""])
            if delta.id is not None:
                call[0] = delta.id
            if delta.name is not None:
                call[1] = delta.name
            if delta.arguments is not None:
                call[2] = (call[2] or "") + delta.arguments
        if chunk.finish_reason is not None:
            self._finish[i] = chunk.finish_reason
        if chunk.stop_sequence is not None:
            self._stop_sequence[i] = chunk.stop_sequence

    def answer(self, *, upstream_model: str = "", deployment: str = "") -> CachedAnswer | None:
        if not self._finish or any(f is None for f in self._finish.values()):
            return None
        choices = []
        for i in sorted(self._finish):
            calls = []
            for _, (call_id, name, arguments) in sorted(self._tools.get(i, {}).items()):
                if call_id is None or name is None:
                    return None  # a tool call the stream never named: not worth keeping
                calls.append(ToolCall(call_id, name, arguments or ""))
            content = self._content.get(i)
            reasoning = self._reasoning.get(i)
            choices.append(
                Choice(
                    index=i,
                    content=None if content is None else "".join(content),
                    finish_reason=self._finish[i],
                    tool_calls=tuple(calls),
                    reasoning=None if reasoning is None else "".join(reasoning),
                    stop_sequence=self._stop_sequence.get(i),
                )
            )
        return CachedAnswer(
            choices=tuple(choices),
            usage=self._usage or Usage(),
            upstream_model=upstream_model,
            deployment=deployment,
            stored_at=time.time(),
        )


async def record_stream(
    chunks: AsyncIterator[Chunk], on_complete: Callable[[StreamRecorder], None]
) -> AsyncIterator[Chunk]:
    """Pass `chunks` through unchanged and, only if the stream ends normally, hand the
    recorder of everything that passed to `on_complete` (which stores it, typically as a
    background task so the end of the stream is not delayed). A stream that fails or that the
    client leaves is never recorded. Closing this iterator closes `chunks`, so the upstream
    stops as it would without the cache."""
    recorder = StreamRecorder()
    try:
        async for chunk in chunks:
            recorder.add(chunk)
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    on_complete(recorder)
