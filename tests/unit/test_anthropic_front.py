"""The Messages API front door's pure parts: request conversion and its validation, the message
a client gets back, the exact event stream, and errors in Anthropic's shape.

Recorded Messages API payloads (tests/fixtures/anthropic) are run through the outbound backend's
converters and back through these, so the front door is checked as the mirror image of the
anthropic backend; the official SDK's own models and stream accumulator read what is rendered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from hedge.backends import openai_compat
from hedge.backends.anthropic import THINKING_BUDGET, StreamTranslator, from_wire, to_wire
from hedge.backends.base import unknown_fields
from hedge.backends.quirks import quirks_for
from hedge.config import AnthropicDeployment, SamplingDefaults
from hedge.errors import (
    AllAttemptsFailed,
    AuthenticationFailed,
    HedgeError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    PolicyRefused,
    RateLimited,
    Unsupported,
    UpstreamError,
    UpstreamTimeout,
)
from hedge.server.anthropic_api import (
    StreamEncoder,
    chat_to_message,
    effort_for_budget,
    error_body,
    error_event,
    messages_to_chat,
    parse_messages_request,
    stop_reason,
)
from hedge.types import ChatResponse, Choice, Chunk, ToolCall, ToolCallDelta, Usage

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
DEPLOYMENT = AnthropicDeployment.model_validate({"kind": "anthropic", "upstream_model": "claude-x"})
WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
DROP = object()


def body(**fields: Any) -> dict[str, Any]:
    """A valid Messages request with `fields` changed (DROP removes one)."""
    data: dict[str, Any] = {
        "model": "smollm2",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not DROP}


def dump(data: dict[str, Any]) -> dict[str, Any]:
    return messages_to_chat(data).model_dump(exclude_none=True, by_alias=True)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def recorded_events(name: str) -> list[dict[str, Any]]:
    out = []
    for record in (FIXTURES / name).read_text().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in record.strip().splitlines())
        if lines:
            out.append(json.loads(lines["data"]))
    return out


def sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs, checking the framing exactly: each event is an `event:` line
    and a `data:` line whose `type` repeats the name, then a blank line."""
    assert raw.endswith(b"\n\n")
    out = []
    for record in raw[:-2].split(b"\n\n"):
        name, data = record.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        payload = json.loads(data.removeprefix(b"data: "))
        assert payload["type"] == name.removeprefix(b"event: ").decode()
        out.append((payload["type"], payload))
    return out


