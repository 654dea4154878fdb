"""The response cache: its settings and the store protocol (the entries it keeps are in
hedge.cache.entries, re-exported here).

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

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hedge.cache.entries import (
    SCHEMA_VERSION,
    CachedAnswer,
    CachedEmbedding,
    CacheEntry,
    CorruptEntry,
    StreamRecorder,
    decode_entry,
    record_stream,
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


class CacheUnavailable(RuntimeError):
    """The configured store cannot be used at all (bad file, no DSN)."""


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
