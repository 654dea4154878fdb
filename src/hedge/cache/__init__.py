"""The response cache: its settings, the cached form of an answer, and the store protocol.

This package owns everything about remembering answers: which requests may be answered from
memory (`keys.cacheable`), what they are filed under (`keys.cache_key`), the serialisable
`CachedAnswer` (which replays as a whole response or as a stream with the same content) and the
three stores behind one async protocol: `memory` (per process, LRU), `sqlite` (one file, shared
by the processes of one host) and `redis` (shared by every gateway that reaches it).

A cache is an optimisation, never a source of failure: a store that errors or holds a damaged
entry answers "miss" (and drops the entry), and a write that cannot be made is skipped.
Module-level code here imports no store: `open_store` imports the one configured, so a gateway
without Redis never imports the `redis` client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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

__all__ = [
    "SCHEMA_VERSION",
    "CacheEntry",
    "CacheSettings",
    "CacheStore",
    "CacheUnavailable",
    "CachedAnswer",
    "CachedEmbedding",
    "CorruptEntry",
    "SemanticSettings",
    "StreamRecorder",
    "decode_entry",
    "open_store",
    "record_stream",
]

# Bumped whenever the stored layout changes: an entry written by another version is a miss
# (and is removed), never misread.
SCHEMA_VERSION = 1

_FINISH_REASONS: frozenset[str] = frozenset(get_args(FinishReason))


class SemanticSettings(BaseModel):
    """A route's semantic cache (`cache.semantic`), on top of its exact cache; the index and
    its rules are in hedge.cache.semantic."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = False
    embedder: str | None = Field(
        default=None, description="the deployment that embeds prompts (an embedding model)"
    )
    threshold: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.95, description="cosine similarity at or above which a prompt is a match"
    )
    max_entries: Annotated[int, Field(ge=1)] = 10_000
    multi_turn: bool = Field(
        default=False, description="also match the last turn of conversations (same history)"
    )
    tools: bool = Field(default=False, description="also match requests that offer tools")
    timeout_s: Annotated[float, Field(gt=0, le=10)] = Field(
        default=1.0, description="a prompt not embedded in time is a miss, not a wait"
    )


class CacheSettings(BaseModel):
    """A route's cache. Off unless `enabled`; only deterministic requests (temperature 0 or a
    seed) are cached unless `opt_in_nondeterministic`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = False
    backend: Literal["memory", "sqlite", "redis"] = "memory"
    ttl_s: Annotated[float, Field(gt=0, le=365 * 86400)] = 3600.0
    max_entries: Annotated[int, Field(ge=1)] = 10_000
    max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_entry_bytes: Annotated[int, Field(ge=256)] = Field(
        default=1024 * 1024,
        description="answers larger than this are not stored (for redis, the only bound "
        "hedge enforces; the server's maxmemory policy bounds the total)",
    )
    path: str = Field(
        default="~/.cache/hedge/cache.db", description="sqlite: the file", validate_default=True
    )
    url_env: str = Field(default="HEDGE_CACHE_URL", description="redis: the DSN variable")
    key_prefix: str = Field(default="hedge:cache:", description="redis: namespace of keys")
    timeout_s: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.25, description="redis: socket timeout; a slow cache is a miss, not a wait"
    )
    shared_across_keys: bool = Field(
        default=False,
        description="one cache for every API key; default: each key (tenant) has its own",
    )
    opt_in_nondeterministic: bool = Field(
        default=False, description="also cache requests sampled without temperature 0 or seed"
    )
    semantic: SemanticSettings = SemanticSettings()

    @field_validator("path")
    @classmethod
    def _expand(cls, v: str) -> str:
        return str(Path(v).expanduser())

    @model_validator(mode="after")
    def _entry_fits(self) -> CacheSettings:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError("max_entry_bytes must not exceed max_bytes")
        if self.semantic.enabled and not self.enabled:
            raise ValueError(
                "semantic.enabled needs the exact cache on: set enabled: true (the semantic "
                "index points at answers the exact cache stores)"
            )
        if self.semantic.enabled and self.semantic.embedder is None:
            raise ValueError(
                "semantic.enabled needs semantic.embedder: the deployment that embeds prompts, "
                "e.g. an embedded_embeddings deployment of all-minilm-l6-v2"
            )
        return self


class CorruptEntry(ValueError):
    """Stored bytes that are not a cache entry of this schema version."""


class CacheUnavailable(RuntimeError):
    """The configured store cannot be used at all (bad file, no DSN)."""


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


class CacheStore(Protocol):
    """What the gateway needs of a store. Implementations never raise for a store failure:
    `get` answers None (a miss) and `put` answers False (not stored)."""

    async def start(self) -> None:
        """Open connections or files, so a misconfiguration shows at start-up (optional: the
        first get or put opens them too)."""

    async def get(self, key: str) -> CacheEntry | None: ...

    async def put(self, key: str, answer: CacheEntry, ttl_s: float) -> bool:
        """Store `answer` under `key` for `ttl_s` seconds; False when it was not stored (too
        large, or the store failed)."""

    async def aclose(self) -> None: ...


def open_store(
    settings: CacheSettings,
    *,
    redis_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> CacheStore:
    """The store `settings` configure. The Redis DSN is passed in (`redis_url`, or looked up
    in `environ` under `settings.url_env`) because hedge.config is the one reader of the
    process environment."""
    if settings.backend == "memory":
        from hedge.cache.memory import MemoryStore

        return MemoryStore(
            max_entries=settings.max_entries,
            max_bytes=settings.max_bytes,
            max_entry_bytes=settings.max_entry_bytes,
        )
    if settings.backend == "sqlite":
        from hedge.cache.sqlite import SqliteStore

        return SqliteStore(
            settings.path,
            max_entries=settings.max_entries,
            max_bytes=settings.max_bytes,
            max_entry_bytes=settings.max_entry_bytes,
        )
    url = redis_url or (environ or {}).get(settings.url_env)
    if not url:
        raise CacheUnavailable(
            f"cache backend is redis but ${settings.url_env} is not set. Fix: export it with "
            "a Redis URL such as redis://127.0.0.1:6379/0, or use backend: sqlite."
        )
    from hedge.cache.redis import RedisStore

    return RedisStore(
        url,
        prefix=settings.key_prefix,
        max_entry_bytes=settings.max_entry_bytes,
        timeout_s=settings.timeout_s,
    )