def accumulate(raw: bytes) -> anthropic.types.Message:
    """What the official SDK's stream helper builds from these events."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for name, payload in sse(raw):
        if name != "ping":
            snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    return snapshot


def encode(chunks: list[Chunk], model: str = "smollm2", request_id: str = "msg_1") -> bytes:
    encoder = StreamEncoder(model, request_id)
    return encoder.start() + b"".join(encoder.feed(c) for c in chunks) + encoder.finish()


# ---- request conversion -------------------------------------------------------------------


def test_minimal_request() -> None:
    assert dump(body()) == {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 64,
        "stream": False,
    }


def test_every_scalar_field() -> None:
    got = dump(
        body(
            system="Be brief.",
            temperature=0.5,
            top_p=0.9,
            stop_sequences=["\n\n", "END"],
            metadata={"user_id": "u-42"},
            stream=True,
            hedge={"policies": ["sovereign"], "data_class": "pii"},
        )
    )
    assert got == {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "hedge": {"policies": ["sovereign"], "data_class": "pii"},
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["\n\n", "END"],
        "user": "u-42",
    }


def test_system_blocks_are_joined_and_cache_control_is_accepted() -> None:
    system = [
        {"type": "text", "text": "You are a helper."},
        {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}},
    ]
    (first, _) = messages_to_chat(body(system=system)).messages
    assert (first.role, first.content) == ("system", "You are a helper.\n\nAnswer in French.")


def test_top_k_travels_as_an_extra_that_only_openai_wires_take() -> None:
    request = messages_to_chat(body(top_k=40))
    assert request.model_extra == {"top_k": 40}
    wire = openai_compat.to_wire(request, "m", quirks_for("generic", {}), SamplingDefaults())
    assert wire["top_k"] == 40
    assert unknown_fields(request, "embedded") == (
        "parameter(s) top_k are not supported by embedded deployments"
    )


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high"),
     (60000, "high")],
)  # fmt: skip
def test_thinking_budget_becomes_an_effort(budget: int, effort: str) -> None:
    assert effort_for_budget(budget) == effort
    thinking = {"type": "enabled", "budget_tokens": budget}
    assert dump(body(max_tokens=budget + 1, thinking=thinking))["reasoning_effort"] == effort


def test_every_effort_survives_the_trip_through_its_budget() -> None:
    for effort, budget in THINKING_BUDGET.items():
        assert effort_for_budget(budget) == effort


@pytest.mark.parametrize(
    ("effort", "expected"),
    [("low", "low"), ("medium", "medium"), ("high", "high"), ("xhigh", "high"), ("max", "high")],
)
def test_output_config_effort(effort: str, expected: str) -> None:
    assert dump(body(output_config={"effort": effort}))["reasoning_effort"] == expected


def test_output_config_effort_wins_over_a_thinking_budget() -> None:
    got = dump(
        body(
            max_tokens=5000,
            thinking={"type": "enabled", "budget_tokens": 4096},
            output_config={"effort": "low"},
        )
    )
    assert got["reasoning_effort"] == "low"


def test_output_config_format_is_a_strict_json_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    got = dump(body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert got["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_disabled_thinking_asks_for_nothing() -> None:
    assert "reasoning_effort" not in dump(body(thinking={"type": "disabled"}))


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    got = dump(body(tools=[WEATHER], tool_choice=choice))
    assert got["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert {k: got[k] for k in ("tool_choice", "parallel_tool_calls") if k in got} == expected


def test_auto_or_none_without_tools_asks_for_nothing() -> None:
    for kind in ("auto", "none"):
        assert "tool_choice" not in dump(body(tool_choice={"type": kind}))


def test_a_tool_turn_becomes_openai_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "t2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": [{"type": "text", "text": "down"}],
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    got = dump(body(messages=messages, tools=[WEATHER]))["messages"]
    assert got == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "t2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
            "reasoning_content": "Two cities.",
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "t1"},
        {"role": "tool", "content": "Error: down", "tool_call_id": "t2"},
        {"role": "user", "content": "And tomorrow?"},
    ]


def test_system_messages_in_the_conversation_keep_their_place() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {
            "role": "system",
            "content": [{"type": "text", "text": "Now"}, {"type": "text", "text": "French."}],
        },
        {"role": "user", "content": "Bye"},
    ]
    assert dump(body(messages=messages, system="Top."))["messages"] == [
        {"role": "system", "content": "Top."},
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "system", "content": "Now\n\nFrench."},
        {"role": "user", "content": "Bye"},
    ]


def test_top_level_cache_control_is_accepted() -> None:
    assert dump(body(cache_control={"type": "ephemeral"})) == dump(body())


def test_images_become_image_url_parts() -> None:
    content = [
        {"type": "text", "text": "Compare:"},
        {"type": "image", "source": PNG},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    ]
    (message,) = dump(body(messages=[{"role": "user", "content": content}]))["messages"]
    assert message["content"] == [
        {"type": "text", "text": "Compare:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
    ]


def test_an_empty_final_assistant_turn_is_dropped_and_a_prefill_kept() -> None:
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
    assert dump(body(messages=turns))["messages"] == [{"role": "user", "content": "Hi"}]
    turns[1]["content"] = "Hello"
    assert dump(body(messages=turns))["messages"][-1] == {"role": "assistant", "content": "Hello"}


def round_trip(data: dict[str, Any]) -> dict[str, Any]:
    """Messages -> ChatRequest -> the anthropic backend's Messages body."""
    return to_wire(messages_to_chat(data), DEPLOYMENT)


