"""The OpenAI-compatible wire, as pure functions over recorded and documented payloads.

The llama.cpp fixtures were recorded from `python -m llama_cpp.server`; the vLLM, Ollama and
DeepSeek ones follow those servers' documented shapes (see tests/fixtures/openai/README.md).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from pathlib import Path
from typing import Any, NamedTuple, cast

import aiohttp
import orjson
import pytest

from hedge.backends.http import HttpPool, parse_retry_after, upstream_failure
from hedge.backends.openai_compat import (
    OpenAICompatBackend,
    ToolCallHeaders,
    chunks_from_wire,
    from_wire,
    to_wire,
)
from hedge.backends.quirks import Quirks, provider_names, quirks_for
from hedge.backends.sse import sse_data
from hedge.config import OpenAICompatDeployment, SamplingDefaults, Timeouts
from hedge.errors import ContextLengthExceeded, InvalidRequest, UpstreamError
from hedge.types import ChatRequest, Chunk, ToolCallDelta

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai"
GENERIC = quirks_for("generic", {})
NO_DEFAULTS = SamplingDefaults()


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class _Replay:
    """Just enough of an aiohttp response for `sse_data`: a body and `release()`."""

    def __init__(self, raw: bytes) -> None:
        self.content = asyncio.StreamReader()
        self.content.feed_data(raw)
        self.content.feed_eof()
        self.released = False

    def release(self) -> None:
        self.released = True


def sse_payloads(name: str) -> list[bytes]:
    """The `data:` payloads of a recorded stream, read by hedge's own SSE reader."""

    async def main() -> list[bytes]:
        replay = _Replay((FIXTURES / name).read_bytes())
        resp = cast(aiohttp.ClientResponse, replay)
        out = [data async for data in sse_data(resp, "recorded", Timeouts())]
        assert replay.released
        return out

    return asyncio.run(main())


def stream_chunks(name: str, quirks: Quirks) -> list[Chunk]:
    payloads = sse_payloads(name)
    assert payloads[-1] == b"[DONE]"
    headers = ToolCallHeaders()
    return [
        headers(chunk)
        for data in payloads[:-1]
        for chunk in chunks_from_wire(orjson.loads(data), quirks)
    ]


def req(**fields: Any) -> ChatRequest:
    body = {"model": "my-route", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return ChatRequest.model_validate(body)


# ---- to_wire --------------------------------------------------------------------------------


def test_to_wire_swaps_in_the_upstream_model_and_keeps_the_conversation() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    body = to_wire(req(messages=messages), "Qwen/Qwen3-8B", GENERIC, NO_DEFAULTS)
    assert body["model"] == "Qwen/Qwen3-8B"
    assert body["messages"] == messages
    # Fields the client never set are not invented.
    for absent in ("temperature", "top_p", "max_tokens", "tools", "stream_options", "n"):
        assert absent not in body


def test_defaults_fill_only_what_the_client_left_out() -> None:
    defaults = SamplingDefaults(temperature=0.2, top_p=0.9, max_tokens=256)
    filled = to_wire(req(), "m", GENERIC, defaults)
    assert (filled["temperature"], filled["top_p"], filled["max_tokens"]) == (0.2, 0.9, 256)
    # 0.0 is a choice, not an absence.
    kept = to_wire(req(temperature=0.0, top_p=1.0, max_tokens=7), "m", GENERIC, defaults)
    assert (kept["temperature"], kept["top_p"], kept["max_tokens"]) == (0.0, 1.0, 7)


@pytest.mark.parametrize(
    ("provider", "overrides", "field", "other"),
    [
        ("generic", {}, "max_tokens", "max_completion_tokens"),
        ("vllm", {}, "max_tokens", "max_completion_tokens"),
        ("openai", {}, "max_completion_tokens", "max_tokens"),
        (
            "generic",
            {"max_tokens_field": "max_completion_tokens"},
            "max_completion_tokens",
            "max_tokens",
        ),
    ],
)
def test_the_completion_budget_is_spelled_the_way_the_server_wants(
    provider: str, overrides: dict[str, Any], field: str, other: str
) -> None:
    quirks = quirks_for(provider, overrides)
    for spelling in ("max_tokens", "max_completion_tokens"):
        body = to_wire(req(**{spelling: 9}), "m", quirks, NO_DEFAULTS)
        assert body[field] == 9
        assert other not in body
    assert to_wire(req(), "m", quirks, SamplingDefaults(max_tokens=64))[field] == 64


def test_streams_always_ask_for_usage() -> None:
    plain = to_wire(req(stream=True), "m", GENERIC, NO_DEFAULTS)
    assert plain["stream"] is True
    assert plain["stream_options"] == {"include_usage": True}
    declined = to_wire(
        req(stream=True, stream_options={"include_usage": False}), "m", GENERIC, NO_DEFAULTS
    )
    assert declined["stream_options"] == {"include_usage": True}
    assert "stream_options" not in to_wire(req(), "m", GENERIC, NO_DEFAULTS)


def test_stream_options_are_withheld_from_servers_that_reject_them() -> None:
    quirks = quirks_for("generic", {"stream_usage": "none"})
    body = to_wire(
        req(stream=True, stream_options={"include_usage": True}), "m", quirks, NO_DEFAULTS
    )
    assert body["stream"] is True
    assert "stream_options" not in body


def test_provider_extras_and_nested_fields_pass_through() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = req(
        top_k=20,
        chat_template_kwargs={"enable_thinking": False},
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        seed=3,
        stop=["\n\n"],
    )
    body = to_wire(request, "m", quirks_for("vllm", {}), NO_DEFAULTS)
    assert body["top_k"] == 20
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": schema},
    }
    assert (body["seed"], body["stop"]) == (3, ["\n\n"])


