"""POST /v1/embeddings on OpenAI's wire: parse, hand to the gateway, render.

The request goes through the same routes, policies, breakers, fail-over and ledger as a chat
request; only the backends' call differs. Rendering is pure, so the bytes a client sees can be
tested as data.
"""

from __future__ import annotations

from typing import Any

import orjson

from hedge import vectors
from hedge.errors import HedgeError
from hedge.gateway import Gateway
from hedge.server.asgi import (
    JSON_HEADERS,
    PARSED_BODY,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
)
from hedge.server.openai_api import caller_of, parse_body, provenance_headers, trace_headers
from hedge.trace import Trace
from hedge.types import EmbeddingRequest, EmbeddingResponse


def parse_embedding_request(body: bytes, parsed: Any = None) -> EmbeddingRequest:
    """Bytes -> EmbeddingRequest, or an InvalidRequest that says what is wrong and where."""
    return parse_body(body, EmbeddingRequest, parsed)


def render_embeddings(
    response: EmbeddingResponse, model: str, encoding_format: str
) -> dict[str, Any]:
    """OpenAI's embeddings list. `base64` carries each vector's float32 bytes as they are;
    `float` carries the same values as JSON numbers."""
    encode = vectors.to_base64 if encoding_format == "base64" else vectors.unpack
    tokens = response.usage.prompt_tokens
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(response.vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class Embeddings:
    """POST /v1/embeddings."""

    def __init__(self, gateway: Gateway, max_body: int) -> None:
        self.gateway = gateway
        self.max_body = max_body
        self.provenance = {name: provenance_headers(p) for name, p in gateway.provenance.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Trace:
        body = await read_body(scope, receive, self.max_body)
        request = parse_embedding_request(body, scope.get(PARSED_BODY))
        trace = Trace(route=request.model)
        try:
            response = await self.gateway.embed(request, trace, caller_of(scope, request))
        except HedgeError as e:
            e.headers.setdefault("x-request-id", trace.request_id)
            if trace.attempts:
                e.headers.setdefault("x-hedge-attempts", str(len(trace.attempts)))
            self.gateway.record(trace, e.status, e.code)
            raise
        payload = orjson.dumps(render_embeddings(response, request.model, request.encoding_format))
        self.gateway.record(trace, 200)
        headers = [
            *JSON_HEADERS,
            *trace_headers(trace),
            *self.provenance.get(trace.answered_by or "", ()),
        ]
        await send_bytes(send, 200, payload, headers)
        return trace