def test_round_trip_through_the_anthropic_backend_is_the_identity() -> None:
    """What comes in at this door goes out to an Anthropic upstream as it was sent (in the
    canonical form: string content as one text block, system blocks joined)."""
    original = {
        "model": "claude-x",
        "max_tokens": 300,
        "system": "Be kind.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image", "source": PNG},
                    {"type": "image", "source": {"type": "url", "url": "https://x.org/i.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "A cat. Checking the weather."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "It is"}]},
        ],
        "temperature": 0.3,
        "top_p": 0.8,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    assert round_trip(original) == original


def test_round_trip_of_thinking_keeps_the_budget_and_the_cap() -> None:
    for budget in THINKING_BUDGET.values():
        original = {
            "model": "claude-x",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "2+2?"}]}],
            "max_tokens": 20000,
            "thinking": {"type": "enabled", "budget_tokens": budget},
        }
        assert round_trip(original) == original


# ---- request validation -------------------------------------------------------------------

LONG = "x" * 65
TOOL_TURNS = [
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
]


def with_blocks(*blocks: Any, role: str = "user") -> dict[str, Any]:
    return body(messages=[{"role": role, "content": list(blocks)}])


def after_tool_use(*blocks: Any) -> dict[str, Any]:
    return body(messages=[*TOOL_TURNS, {"role": "user", "content": list(blocks)}])


def result(tool_use_id: str = "t1", **fields: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, **fields}