# ---- from_wire ------------------------------------------------------------------------------


class Case(NamedTuple):
    name: str
    provider: str
    content: str | None  # what the content starts with
    finish: str
    reasoning: str | None  # what the reasoning starts with
    prompt: int
    completion: int
    cached: int
    reasoning_tokens: int


COMPLETIONS = [
    Case("llamacpp_text.json", "llamacpp", "The capital of France is Paris.", "stop", None,
         42, 7, 0, 0),
    Case("llamacpp_length.json", "llamacpp", "The sea is a vast", "length", None, 36, 5, 0, 0),
    Case("llamacpp_tool_call.json", "llamacpp", None, "tool_calls", None, 37, 8, 0, 0),
    Case("vllm_reasoning.json", "vllm", "9.8 is greater than 9.11.", "stop",
         "Compare the decimal", 21, 53, 16, 0),
    Case("vllm_tool_calls.json", "vllm", None, "tool_calls", None, 187, 56, 0, 0),
    Case("ollama_reasoning.json", "ollama", "The sky looks blue because", "stop",
         "The user wants a one-sentence", 17, 61, 0, 0),
    Case("ollama_tool_call.json", "ollama", "", "tool_calls", "The user asks for the weather",
         142, 38, 0, 0),
    Case("deepseek_reasoner.json", "deepseek", "9.8 is greater than 9.11.", "stop",
         "First compare the whole-number parts", 84, 212, 64, 198),
]  # fmt: skip


@pytest.mark.parametrize("case", COMPLETIONS, ids=[c.name for c in COMPLETIONS])
def test_from_wire_reads_each_server(case: Case) -> None:
    name, provider, content, finish, reasoning, prompt, completion, cached, reasoning_tokens = case
    payload = fixture(name)
    response = from_wire(payload, quirks_for(provider, {}), "dep")
    (choice,) = response.choices
    if content is None:
        assert choice.content is None
    else:
        assert choice.content is not None and choice.content.startswith(content)
    assert choice.finish_reason == finish
    if reasoning is None:
        assert choice.reasoning is None
    else:
        assert choice.reasoning is not None and choice.reasoning.startswith(reasoning)
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert usage.total_tokens == payload["usage"]["total_tokens"]
    assert (usage.cached_tokens, usage.reasoning_tokens) == (cached, reasoning_tokens)
    assert response.upstream_model == payload["model"]
    assert response.id == payload["id"]
    assert response.created == payload["created"]


