"""The OpenAPI 3.1 description of hedge's own HTTP API, served at GET /openapi.json.

Request bodies come from the same pydantic models that validate them (so the description
cannot drift from what is accepted), with the route names of this gateway as the `model`
enum where a route is named; responses are described by their shape and, for every error
status, OpenAI's error object (Anthropic's on /v1/messages). CI fuzzes the running server
against this document with schemathesis (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from pydantic import BaseModel

from hedge.server.anthropic_api import MessagesBody
from hedge.types import ChatRequest, EmbeddingRequest

REF = "#/components/schemas/{model}"

OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
ANTHROPIC_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
FEEDBACK: dict[str, Any] = {
    "type": "object",
    "required": ["request_id", "success"],
    "additionalProperties": False,
    "properties": {
        "request_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "success": {"type": "boolean"},
        "score": {"type": ["number", "null"]},
    },
}
_OBJECT = {"type": "object"}

# The statuses a client can meet on each kind of operation.
_CLIENT_ERRORS = ("400", "401", "403", "404", "405", "413", "415", "422", "429")
_SERVER_ERRORS = ("502", "503", "504")


def _errors(schema: dict[str, Any], codes: tuple[str, ...]) -> dict[str, Any]:
    body = {"application/json": {"schema": schema}}
    return {code: {"description": "error", "content": body} for code in codes}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    defs[model.__name__] = schema
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }


def _post(
    summary: str,
    body: dict[str, Any],
    ok: dict[str, Any],
    error: dict[str, Any],
    upstream: bool = True,
) -> dict[str, Any]:
    codes = _CLIENT_ERRORS + (_SERVER_ERRORS if upstream else ("503",))
    return {
        "post": {
            "summary": summary,
            "requestBody": body,
            "responses": {"200": ok, **_errors(error, codes)},
        }
    }


def document(routes: list[str]) -> dict[str, Any]:
    """The description for a gateway serving `routes`."""
    try:
        version = importlib.metadata.version("hedge")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        version = "0.0.0"
    defs: dict[str, Any] = {}
    streamed = {
        "description": "the answer (JSON), or its events when `stream` is true",
        "content": {
            "application/json": {"schema": _OBJECT},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    paths: dict[str, Any] = {
        "/v1/chat/completions": _post(
            "OpenAI chat completions on a route", _body(ChatRequest, defs), streamed, OPENAI_ERROR
        ),
        "/v1/embeddings": _post(
            "OpenAI embeddings on a route",
            _body(EmbeddingRequest, defs),
            _json({"type": "object", "required": ["data", "usage"]}),
            OPENAI_ERROR,
        ),
        "/v1/messages": _post(
            "Anthropic Messages on a route", _body(MessagesBody, defs), streamed, ANTHROPIC_ERROR
        ),
        "/v1/feedback": _post(
            "the real outcome of an earlier request",
            {"required": True, "content": {"application/json": {"schema": FEEDBACK}}},
            _json({"type": "object", "required": ["request_id", "recorded"]}),
            OPENAI_ERROR,
            upstream=False,
        ),
        "/v1/models": {
            "get": {
                "summary": "the routes",
                "responses": {
                    "200": _json({"type": "object", "required": ["object", "data"]}),
                    **_errors(OPENAI_ERROR, ("401",)),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "one route",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json({"type": "object", "required": ["id", "object"]}),
                    **_errors(OPENAI_ERROR, ("401", "404")),
                },
            }
        },
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": _json(_OBJECT)}}},
        "/readyz": {
            "get": {
                "summary": "readiness of every route and deployment",
                "responses": {"200": _json(_OBJECT), "503": _json(_OBJECT, "not ready")},
            }
        },
    }
    # `model` names a route of this gateway (another name is answered 404, as documented).
    for name in ("ChatRequest", "EmbeddingRequest", "MessagesBody"):
        defs[name]["properties"]["model"] = {"type": "string", "enum": routes}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hedge",
            "version": version,
            "description": "A self-hosted LLM gateway: OpenAI and Anthropic wire formats over "
            "routes with policies, fail-over, cascades, caching and accounting.",
        },
        "paths": paths,
        "components": {"schemas": defs},
    }