# (id, body, param, words the message must contain)
BAD: list[tuple[str, Any, str | None, tuple[str, ...]]] = [
    ("not-an-object", [1], None, ("must be a JSON object, not an array",)),
    ("missing-model", body(model=DROP), "model", ("required",)),
    ("missing-max-tokens", body(max_tokens=DROP), "max_tokens", ("required",)),
    ("max-tokens-0", body(max_tokens=0), "max_tokens", ("greater than or equal to 1",)),
    ("max-tokens-string", body(max_tokens="5"), "max_tokens", ("valid integer", "quotes")),
    ("missing-messages", body(messages=DROP), "messages", ("required",)),
    ("no-messages", body(messages=[]), "messages", ("at least 1 item",)),
    ("only-system", body(messages=[{"role": "system", "content": "x"}]), "messages",
     ("must be a user message",)),
    ("wizard-role", body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role",
     ("'user', 'assistant' or 'system'",)),
    ("system-image", body(messages=[{"role": "system", "content": [{"type": "image",
     "source": PNG}]}, {"role": "user", "content": "x"}]), "messages[0].content[0].type",
     ("the types taken are text.",)),
    ("system-between-call-and-result", body(messages=[*TOOL_TURNS, {"role": "system",
     "content": "x"}]), "messages[2].content", ("need a tool_result",)),
    ("assistant-first", body(messages=[{"role": "assistant", "content": "x"}]),
     "messages[0].role", ("first message must have role 'user'",)),
    ("user-user", body(messages=[{"role": "user", "content": "a"}, {"role": "user",
     "content": "b"}]), "messages[1].role", ("alternate",)),
    ("content-number", body(messages=[{"role": "user", "content": 4}]), "messages[0].content",
     ("valid list or a valid string",)),
    ("empty-user-content", body(messages=[{"role": "user", "content": ""}]),
     "messages[0].content", ("must not be empty",)),
    ("empty-text-block", with_blocks({"type": "text", "text": ""}),
     "messages[0].content[0].text", ("non-empty",)),
    ("block-not-object", with_blocks("hi"), "messages[0].content[0]", ("an object",)),
    ("block-without-type", with_blocks({"text": "hi"}), "messages[0].content[0].type",
     ("required",)),
    ("unknown-block", with_blocks({"type": "video", "url": "x"}), "messages[0].content[0].type",
     ("unknown content block type 'video'",)),
    ("text-block-extra", with_blocks({"type": "text", "text": "a", "bold": True}),
     "messages[0].content[0].bold", ("unknown field",)),
    ("image-without-media-type", with_blocks({"type": "image", "source": {"type": "base64",
     "data": "AA=="}}), "messages[0].content[0].source.media_type", ("needs 'media_type'",)),
    ("image-bmp", with_blocks({"type": "image", "source": {**PNG, "media_type": "image/bmp"}}),
     "messages[0].content[0].source.media_type", ("image/bmp",)),
    ("image-ftp", with_blocks({"type": "image", "source": {"type": "url", "url": "ftp://x"}}),
     "messages[0].content[0].source.url", ("http(s)",)),
    ("tool-use-in-user", with_blocks({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
     "messages[0].content[0]", ("only appear in a assistant message",)),
    ("tool-use-input-string", body(messages=[{"role": "user", "content": "q"}, {"role":
     "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}]),
     "messages[1].content[0].input", ("an object",)),
    ("tool-result-unknown-id", after_tool_use(result("t9")), "messages[2].content[0].tool_use_id",
     ("'t9' does not answer", "t1")),
    ("tool-result-twice", after_tool_use(result(), result()),
     "messages[2].content[1].tool_use_id", ("again",)),
    ("tool-result-first", with_blocks(result()), "messages[0].content[0].tool_use_id",
     ("ids: none",)),
    ("tool-use-unanswered", body(messages=[*TOOL_TURNS, {"role": "user", "content": "hm"}]),
     "messages[2].content", ("t1", "need a tool_result")),
    ("tool-use-last", body(messages=TOOL_TURNS), "messages[1].content",
     ("ends with tool_use",)),
    ("tool-result-bad-part", after_tool_use(result(content=[{"type": "tool_use"}])),
     "messages[2].content[0].content[0].type", ("the types taken are text, image",)),
    ("temperature-1.5", body(temperature=1.5), "temperature", ("less than or equal to 1",)),
    ("temperature-string", body(temperature="0.2"), "temperature", ("without quotes",)),
    ("top-p-2", body(top_p=2), "top_p", ("less than or equal to 1",)),
    ("top-k-negative", body(top_k=-1), "top_k", ("greater than or equal to 0",)),
    ("stop-5", body(stop_sequences=list("abcde")), "stop_sequences", ("at most 4",)),
    ("stream-string", body(stream="yes"), "stream", ("valid boolean",)),
    ("metadata-extra", body(metadata={"user": "x"}), "metadata.user", ("unknown field",)),
    ("unknown-field", body(n=2), "n", ("unknown field",)),
    ("tool-without-schema", body(tools=[{"name": "f"}]), "tools[0].input_schema",
     ("required",)),
    ("tool-schema-array", body(tools=[{"name": "f", "input_schema": {"type": "array"}}]),
     "tools[0].input_schema.type", ("type 'object'",)),
    ("tool-long-name", body(tools=[{**WEATHER, "name": LONG}]), "tools[0].name",
     ("1-64 characters",)),
    ("server-tool", body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
     "tools[0].type", ("'custom'",)),
    ("tool-choice-unknown", body(tools=[WEATHER], tool_choice={"type": "tool", "name": "x"}),
     "tool_choice.name", ("'x'", "get_weather")),
    ("tool-choice-any-no-tools", body(tool_choice={"type": "any"}), "tool_choice",
     ("non-empty 'tools'",)),
    ("tool-choice-word", body(tools=[WEATHER], tool_choice="auto"), "tool_choice",
     ("an object",)),
    ("thinking-small", body(thinking={"type": "enabled", "budget_tokens": 100}),
     "thinking.budget_tokens", ("at least 1024",)),
    ("thinking-over-cap", body(max_tokens=2000, thinking={"type": "enabled",
     "budget_tokens": 2000}), "thinking.budget_tokens", ("less than max_tokens",)),
    ("thinking-no-budget", body(thinking={"type": "enabled"}), "thinking.budget_tokens",
     ("needs 'budget_tokens'",)),
    ("hedge-unknown", body(hedge={"policy": "x"}), "hedge.policy", ("unknown field",)),
    ("effort-extreme", body(output_config={"effort": "extreme"}), "output_config.effort",
     ('"extreme"',)),
    ("format-json-object", body(output_config={"format": {"type": "json_object"}}),
     "output_config.format.type", ('"json_object"',)),
    ("format-without-schema", body(output_config={"format": {"type": "json_schema"}}),
     "output_config.format.schema", ("required",)),
]  # fmt: skip


@pytest.mark.parametrize(("data", "param", "says"), [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_bad_request(data: Any, param: str | None, says: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_to_chat(data)
    error = caught.value
    assert error.status == 400
    assert error.param == param, error.message
    if param is not None:
        assert error.message.startswith(f"Invalid '{param}': "), error.message
    for words in says:
        assert words in error.message, error.message


def test_real_block_types_the_gateway_cannot_carry_are_unsupported() -> None:
    document = {"type": "document", "source": {"type": "text", "data": "x"}}
    with pytest.raises(Unsupported, match="'document' are not supported"):
        messages_to_chat(with_blocks(document))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "body is empty"),
        (b'{"model": ', "not valid JSON"),
        (b"\xff", "not valid UTF-8"),
        (b"null", "not null"),
    ],
)
def test_body_that_is_not_json(raw: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as caught:
        parse_messages_request(raw)
    assert caught.value.code == "invalid_json"


# ---- response -----------------------------------------------------------------------------


def response(**choice: Any) -> ChatResponse:
    fields: dict[str, Any] = {"index": 0, "content": "Hello", "finish_reason": "stop"}
    fields.update(choice)
    return ChatResponse(
        choices=(Choice(**fields),),
        usage=Usage(prompt_tokens=30, completion_tokens=7, cached_tokens=10),
        upstream_model="up",
    )


def test_chat_to_message_exact() -> None:
    assert chat_to_message(response(), "smollm2", "msg_1") == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "smollm2",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 10,
        },
    }


@pytest.mark.parametrize(
    ("finish", "tools", "stop", "expected"),
    [
        ("stop", False, None, "end_turn"),
        ("stop", False, "END", "stop_sequence"),
        ("length", False, None, "max_tokens"),
        ("length", True, None, "max_tokens"),
        ("tool_calls", True, None, "tool_use"),
        ("stop", True, None, "tool_use"),
        ("content_filter", False, None, "refusal"),
        (None, False, None, "end_turn"),
    ],
)
def test_stop_reason(finish: Any, tools: bool, stop: str | None, expected: str) -> None:
    assert stop_reason(finish, tools, stop) == expected


def test_stop_sequence_when_known() -> None:
    message = chat_to_message(response(stop_sequence="END"), "m", "msg_1")
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


def test_a_stop_sequence_beside_another_finish_is_not_reported() -> None:
    message = chat_to_message(response(finish_reason="length", stop_sequence="END"), "m", "x")
    assert (message["stop_reason"], message["stop_sequence"]) == ("max_tokens", None)


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    calls = (ToolCall("call_1", "get_weather", '{"city": "Paris"}'), ToolCall("call_2", "now", ""))
    message = chat_to_message(
        response(content=None, tool_calls=calls, finish_reason="tool_calls"), "m", "msg_1"
    )
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_tool_arguments_that_are_not_an_object_are_the_upstreams_fault(arguments: str) -> None:
    calls = (ToolCall("call_1", "f", arguments),)
    with pytest.raises(UpstreamError, match="not a JSON object"):
        chat_to_message(response(content=None, tool_calls=calls), "m", "msg_1")


def test_reasoning_becomes_a_thinking_block_first() -> None:
    message = chat_to_message(response(reasoning="Let me see."), "m", "msg_1")
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me see.", "signature": ""},
        {"type": "text", "text": "Hello"},
    ]


def test_refusal() -> None:
    message = chat_to_message(response(content=None, refusal="I can't help with that."), "m", "x")
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"


def test_empty_answer_has_no_blocks() -> None:
    assert chat_to_message(response(content=""), "m", "x")["content"] == []


@pytest.mark.parametrize(
    "name", ["text_response.json", "tool_use_response.json", "thinking_response.json"]
)
def test_recorded_messages_come_back_as_they_were(name: str) -> None:
    """A recorded Messages reply, through the anthropic backend into the neutral response and
    out of this door, is the same message (less what no neutral response keeps)."""
    recorded = fixture(name)
    message = chat_to_message(from_wire(recorded, "dep"), recorded["model"], recorded["id"])
    kept = [
        {**b, "signature": ""} if b["type"] == "thinking" else b
        for b in recorded["content"]
        if b["type"] != "redacted_thinking"
    ]
    assert message["content"] == kept
    assert message["stop_reason"] == recorded["stop_reason"]
    assert {k: message[k] for k in ("id", "model", "type", "role")} == {
        k: recorded[k] for k in ("id", "model", "type", "role")
    }
    usage, was = message["usage"], recorded["usage"]
    assert usage["output_tokens"] == was["output_tokens"]
    assert usage["cache_read_input_tokens"] == (was["cache_read_input_tokens"] or 0)
    # Cache writes are folded into input_tokens: the prompt adds up the same.
    assert sum(usage[k] for k in ("input_tokens", "cache_read_input_tokens")) == sum(
        was[k] or 0
        for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    anthropic.types.Message.model_validate(message)  # the SDK's own model takes it


# ---- stream -------------------------------------------------------------------------------


def test_exact_event_sequence() -> None:
    chunks = [
        Chunk(role="assistant"),
        Chunk(content=""),
        Chunk(reasoning="Hmm, "),
        Chunk(reasoning="weather."),
        Chunk(content="Let me "),
        Chunk(content="check."),
        Chunk(tool_calls=(ToolCallDelta(0, id="call_1", name="get_weather", arguments=""),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments='{"city": '),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments='"Paris"}'),)),
        Chunk(tool_calls=(ToolCallDelta(1, id="call_2", name="now", arguments="{}"),)),
        Chunk(finish_reason="tool_calls"),
        Chunk(usage=Usage(prompt_tokens=40, completion_tokens=12, cached_tokens=8)),
    ]
    zero = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }

    def delta(index: int, kind: str, **fields: str) -> tuple[str, dict[str, Any]]:
        payload = {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}
        return "content_block_delta", payload

    def start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        payload = {"type": "content_block_start", "index": index, "content_block": block}
        return "content_block_start", payload

    def stop(index: int) -> tuple[str, dict[str, Any]]:
        return "content_block_stop", {"type": "content_block_stop", "index": index}

    assert sse(encode(chunks)) == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "smollm2",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": zero,
                },
            },
        ),
        ("ping", {"type": "ping"}),
        start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, "thinking_delta", thinking="Hmm, "),
        delta(0, "thinking_delta", thinking="weather."),
        stop(0),
        start(1, {"type": "text", "text": ""}),
        delta(1, "text_delta", text="Let me "),
        delta(1, "text_delta", text="check."),
        stop(1),
        start(2, {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}),
        delta(2, "input_json_delta", partial_json='{"city": '),
        delta(2, "input_json_delta", partial_json='"Paris"}'),
        stop(2),
        start(3, {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}),
        delta(3, "input_json_delta", partial_json="{}"),
        stop(3),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {
                    "input_tokens": 32,
                    "output_tokens": 12,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 8,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_the_sdk_accumulates_the_stream_into_the_message() -> None:
    chunks = [
        Chunk(role="assistant"),
        Chunk(content="Checking "),
        Chunk(content="now."),
        Chunk(tool_calls=(ToolCallDelta(0, id="call_1", name="get_weather"),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments='{"city":'),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments=' "Oslo"}'),)),
        Chunk(finish_reason="tool_calls"),
        Chunk(usage=Usage(prompt_tokens=9, completion_tokens=5)),
    ]
    message = accumulate(encode(chunks, request_id="msg_7"))
    assert message.id == "msg_7"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    text, tool = message.content
    assert text.type == "text" and text.text == "Checking now."
    assert tool.type == "tool_use" and (tool.id, tool.name) == ("call_1", "get_weather")
    assert tool.input == {"city": "Oslo"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 5)


