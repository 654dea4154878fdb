"""Malformed requests against a real `hedge serve`, sent as raw HTTP so the bytes are ours.

Every case must come back with the exact status and OpenAI's error shape, a `param` that points
at the offending field, and a message that says what is wrong; and the server must stay up.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Gateway

CHAT = "/v1/chat/completions"
LIMIT = 4 * 1024 * 1024  # server.max_body_bytes in the built-in config
TEN_MB = 10 * 1024 * 1024
HI = [{"role": "user", "content": "hi"}]
DROP = object()
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def body(**fields: Any) -> bytes:
    """A valid request for the `smollm2` route with `fields` changed (DROP removes one)."""
    data: dict[str, Any] = {"model": "smollm2", "messages": HI}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not DROP}).encode()


@dataclass(frozen=True)
class Bad:
    id: str
    body: bytes | None
    status: int
    code: str
    param: str | None
    says: tuple[str, ...]
    method: str = "POST"
    path: str = CHAT
    # "plain": send the body; "declared": declare 10 MB and send 64 KB of it; "chunked":
    # stream chunks past the limit with no Content-Length.
    how: str = "plain"


def bad(
    id: str, raw: bytes | None, status: int, code: str, param: str | None, *says: str, **kw: Any
) -> Any:
    return pytest.param(Bad(id, raw, status, code, param, says, **kw), id=id)


def invalid(id: str, raw: bytes, param: str, *says: str) -> Any:
    """A field that fails validation: 400 invalid_request naming the field."""
    return bad(id, raw, 400, "invalid_request", param, *says)


def not_json(id: str, raw: bytes, *says: str) -> Any:
    """A body that is not a JSON object at all."""
    return bad(id, raw, 400, "invalid_json", None, *says)


def unsupported(id: str, raw: bytes, *says: str) -> Any:
    """A valid request no deployment of the embedded `smollm2` route can serve."""
    return bad(id, raw, 400, "unsupported_parameter", None, "smollm2-local", *says)


def messages(*items: Any) -> bytes:
    return body(messages=list(items))


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# fmt: off
CASES = [
    # ---- the body is not a JSON object
    not_json("bad-json", b'{"model": "smollm2", "messages": [', "not valid JSON"),
    not_json("trailing-garbage", body() + b" }", "not valid JSON"),
    not_json("nan", body(temperature=1).replace(b"1}", b"NaN}"), "not valid JSON"),
    not_json("too-deep", b"[" * 5000 + b"]" * 5000, "depth limit"),
    not_json("empty-body", b"", "body is empty"),
    not_json("array", b'[{"model": "smollm2"}]', "a JSON object, not an array"),
    not_json("string", b'"hello"', "a JSON object, not a string"),
    not_json("number", b"42", "a JSON object, not a number"),
    not_json("null", b"null", "a JSON object, not null"),
    not_json("boolean", b"true", "a JSON object, not a boolean"),
    not_json("invalid-utf8", messages(user("ab")).replace(b"ab", b"\xff\xfe"),
             "not valid UTF-8", "byte 0xff at offset 63"),
    # ---- model
    invalid("missing-model", body(model=DROP), "model", "this field is required"),
    invalid("model-number", body(model=4), "model", "valid string", "got a number: 4"),
    invalid("model-empty", body(model=""), "model", "at least 1 character"),
    bad("unknown-model", body(model="gpt-4o"), 404, "model_not_found", "model",
        "'gpt-4o'", "Available models: default, gemma-3-270m, minilm, smollm2."),
    bad("unknown-model-streamed", body(model="gpt-4o", stream=True), 404, "model_not_found",
        "model", "'gpt-4o'", "Available models:"),
    # ---- messages
    invalid("missing-messages", body(messages=DROP), "messages", "required"),
    invalid("messages-string", body(messages="hi"), "messages", "a valid list"),
    invalid("messages-empty", messages(), "messages", "at least 1 item"),
    invalid("message-not-object", messages("hi"), "messages[0]",
            'Input should be an object (got a string: "hi")'),
    invalid("unknown-role", messages(user("x"), {"role": "wizard", "content": "x"}),
            "messages[1].role", '"wizard"', "'user'"),
    invalid("missing-role", messages({"content": "x"}), "messages[0].role", "required"),
    invalid("content-number", messages(user(42)), "messages[0].content",
            "a valid list or a valid string", "got a number: 42"),
    invalid("user-without-content", messages({"role": "user"}), "messages[0].content",
            "role 'user' needs 'content'"),
    invalid("tool-without-tool-call-id", messages(user("x"), {"role": "tool", "content": "4"}),
            "messages[1].tool_call_id", "role 'tool'"),
    invalid("text-part-without-text", messages(user([{"type": "text"}])),
            "messages[0].content[0].text", "type 'text' needs a string field 'text'"),
    invalid("part-not-object", messages(user(["hi"])), "messages[0].content[0]", "an object"),
    invalid("tool-calls-on-user", messages({**user("x"), "tool_calls": []}),
            "messages[0].tool_calls", "only assistant messages"),
    # ---- sampling and limits
    invalid("temperature-string", body(temperature="0.5"), "temperature",
            'got a string: "0.5"', "without quotes"),
    invalid("temperature-3", body(temperature=3), "temperature",
            "less than or equal to 2", "got a number: 3"),
    invalid("top-p-1.5", body(top_p=1.5), "top_p", "less than or equal to 1"),
    invalid("max-tokens-negative", body(max_tokens=-1), "max_tokens",
            "greater than or equal to 1", "got a number: -1"),
    invalid("max-tokens-0", body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    invalid("max-tokens-float", body(max_tokens=4.5), "max_tokens", "valid integer",
            "whole number"),
    invalid("max-tokens-true", body(max_tokens=True), "max_tokens", "valid integer",
            "got a boolean: true"),
    invalid("n-0", body(n=0), "n", "greater than or equal to 1"),
    invalid("stop-5", body(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4 items"),
    invalid("stream-string", body(stream="true"), "stream", "valid boolean", "true or false"),
    invalid("stream-options-without-stream", body(stream_options={"include_usage": True}),
            "stream_options", "only allowed when 'stream' is true"),
    invalid("logit-bias-word-key", body(logit_bias={"hello": 5}), "logit_bias.hello",
            "token ids"),
    invalid("top-logprobs-without-logprobs", body(top_logprobs=2), "top_logprobs",
            "'logprobs' set to true"),
    # ---- tools and formats
    invalid("tool-missing-function", body(tools=[{"type": "function"}]), "tools[0].function",
            "required"),
    invalid("tool-type-retrieval", body(tools=[{**TOOL, "type": "retrieval"}]), "tools[0].type",
            '"retrieval"'),
    invalid("tool-name-with-spaces",
            body(tools=[{"type": "function", "function": {"name": "a b"}}]),
            "tools[0].function.name", "'a b'", "letters, digits"),
    invalid("tool-unknown-key",
            body(tools=[TOOL, {"type": "function", "function": {"name": "f", "Parameters": {}}}]),
            "tools[1].function.Parameters", "unknown field"),
    invalid("tool-choice-unknown-function",
            body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "search"}}),
            "tool_choice", "'search'", "(lookup)"),
    invalid("tool-choice-required-without-tools", body(tool_choice="required"), "tool_choice",
            "'required' needs a non-empty 'tools'"),
    invalid("tool-choice-word", body(tools=[TOOL], tool_choice="always"), "tool_choice",
            '"always"'),
    invalid("response-format-xml", body(response_format={"type": "xml"}),
            "response_format.type", '"xml"', "'json_schema'"),
    invalid("json-schema-without-schema", body(response_format={"type": "json_schema"}),
            "response_format.json_schema", "needs a 'json_schema' object"),
    # ---- HTTP level
    bad("10mb-declared", None, 413, "request_too_large", None, f"({TEN_MB} bytes)",
        "server.max_body_bytes", how="declared"),
    bad("10mb-sent", b" " * TEN_MB, 413, "request_too_large", None, f"({TEN_MB} bytes)"),
    bad("chunked-over-limit", None, 413, "request_too_large", None,
        f"The request body exceeds this gateway's limit of {LIMIT} bytes",
        how="chunked"),
    bad("get-chat", None, 405, "method_not_allowed", None, "GET", "use POST", method="GET"),
    bad("put-models", b"{}", 405, "method_not_allowed", None, "use GET", method="PUT",
        path="/v1/models"),
    bad("unknown-path", body(), 404, "not_found", None, "POST /v1/chat/completion.",
        path="/v1/chat/completion"),
    bad("unknown-model-card", None, 404, "model_not_found", "model", "'gpt-4o'", "smollm2",
        method="GET", path="/v1/models/gpt-4o"),
    # ---- valid requests the embedded route cannot serve
    unsupported("n-2-embedded", body(n=2), "n > 1"),
    unsupported("n-2-embedded-streamed", body(n=2, stream=True), "n > 1"),
    unsupported("tools-embedded", body(tools=[TOOL]), "tools are not supported"),
    unsupported("top-k-embedded", body(top_k=40), "top_k"),
    unsupported("logprobs-embedded", body(logprobs=True), "logprobs"),
    unsupported("image-embedded", messages(user([{"type": "image_url", "image_url": {}}])),
                "only text content"),
]
# fmt: on


def _connection(gw: Gateway, timeout: float = 60) -> http.client.HTTPConnection:
    url = urlsplit(gw.url)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)


def _over_the_limit() -> Iterator[bytes]:
    yield b'{"model": "smollm2", "messages": [{"role": "user", "content": "'
    for _ in range(LIMIT // 65536 + 8):
        yield b"x" * 65536


def send(gw: Gateway, case: Bad) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = _connection(gw, timeout=20 if case.how == "declared" else 60)
    try:
        if case.how == "declared":
            # Only the head and 64 KB go out: if the server waited for the rest, this times out.
            conn.putrequest("POST", case.path)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(TEN_MB))
            conn.endheaders(b"{" + b" " * 65535)
        elif case.how == "chunked":
            conn.request(
                "POST",
                case.path,
                body=_over_the_limit(),
                headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                encode_chunked=True,
            )
        else:
            headers = {"Content-Type": "application/json"} if case.body is not None else {}
            conn.request(case.method, case.path, body=case.body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def get(gw: Gateway, path: str) -> tuple[int, Any]:
    conn = _connection(gw)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gw(embedded_gateway: Gateway) -> Iterator[Gateway]:
    """The shared gateway; on the way out, its log must show no unhandled error from here."""
    start = len(embedded_gateway.output())
    yield embedded_gateway
    assert "unhandled error" not in embedded_gateway.output()[start:]


@pytest.mark.parametrize("case", CASES)
def test_bad_request_gets_a_precise_openai_error(gw: Gateway, case: Bad) -> None:
    status, headers, raw = send(gw, case)

    assert status == case.status, raw[:500]
    assert headers.get_content_type() == "application/json"
    payload = json.loads(raw)
    assert list(payload) == ["error"]
    error = payload["error"]
    assert sorted(error) == ["code", "message", "param", "type"]
    assert isinstance(error["message"], str)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        case.code,
        case.param,
    )
    for words in case.says:
        assert words in error["message"], error["message"]
    if case.code == "invalid_request" and case.param is not None:
        assert error["message"].startswith(f"Invalid '{case.param}': "), error["message"]
    if status == 405:
        assert headers["Allow"] == ("POST" if case.path == CHAT else "GET")

    # Cheap liveness check after every case.
    assert get(gw, "/healthz") == (200, {"status": "ok"})


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.values[0].id for c in CASES}) == len(CASES)


def test_still_serving_after_the_bad_input(gw: Gateway) -> None:
    conn = _connection(gw, timeout=120)
    try:
        conn.request(
            "POST", CHAT, body=body(max_tokens=4), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    assert response.status == 200, raw[:500]
    completion = json.loads(raw)
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "smollm2"
    assert isinstance(completion["choices"][0]["message"]["content"], str)
    assert 1 <= completion["usage"]["completion_tokens"] <= 4
    assert get(gw, "/readyz")[0] == 200
