"""The anthropic backend's pure converters: to_wire, unsupported, from_wire, StreamTranslator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hedge.backends.anthropic import StreamTranslator, from_wire, to_wire, unsupported
from hedge.config import AnthropicDeployment
from hedge.errors import InvalidRequest, Unsupported, UpstreamError
from hedge.types import ChatRequest, Choice, Chunk, ToolCall, ToolCallDelta, Usage

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
DEPLOYMENT = AnthropicDeployment.model_validate({"kind": "anthropic", "upstream_model": "claude-x"})
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def req(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}
    return ChatRequest.model_validate({**body, **fields})


def deployment(**fields: Any) -> AnthropicDeployment:
    return AnthropicDeployment.model_validate(
        {"kind": "anthropic", "upstream_model": "claude-x", **fields}
    )


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def sse_events(name: str) -> list[dict[str, Any]]:
    """The data payloads of a recorded SSE file, checking each event: line matches its type."""
    events = []
    for record in (FIXTURES / name).read_text().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in record.strip().splitlines())
        if not lines:
            continue
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def translate(name: str) -> tuple[list[Chunk], StreamTranslator]:
    translator = StreamTranslator("claude-dep")
    chunks = [c for event in sse_events(name) for c in translator.feed(event)]
    return chunks, translator


# --- to_wire: conversation ---------------------------------------------------------------------


def test_minimal_request_body() -> None:
    assert to_wire(req(), DEPLOYMENT) == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 4096,
    }


def test_system_and_developer_messages_are_hoisted_and_joined() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Bye"},
    ]
    body = to_wire(req(messages=messages), DEPLOYMENT)
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Bye"}],
        }
    ]


def test_tool_round_trip_alternates_roles() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "function": {"name": "get_weather", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
        {"role": "assistant", "content": "Anything else?"},
    ]
    body = to_wire(req(messages=messages, tools=[WEATHER_TOOL]), DEPLOYMENT)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "rain"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "You're welcome."},
                {"type": "text", "text": "Anything else?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [('{"city": "Par', "is not valid JSON"), ('["Paris"]', "must be a JSON object")],
)
def test_bad_tool_call_arguments_name_the_message(arguments: str, complaint: str) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "function": {"name": "get_weather", "arguments": arguments}}
            ],
        },
    ]
    with pytest.raises(InvalidRequest) as info:
        to_wire(req(messages=messages), DEPLOYMENT)
    assert info.value.message.startswith("messages[1].tool_calls[0].function.arguments ")
    assert complaint in info.value.message
    assert info.value.param == "messages[1]"


def test_image_parts_become_image_blocks() -> None:
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    body = to_wire(req(messages=[{"role": "user", "content": content}]), DEPLOYMENT)
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("data:image/png,rawbytes", "must be base64"),
        ("ftp://example.com/cat.jpg", "must be a data: or http(s) URL"),
    ],
)
def test_bad_image_urls_are_refused(url: str, complaint: str) -> None:
    content = [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(InvalidRequest) as info:
        to_wire(req(messages=[{"role": "user", "content": content}]), DEPLOYMENT)
    assert info.value.message.startswith("messages[0].content[1]: ")
    assert complaint in info.value.message


# --- to_wire: parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "dep", "expected"),
    [
        ({}, {}, 4096),
        ({}, {"default_max_tokens": 300}, 300),
        ({}, {"defaults": {"max_tokens": 200}, "default_max_tokens": 300}, 200),
        ({"max_tokens": 50}, {"defaults": {"max_tokens": 200}}, 50),
        ({"max_tokens": 50, "max_completion_tokens": 70}, {}, 70),
    ],
)
def test_max_tokens_precedence(fields: dict[str, Any], dep: dict[str, Any], expected: int) -> None:
    assert to_wire(req(**fields), deployment(**dep))["max_tokens"] == expected


def test_sampling_stop_user_and_stream() -> None:
    body = to_wire(
        req(temperature=0.3, top_p=0.9, stop="END", user="u-42", stream=True), DEPLOYMENT
    )
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-42"}
    assert body["stream"] is True


def test_deployment_defaults_fill_gaps_and_temperature_is_capped_at_one() -> None:
    dep = deployment(defaults={"temperature": 1.5, "top_p": 0.8})
    body = to_wire(req(stop=["a", "b"]), dep)
    assert (body["temperature"], body["top_p"], body["stop_sequences"]) == (1.0, 0.8, ["a", "b"])


def test_request_temperature_above_one_is_refused_not_clamped() -> None:
    reason = "temperature 1.5 is above 1, the highest anthropic deployments accept"
    assert (unsupported(req(temperature=1.5)) or "").startswith(reason)
    with pytest.raises(Unsupported, match=reason):
        to_wire(req(temperature=1.5), DEPLOYMENT)
    assert to_wire(req(temperature=1.0), DEPLOYMENT)["temperature"] == 1.0


def test_tools_map_to_input_schema() -> None:
    bare = {"type": "function", "function": {"name": "ping"}}
    body = to_wire(req(tools=[WEATHER_TOOL, bare]), DEPLOYMENT)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "ping", "input_schema": {"type": "object"}},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("none", None, {"type": "none"}),
        ("none", False, {"type": "none"}),
        ("auto", None, {"type": "auto"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", None, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("required", True, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL], "parallel_tool_calls": parallel}
    if choice is not None:
        fields["tool_choice"] = choice
    assert to_wire(req(**fields), DEPLOYMENT)["tool_choice"] == expected


# --- to_wire: thinking -------------------------------------------------------------------------


@pytest.mark.parametrize(("effort", "budget"), [("low", 1024), ("medium", 4096), ("high", 16384)])
def test_reasoning_effort_without_a_cap_adds_the_budget_on_top(effort: str, budget: int) -> None:
    body = to_wire(req(reasoning_effort=effort), DEPLOYMENT)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == 4096 + budget


def test_reasoning_effort_under_a_client_cap_shrinks_the_budget() -> None:
    body = to_wire(req(reasoning_effort="high", max_completion_tokens=3000), DEPLOYMENT)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2999}
    assert body["max_tokens"] == 3000
    body = to_wire(req(reasoning_effort="low", max_tokens=8000), DEPLOYMENT)
    assert (body["thinking"]["budget_tokens"], body["max_tokens"]) == (1024, 8000)


@pytest.mark.parametrize("effort", ["none", "minimal"])
def test_low_efforts_leave_thinking_off(effort: str) -> None:
    body = to_wire(req(reasoning_effort=effort), DEPLOYMENT)
    assert "thinking" not in body
    assert body["max_tokens"] == 4096


def test_thinking_drops_sampling_defaults() -> None:
    dep = deployment(defaults={"temperature": 0.2, "top_p": 0.5})
    body = to_wire(req(reasoning_effort="medium"), dep)
    assert "temperature" not in body
    assert "top_p" not in body


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"max_tokens": 1024},
            "reasoning_effort 'low' needs max_tokens above 1024 on anthropic deployments",
        ),
        (
            {"temperature": 0.5},
            "a temperature other than 1 cannot be combined with reasoning_effort 'low' on "
            "anthropic deployments",
        ),
        (
            {"top_p": 0.5},
            "top_p below 0.95 cannot be combined with reasoning_effort 'low' on anthropic",
        ),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": "required"},
            "a forced tool_choice cannot be combined with reasoning_effort 'low'",
        ),
    ],
)
def test_thinking_conflicts_are_unsupported(fields: dict[str, Any], reason: str) -> None:
    request = req(reasoning_effort="low", **fields)
    assert (unsupported(request) or "").startswith(reason)
    with pytest.raises(Unsupported):
        to_wire(request, DEPLOYMENT)


# --- unsupported -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"n": 2}, "n > 1 is not supported by anthropic deployments"),
        ({"logprobs": True}, "logprobs are not supported by anthropic deployments"),
        (
            {"response_format": {"type": "json_object"}},
            "response_format 'json_object' is not supported by anthropic deployments "
            "(the Messages API has no JSON mode)",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format 'json_schema' is not supported by anthropic deployments "
            "(the Messages API has no JSON mode)",
        ),
        (
            {"seed": 7},
            "seed is not supported by anthropic deployments (the Messages API has no seed)",
        ),
        ({"presence_penalty": 0.5}, "presence_penalty is not supported by anthropic deployments"),
        (
            {"frequency_penalty": -1.0},
            "frequency_penalty is not supported by anthropic deployments",
        ),
        ({"logit_bias": {"50256": -100.0}}, "logit_bias is not supported by anthropic deployments"),
        ({"top_k": 40}, "parameter(s) top_k are not supported by anthropic deployments"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]: content parts of type 'input_audio' are not supported by "
            "anthropic deployments",
        ),
    ],
)
def test_unsupported_parameters_are_named(fields: dict[str, Any], reason: str) -> None:
    request = req(**fields)
    assert unsupported(request) == reason
    with pytest.raises(Unsupported) as info:
        to_wire(request, DEPLOYMENT)
    assert info.value.message == reason


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"n": 1, "logprobs": False, "presence_penalty": 0.0, "logit_bias": {}},
        {"response_format": {"type": "text"}},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"reasoning_effort": "high", "top_p": 0.95, "max_tokens": 2048},
        {"reasoning_effort": "medium", "temperature": 1.0},
    ],
)
def test_supported_requests_pass(fields: dict[str, Any]) -> None:
    assert unsupported(req(**fields)) is None


# --- from_wire ---------------------------------------------------------------------------------


def test_text_response() -> None:
    response = from_wire(fixture("text_response.json"), "claude-dep")
    assert response.choices == (
        Choice(index=0, content="Hello! How can I help you today?", finish_reason="stop"),
    )
    assert response.usage == Usage(prompt_tokens=2160, completion_tokens=11, cached_tokens=2048)
    assert response.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert response.upstream_model == "claude-sonnet-4-5-20250929"


def test_tool_use_response() -> None:
    (choice,) = from_wire(fixture("tool_use_response.json"), "claude-dep").choices
    assert choice.content == "I'll check the current weather in San Francisco for you."
    assert choice.finish_reason == "tool_calls"
    assert choice.tool_calls == (
        ToolCall(
            id="toolu_01A09q90qw90lq917835lq9",
            name="get_weather",
            arguments='{"location":"San Francisco, CA","unit":"celsius"}',
        ),
    )


def test_tool_use_only_response_has_no_content() -> None:
    payload = fixture("tool_use_response.json")
    payload["content"] = payload["content"][1:]
    (choice,) = from_wire(payload, "claude-dep").choices
    assert choice.content is None
    assert [c.name for c in choice.tool_calls] == ["get_weather"]


def test_thinking_response() -> None:
    response = from_wire(fixture("thinking_response.json"), "claude-dep")
    (choice,) = response.choices
    assert choice.reasoning == "27 * 453: 27 * 400 = 10800 and 27 * 53 = 1431, so 12231."
    assert choice.content == "27 * 453 = 12,231"
    assert choice.finish_reason == "length"
    assert response.usage == Usage(prompt_tokens=45, completion_tokens=310, reasoning_tokens=270)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    payload = {**fixture("text_response.json"), "stop_reason": stop_reason}
    assert from_wire(payload, "claude-dep").choices[0].finish_reason == finish


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {},
        {"content": "hello", "stop_reason": "end_turn"},
        {"content": [{"type": "text"}], "stop_reason": "end_turn"},
        {"content": [{"type": "text", "text": "hi"}]},
    ],
)
def test_malformed_payload_is_a_retryable_upstream_error(payload: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        from_wire(payload, "claude-dep")
    assert info.value.retryable is True
    assert info.value.message.startswith("deployment 'claude-dep' sent a malformed message")


# --- StreamTranslator --------------------------------------------------------------------------


def test_text_stream() -> None:
    chunks, translator = translate("text_stream.sse")
    assert chunks == [
        Chunk(role="assistant"),
        Chunk(content="Hello"),
        Chunk(content="! How can I help?"),
        Chunk(finish_reason="stop"),
        Chunk(usage=Usage(prompt_tokens=30, completion_tokens=15, cached_tokens=5)),
    ]
    assert translator.finished
    assert translator.stopped


def test_tool_use_stream() -> None:
    chunks, translator = translate("tool_use_stream.sse")
    first, second = "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "toolu_01Xq2kNoArgs000000000000"
    assert chunks == [
        Chunk(role="assistant"),
        Chunk(content="Okay, let's check the weather."),
        Chunk(tool_calls=(ToolCallDelta(0, id=first, name="get_weather"),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments='{"location":'),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments=' "San Francisco, CA"}'),)),
        Chunk(tool_calls=(ToolCallDelta(1, id=second, name="get_time"),)),
        Chunk(tool_calls=(ToolCallDelta(1, arguments="{}"),)),
        Chunk(finish_reason="tool_calls"),
        Chunk(usage=Usage(prompt_tokens=472, completion_tokens=89)),
    ]
    assert translator.finish_reason == "tool_calls"


def test_thinking_stream() -> None:
    chunks, _ = translate("thinking_stream.sse")
    assert chunks == [
        Chunk(role="assistant"),
        Chunk(reasoning="Let me add "),
        Chunk(reasoning="2 and 2."),
        Chunk(content="4"),
        Chunk(finish_reason="stop"),
        Chunk(usage=Usage(prompt_tokens=30, completion_tokens=42, reasoning_tokens=20)),
    ]


def test_error_event_raises_after_the_partial_text() -> None:
    translator = StreamTranslator("claude-dep")
    events = sse_events("error_stream.sse")
    seen = [c for event in events[:-1] for c in translator.feed(event)]
    assert seen == [Chunk(role="assistant"), Chunk(content="Partial")]
    with pytest.raises(UpstreamError) as info:
        translator.feed(events[-1])
    assert info.value.retryable is True
    assert info.value.message == (
        "deployment 'claude-dep' reported an error mid-stream: overloaded_error: Overloaded"
    )


def test_truncated_stream_is_not_finished() -> None:
    chunks, translator = translate("truncated_stream.sse")
    assert chunks == [Chunk(role="assistant"), Chunk(content="The answer is")]
    assert not translator.finished
    assert not translator.stopped


def test_a_start_block_with_text_or_input_emits_it() -> None:
    translator = StreamTranslator("claude-dep")
    text = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": "Hi"},
    }
    tool = {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
    }
    assert translator.feed(text) == [Chunk(content="Hi")]
    assert translator.feed(tool) == [
        Chunk(tool_calls=(ToolCallDelta(0, id="t1", name="f", arguments='{"a":1}'),))
    ]
    # The arguments came whole with the start, so the stop adds no "{}".
    assert translator.feed({"type": "content_block_stop", "index": 1}) == []


@pytest.mark.parametrize(
    "event",
    [
        {"type": "content_block_delta", "index": 0},
        {
            "type": "content_block_delta",
            "index": 5,
            "delta": {"type": "input_json_delta", "partial_json": "{"},
        },
        {"type": "message_start"},
        {"no": "type"},
        "message_stop",
    ],
)
def test_malformed_events_are_retryable_upstream_errors(event: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        StreamTranslator("claude-dep").feed(event)
    assert info.value.retryable is True
    assert info.value.message == "deployment 'claude-dep' sent a malformed stream event"


def test_unknown_event_types_are_skipped() -> None:
    translator = StreamTranslator("claude-dep")
    assert translator.feed({"type": "ping"}) == []
    assert translator.feed({"type": "some_future_event", "payload": 1}) == []