@pytest.mark.parametrize("name", ["text_stream.sse", "tool_use_stream.sse", "thinking_stream.sse"])
def test_recorded_streams_come_back_as_the_same_blocks(name: str) -> None:
    """A recorded Messages stream through the anthropic backend's translator and this encoder:
    the same blocks in the same order, the same content, stop reason and output count."""
    recorded = recorded_events(name)
    translator = StreamTranslator("dep")
    chunks = [c for event in recorded for c in translator.feed(event)]
    raw = encode(chunks)
    skeleton = [
        (e["type"], e.get("content_block", {}).get("type"))
        for e in recorded
        if e["type"] in ("content_block_start", "content_block_stop", "message_delta")
    ]
    assert [
        (name_, e.get("content_block", {}).get("type"))
        for name_, e in sse(raw)
        if name_ in ("content_block_start", "content_block_stop", "message_delta")
    ] == skeleton

    snapshot = None
    bufs: dict[int, bytes] = {}
    for event in recorded:
        if event["type"] not in ("ping", "error"):
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    ours = accumulate(raw)
    strip = {"signature", "citations"}
    assert [{k: v for k, v in b.to_dict().items() if k not in strip} for b in ours.content] == [
        {k: v for k, v in b.to_dict().items() if k not in strip} for b in snapshot.content
    ]
    assert ours.stop_reason == snapshot.stop_reason
    assert ours.usage.output_tokens == snapshot.usage.output_tokens