def test_tool_calls_keep_their_ids_names_and_arguments() -> None:
    (llama,) = from_wire(fixture("llamacpp_tool_call.json"), GENERIC, "dep").choices
    (call,) = llama.tool_calls
    assert call.name == "get_weather"
    assert call.id.startswith("call__0_get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"}

    (vllm,) = from_wire(fixture("vllm_tool_calls.json"), GENERIC, "dep").choices
    assert [c.name for c in vllm.tool_calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.arguments)["city"] for c in vllm.tool_calls] == ["Paris", "Berlin"]
    assert vllm.tool_calls[0].id != vllm.tool_calls[1].id
    assert all(c.id.startswith("chatcmpl-tool-") for c in vllm.tool_calls)

    (ollama,) = from_wire(fixture("ollama_tool_call.json"), GENERIC, "dep").choices
    assert [(c.id, c.name, c.arguments) for c in ollama.tool_calls] == [
        ("call_x3k9q2vz", "get_weather", '{"city":"Paris"}')
    ]


def test_reasoning_is_read_from_the_fields_the_provider_uses() -> None:
    ollama = fixture("ollama_reasoning.json")
    assert from_wire(ollama, quirks_for("ollama", {}), "d").choices[0].reasoning is not None
    # DeepSeek's quirks look only at reasoning_content, which Ollama does not send.
    assert from_wire(ollama, quirks_for("deepseek", {}), "d").choices[0].reasoning is None
    deepseek = fixture("deepseek_reasoner.json")
    assert from_wire(deepseek, quirks_for("ollama", {}), "d").choices[0].reasoning is None


def test_deepseek_cache_hits_count_without_prompt_tokens_details() -> None:
    payload = fixture("deepseek_reasoner.json")
    del payload["usage"]["prompt_tokens_details"]  # only the DeepSeek-specific fields left
    usage = from_wire(payload, quirks_for("deepseek", {}), "d").usage
    assert usage.cached_tokens == payload["usage"]["prompt_cache_hit_tokens"] == 64


def test_system_fingerprint_is_kept() -> None:
    response = from_wire(fixture("deepseek_reasoner.json"), GENERIC, "d")
    assert response.system_fingerprint == "fp_5417b77867_prod0425fp8"


# ---- chunks_from_wire on recorded streams ----------------------------------------------------


def _text(chunks: list[Chunk]) -> str:
    return "".join(c.content or "" for c in chunks)


def _reasoning(chunks: list[Chunk]) -> str:
    return "".join(c.reasoning or "" for c in chunks)


def _finishes(chunks: list[Chunk]) -> list[str]:
    return [c.finish_reason for c in chunks if c.finish_reason is not None]


def test_llamacpp_stream_concatenates_to_the_recorded_completion() -> None:
    chunks = stream_chunks("llamacpp_text_stream.sse", quirks_for("llamacpp", {}))
    assert chunks[0].role == "assistant"
    assert _text(chunks) == fixture("llamacpp_text.json")["choices"][0]["message"]["content"]
    assert _finishes(chunks) == ["stop"]
    # llama-cpp-python's server ignores stream_options: its streams carry no usage.
    assert [c for c in chunks if c.usage is not None] == []


def test_llamacpp_length_stream() -> None:
    chunks = stream_chunks("llamacpp_length_stream.sse", quirks_for("llamacpp", {}))
    assert _text(chunks) == fixture("llamacpp_length.json")["choices"][0]["message"]["content"]
    assert _finishes(chunks) == ["length"]


def test_llamacpp_tool_call_stream_names_the_call_once() -> None:
    payloads = [orjson.loads(d) for d in sse_payloads("llamacpp_tool_call_stream.sse")[:-1]]
    raw = [c for p in payloads for c in chunks_from_wire(p, GENERIC)]
    # The server repeats the id and name in every delta...
    assert sum(1 for c in raw for t in c.tool_calls if t.name == "get_weather") > 2
    chunks = stream_chunks("llamacpp_tool_call_stream.sse", GENERIC)
    deltas = [t for c in chunks for t in c.tool_calls]
    # ...and hedge passes each on once, so a client that concatenates fragments gets them right.
    assert "".join(t.name or "" for t in deltas) == "get_weather"
    first_id = payloads[1]["choices"][0]["delta"]["tool_calls"][0]["id"]
    assert first_id.startswith("call__0_get_weather")
    assert [t.id for t in deltas if t.id] == [first_id]
    whole = fixture("llamacpp_tool_call.json")["choices"][0]["message"]["tool_calls"][0]
    assert "".join(t.arguments or "" for t in deltas) == whole["function"]["arguments"]
    assert {t.index for t in deltas} == {0}
    assert _finishes(chunks) == ["tool_calls"]
    assert _text(chunks) == ""


