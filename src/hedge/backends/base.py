"""The Backend protocol: what every deployment, and every wrapper around one, can do.

A backend module is a pair of pure converters (`to_wire`, `from_wire`) plus one short sender.
Wrappers that add behaviour (fallback, retry, cache...) are Backends themselves, so behaviour
composes by nesting rather than by branches in the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from hedge.types import ChatRequest, ChatResponse, Chunk

State = Literal["starting", "ready", "unavailable", "failed", "revoked"]


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    state: State
    detail: str | None = None
    breaker: Literal["closed", "open", "half_open"] | None = None


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


def unknown_fields(request: ChatRequest, kind: str) -> str | None:
    """Backends that do not speak OpenAI's wire refuse provider-specific extras by name."""
    extra = request.model_extra
    if extra:
        names = ", ".join(sorted(extra))
        return f"parameter(s) {names} are not supported by {kind} deployments"
    return None