def test_empty_stream_still_closes_the_message() -> None:
    events = sse(encode([]))
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1]["delta"]["stop_reason"] == "end_turn"


def test_only_the_first_choice_is_rendered() -> None:
    events = sse(encode([Chunk(index=1, content="other"), Chunk(content="mine")]))
    assert [e["delta"]["text"] for n, e in events if n == "content_block_delta"] == ["mine"]


def test_length_finish_is_max_tokens() -> None:
    events = sse(encode([Chunk(content="a b"), Chunk(finish_reason="length")]))
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_a_replayed_whole_tool_call_opens_and_fills_its_block() -> None:
    """Cascades replay a whole answer as one chunk per choice (gateway.replay_as_stream)."""
    call = ToolCallDelta(0, id="call_9", name="f", arguments='{"a": 1}')
    message = accumulate(encode([Chunk(tool_calls=(call,), role="assistant")]))
    (block,) = message.content
    assert block.type == "tool_use" and block.input == {"a": 1}


def test_interleaved_tool_arguments_cannot_be_carried() -> None:
    encoder = StreamEncoder("m", "msg_1")
    encoder.feed(Chunk(tool_calls=(ToolCallDelta(0, id="a", name="f"),)))
    encoder.feed(Chunk(tool_calls=(ToolCallDelta(1, id="b", name="g"),)))
    with pytest.raises(UpstreamError, match="interleaved"):
        encoder.feed(Chunk(tool_calls=(ToolCallDelta(0, arguments="{}"),)))