def test_vllm_reasoning_stream() -> None:
    chunks = stream_chunks("vllm_reasoning_stream.sse", quirks_for("vllm", {}))
    assert _reasoning(chunks) == "Compare the decimal parts: 0.8 > 0.11."
    assert _text(chunks) == "\n\n9.8 is greater."
    assert _finishes(chunks) == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].content is None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (21, 19, 16)


def test_ollama_reasoning_stream() -> None:
    chunks = stream_chunks("ollama_reasoning_stream.sse", quirks_for("ollama", {}))
    assert _reasoning(chunks) == "The user wants one sentence."
    assert _text(chunks) == "Air scatters blue light most."
    assert _finishes(chunks) == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (17, 14)


def test_deepseek_stream_with_keepalives_and_usage_on_the_last_choice() -> None:
    payloads = sse_payloads("deepseek_reasoner_stream.sse")
    assert not any(p.startswith(b":") or b"keep-alive" in p for p in payloads)
    chunks = stream_chunks("deepseek_reasoner_stream.sse", quirks_for("deepseek", {}))
    assert _reasoning(chunks) == "Both are 9; 0.80 > 0.11."
    assert _text(chunks) == "9.8 is greater than 9.11."
    assert _finishes(chunks) == ["stop"]
    # DeepSeek puts usage on the chunk that finishes: it still comes out as a usage chunk.
    usage = chunks[-1].usage
    assert usage is not None and chunks[-2].finish_reason == "stop"
    assert (usage.cached_tokens, usage.reasoning_tokens, usage.completion_tokens) == (64, 8, 15)


def test_tool_call_headers_keep_first_mentions_and_new_calls() -> None:
    headers = ToolCallHeaders()
    first = headers(Chunk(tool_calls=(ToolCallDelta(0, "a", "f", "{"),)))
    assert first.tool_calls == (ToolCallDelta(0, "a", "f", "{"),)
    again = headers(Chunk(tool_calls=(ToolCallDelta(0, "a", "f", "}"), ToolCallDelta(1, "b", "g"))))
    assert again.tool_calls == (ToolCallDelta(0, None, None, "}"), ToolCallDelta(1, "b", "g"))
    other_choice = headers(Chunk(index=1, tool_calls=(ToolCallDelta(0, "a", "f"),)))
    assert other_choice.tool_calls == (ToolCallDelta(0, "a", "f"),)
    plain = Chunk(content="x")
    assert headers(plain) is plain


# ---- malformed payloads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"choices": []},
        {"choices": "nope"},
        {"choices": ["nope"]},
        {"choices": [{"message": {"tool_calls": [{"function": {}}]}}]},
        [],
        "text",
        None,
    ],
    ids=["empty", "no-choices", "choices-str", "choice-str", "tool-without-name", "list", "str",
         "null"],
)  # fmt: skip
def test_malformed_completions_are_upstream_failures(payload: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        from_wire(payload, GENERIC, "dep-x")
    assert info.value.retryable
    assert "dep-x" in info.value.message


def test_an_error_body_with_status_200_is_reported_as_such() -> None:
    with pytest.raises(UpstreamError) as info:
        from_wire({"error": {"message": "model is loading"}}, GENERIC, "dep-x")
    assert "model is loading" in info.value.message


def test_malformed_stream_events_raise() -> None:
    with pytest.raises(KeyError):
        list(chunks_from_wire({"object": "chat.completion.chunk"}, GENERIC))
    with pytest.raises((TypeError, AttributeError)):
        list(chunks_from_wire({"choices": [1]}, GENERIC))


def test_the_backend_turns_bad_stream_events_into_upstream_errors() -> None:
    deployment = OpenAICompatDeployment.model_validate(
        {"kind": "openai_compat", "hosting": "self-hosted", "base_url": "http://127.0.0.1:9/v1",
         "upstream_model": "m"}
    )  # fmt: skip
    backend = OpenAICompatBackend("dep-x", deployment, None, HttpPool())
    good = backend._parse_event(
        b'{"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}'
    )
    assert [c.content for c in good] == ["hi"]
    for bad in (b"<html>", b'{"id": 1}', b'{"choices": [3]}'):
        with pytest.raises(UpstreamError, match="malformed stream event"):
            backend._parse_event(bad)
    with pytest.raises(UpstreamError, match="out of memory"):
        backend._parse_event(b'{"error": {"message": "out of memory"}}')


# ---- quirks ----------------------------------------------------------------------------------


def test_quirks_merge_generic_then_provider_then_overrides() -> None:
    generic = quirks_for("generic", {})
    assert generic.max_tokens_field == "max_tokens"
    assert generic.reasoning_fields == ("reasoning_content", "reasoning")
    openai = quirks_for("openai", {})
    assert openai.max_tokens_field == "max_completion_tokens"
    assert openai.reasoning_fields == generic.reasoning_fields  # inherited from generic
    ollama = quirks_for("ollama", {"supports_n": True, "reasoning_fields": ["thinking"]})
    assert ollama.supports_n is True  # the deployment's override beats the provider's false
    assert ollama.reasoning_fields == ("thinking",)
    assert quirks_for("ollama", {}).supports_n is False
    assert quirks_for("no-such-provider", {}) == generic


def test_every_preset_is_valid() -> None:
    names = provider_names()
    assert {"generic", "vllm", "llamacpp", "ollama", "deepseek", "openai"} <= set(names)
    for name in names:
        assert isinstance(quirks_for(name, {}), Quirks)


def test_unknown_quirks_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="supports_tool_calls"):
        quirks_for("vllm", {"supports_tool_calls": False})


