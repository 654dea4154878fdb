"""The Backend protocol: what every deployment, and every wrapper around one, can do.

A backend module is a pair of pure converters (`to_wire`, `from_wire`) plus one short sender.
Wrappers that add behaviour (fallback, retry, cache...) are Backends themselves, so behaviour
composes by nesting rather than by branches in the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from hedge.types import ChatRequest, ChatResponse, Chunk, EmbeddingRequest, EmbeddingResponse

State = Literal["starting", "ready", "unavailable", "failed", "revoked"]


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    state: State
    detail: str | None = None
    breaker: Literal["closed", "open", "half_open"] | None = None
    stats: Mapping[str, int] | None = None  # counters a backend reports (e.g. its batching)


class Backend(Protocol):
    name: str
    accepts_prefill: bool  # continues a final assistant message rather than answering anew

    def unsupported(self, request: ChatRequest) -> str | None:
        """Why this backend cannot serve the request as asked (None when it can). Pure."""
        ...

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Chunks as they come. Raises `UpstreamError` on failure, before or after the first
        chunk; a stream that ends without a finish_reason is a failure, never a short answer."""
        ...

    def status(self) -> DeploymentStatus: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    """A backend that also serves embeddings. Backends that do not are chat-only: the
    gateway's plan skips them for an embeddings request, saying so."""

    def embedding_unsupported(self, request: EmbeddingRequest) -> str | None:
        """Why this backend cannot serve the embeddings request as asked (None when it can)."""
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse: ...


def unknown_fields(request: ChatRequest | EmbeddingRequest, kind: str) -> str | None:
    """Backends that do not speak OpenAI's wire refuse provider-specific extras by name."""
    extra = request.model_extra
    if extra:
        names = ", ".join(sorted(extra))
        return f"parameter(s) {names} are not supported by {kind} deployments"
    return None