def test_a_tool_call_without_a_name_is_the_upstreams_fault() -> None:
    with pytest.raises(UpstreamError, match="without its name"):
        StreamEncoder("m", "msg_1").feed(Chunk(tool_calls=(ToolCallDelta(0, arguments="{"),)))


def test_a_tool_call_without_an_id_gets_one() -> None:
    message = accumulate(encode([Chunk(tool_calls=(ToolCallDelta(0, name="f"),))]))
    assert message.content[0].type == "tool_use"
    assert message.content[0].id == "toolu_msg_1_0"


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (Unsupported("no"), 400, "invalid_request_error"),
        (AuthenticationFailed("who"), 401, "authentication_error"),
        (PolicyRefused("refused"), 403, "permission_error"),
        (ModelNotFound("gone"), 404, "not_found_error"),
        (MethodNotAllowed("GET"), 405, "invalid_request_error"),
        (PayloadTooLarge("big"), 413, "request_too_large"),
        (RateLimited("slow down"), 429, "rate_limit_error"),
        (AllAttemptsFailed("all failed"), 502, "api_error"),
        (Overloaded("queue full"), 503, "overloaded_error"),
        (NotReady("loading"), 503, "overloaded_error"),
        (UpstreamTimeout("late"), 504, "api_error"),
        (HedgeError("bug"), 500, "api_error"),
    ],
)
def test_error_body(error: HedgeError, status: int, kind: str) -> None:
    assert error.status == status
    assert error_body(error) == {"type": "error", "error": {"type": kind, "message": error.message}}


def test_error_body_keeps_hedge_details() -> None:
    error = PolicyRefused("Policy refuses every deployment")
    error.details["refusals"] = [{"deployment": "d", "policy": "p", "rule": "r", "reason": "x"}]
    assert error_body(error)["error"] == {
        "type": "permission_error",
        "message": "Policy refuses every deployment",
        "refusals": [{"deployment": "d", "policy": "p", "rule": "r", "reason": "x"}],
    }


def test_error_event() -> None:
    assert sse(error_event(AllAttemptsFailed("upstream broke"))) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "upstream broke"}})
    ]