# ---- Retry-After and upstream failures -------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 3 ") == 3.0
    assert parse_retry_after("-5") == 0.0
    for nothing in (None, "", "soon", "inf", "nan"):
        assert parse_retry_after(nothing) is None


def test_retry_after_http_date() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    when = email.utils.parsedate_to_datetime(date).timestamp()
    assert parse_retry_after(date, now=when - 30) == pytest.approx(30.0)
    assert parse_retry_after(date, now=when + 30) == 0.0


def _body(message: str, code: str | None = None, kind: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "code": code}})


def test_context_length_errors_are_recognised() -> None:
    recorded = (FIXTURES / "llamacpp_context_error.json").read_bytes()
    err = upstream_failure("llama", 400, recorded, None)
    assert isinstance(err, ContextLengthExceeded)
    assert "maximum context length is 2048 tokens" in err.message
    assert err.status == 400
    # vLLM's error body puts the message at the top level, not under "error".
    vllm = orjson.dumps(
        {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
         "message": "This model's maximum context length is 4096 tokens. However, you requested "
                    "5000 tokens (4000 in the messages, 1000 in the completion)."}
    )  # fmt: skip
    err = upstream_failure("vllm", 400, vllm, None)
    assert isinstance(err, ContextLengthExceeded)
    assert err.message.endswith("1000 in the completion).")


def test_other_client_errors_are_invalid_requests_not_upstream_failures() -> None:
    err = upstream_failure("d", 400, _body("'temperature' must be <= 2"), None)
    assert type(err) is InvalidRequest
    assert not isinstance(err, UpstreamError)
    assert "'temperature' must be <= 2" in err.message


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retryable(status: int) -> None:
    err = upstream_failure("d", status, _body("Incorrect API key provided"), None)
    assert isinstance(err, UpstreamError)
    assert err.retryable is False
    assert err.code == "upstream_auth"
    assert err.upstream_status == status
    assert "Incorrect API key provided" in err.message


def test_rate_limits_and_outages_are_retryable_with_their_delay() -> None:
    limited = upstream_failure("d", 429, _body("slow down", "rate_limit_exceeded"), "7")
    assert isinstance(limited, UpstreamError)
    assert limited.retryable is True
    assert limited.retry_after_s == 7.0
    assert limited.upstream_status == 429
    soon = email.utils.formatdate(usegmt=True)
    down = upstream_failure("d", 503, b"<html>Service Unavailable</html>", soon)
    assert isinstance(down, UpstreamError)
    assert down.retryable is True
    assert down.retry_after_s is not None and 0.0 <= down.retry_after_s <= 1.0
    assert "Service Unavailable" in down.message
    bare = upstream_failure("d", 502, b"", None)
    assert isinstance(bare, UpstreamError) and bare.retry_after_s is None


def test_a_missing_model_upstream_is_not_retryable() -> None:
    err = upstream_failure("d", 404, _body("model 'x' not found", kind="not_found_error"), None)
    assert isinstance(err, UpstreamError)
    assert err.retryable is False
    assert err.code != "upstream_auth"
