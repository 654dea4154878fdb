"""`parse_chat_request` and `describe_validation` on hand-made inputs: exact messages, exact
`param` paths, unions, and the fields real SDKs send that must not be refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from hedge.errors import InvalidRequest
from hedge.server.openai_api import describe_validation, parse_chat_request
from hedge.types import ChatRequest, ContentPart

HI = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "lookup"}}


def req(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": "m", "messages": [HI]}
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def parse(data: dict[str, Any]) -> ChatRequest:
    return parse_chat_request(json.dumps(data).encode())


def refusal(raw: bytes | dict[str, Any]) -> InvalidRequest:
    body = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(body)
    return caught.value


def described(data: Any) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate(data)
    return describe_validation(caught.value)


# ---- exact message and param per problem ------------------------------------------------

EXACT = [
    (req(model=None), "Invalid 'model': this field is required.", "model"),
    (
        req(model=7),
        "Invalid 'model': Input should be a valid string (got a number: 7).",
        "model",
    ),
    (
        req(messages=[]),
        "Invalid 'messages': List should have at least 1 item, not 0.",
        "messages",
    ),
    (
        req(messages=[HI, "hi"]),
        "Invalid 'messages[1]': Input should be an object (got a string: \"hi\").",
        "messages[1]",
    ),
    (
        req(messages=[{"content": "x"}]),
        "Invalid 'messages[0].role': this field is required.",
        "messages[0].role",
    ),
    (
        req(messages=[{"role": "robot", "content": "x"}]),
        "Invalid 'messages[0].role': Input should be 'system', 'developer', 'user', 'assistant'"
        " or 'tool' (got a string: \"robot\").",
        "messages[0].role",
    ),
    (
        req(messages=[{"role": "system"}]),
        "Invalid 'messages[0].content': a message with role 'system' needs 'content'.",
        "messages[0].content",
    ),
    (
        req(messages=[HI, {"role": "tool", "content": "4"}]),
        "Invalid 'messages[1].tool_call_id': a message with role 'tool' needs the 'id' of the "
        "tool call it answers.",
        "messages[1].tool_call_id",
    ),
    (
        req(messages=[{"role": "assistant"}]),
        "Invalid 'messages[0].content': an assistant message needs 'content' or 'tool_calls'.",
        "messages[0].content",
    ),
    (
        req(temperature="0.5"),
        "Invalid 'temperature': Input should be a valid number (got a string: \"0.5\"). "
        "Send the number without quotes.",
        "temperature",
    ),
    (
        req(temperature=2.5),
        "Invalid 'temperature': Input should be less than or equal to 2 (got a number: 2.5).",
        "temperature",
    ),
    (
        req(max_tokens=1.5),
        "Invalid 'max_tokens': Input should be a valid integer (got a number: 1.5). "
        "Send a whole number, such as 16.",
        "max_tokens",
    ),
    (
        req(max_tokens=False),
        "Invalid 'max_tokens': Input should be a valid integer (got a boolean: false).",
        "max_tokens",
    ),
    (
        req(stream="yes"),
        "Invalid 'stream': Input should be a valid boolean (got a string: \"yes\"). "
        "Send true or false, without quotes.",
        "stream",
    ),
    (
        req(stop=["a", "b", "c", "d", "e"]),
        "Invalid 'stop': List should have at most 4 items, not 5.",
        "stop",
    ),
    (
        req(stream_options={"include_usage": True}),
        "Invalid 'stream_options': 'stream_options' is only allowed when 'stream' is true.",
        "stream_options",
    ),
    (
        req(tools=[{"type": "function", "function": {"name": "get weather"}}]),
        "Invalid 'tools[0].function.name': function names must be 1-64 characters of letters, "
        "digits, '_' or '-' (got 'get weather').",
        "tools[0].function.name",
    ),
    (
        req(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "find"}}),
        "Invalid 'tool_choice': names function 'find', which is not among 'tools' (lookup).",
        "tool_choice",
    ),
    (
        req(tool_choice="auto"),
        "Invalid 'tool_choice': tool_choice 'auto' needs a non-empty 'tools' list.",
        "tool_choice",
    ),
    (
        req(response_format={"type": "json_schema"}),
        "Invalid 'response_format.json_schema': response_format of type 'json_schema' needs a "
        "'json_schema' object.",
        "response_format.json_schema",
    ),
    (
        req(top_logprobs=3),
        "Invalid 'top_logprobs': 'top_logprobs' needs 'logprobs' set to true.",
        "top_logprobs",
    ),
    (
        req(logit_bias={"the": 1}),
        "Invalid 'logit_bias.the': logit_bias keys must be token ids written as strings, such as "
        '"50256".',
        "logit_bias.the",
    ),
    (
        req(logit_bias={"50256": 101}),
        "Invalid 'logit_bias.50256': Input should be less than or equal to 100 (got a number: "
        "101).",
        "logit_bias.50256",
    ),
]


@pytest.mark.parametrize(("data", "message", "param"), EXACT, ids=[p for *_, p in EXACT])
def test_exact_message_and_param(data: dict[str, Any], message: str, param: str) -> None:
    assert described(data) == (message, param)
    error = refusal(data)
    assert (error.message, error.param, error.code, error.status) == (
        message,
        param,
        "invalid_request",
        400,
    )


# ---- param paths through nesting and unions -----------------------------------------------

PATHS = [
    (
        req(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0].text",
    ),
    (req(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0].type"),
    (req(messages=[{"role": "user", "content": [5]}]), "messages[0].content[0]"),
    (
        req(messages=[{"role": "user", "content": "x", "tool_calls": []}]),
        "messages[0].tool_calls",
    ),
    (
        req(
            messages=[
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}],
                }
            ]
        ),
        "messages[0].tool_calls[0].function.arguments",
    ),
    (req(stop=[1]), "stop[0]"),
    (req(tool_choice={"type": "function"}), "tool_choice.function"),
    (req(tools=[{"type": "function"}]), "tools[0].function"),
    (req(tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools[0].type"),
    # Field names that look like pydantic's union labels are still field names.
    (
        req(tools=[{"type": "function", "function": {"name": "f", "Params": {}}}]),
        "tools[0].function.Params",
    ),
    (
        req(tools=[{"type": "function", "function": {"name": "f", "x-y": 1}}]),
        "tools[0].function.x-y",
    ),
    (req(response_format={"type": "xml"}), "response_format.type"),
    (req(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
]


@pytest.mark.parametrize(("data", "param"), PATHS, ids=[p for _, p in PATHS])
def test_param_path(data: dict[str, Any], param: str) -> None:
    message, got = described(data)
    assert got == param
    assert message.startswith(f"Invalid '{param}': ")


def test_unknown_field_in_a_strict_object_is_named() -> None:
    message, param = described(req(tools=[{**TOOL, "extra": 1}]))
    assert (message, param) == (
        "Invalid 'tools[0].extra': unknown field; remove it or check its spelling.",
        "tools[0].extra",
    )


def test_union_type_mismatch_lists_every_accepted_kind() -> None:
    assert described(req(messages=[{"role": "user", "content": 5}])) == (
        "Invalid 'messages[0].content': Input should be a valid list or a valid string "
        "(got a number: 5).",
        "messages[0].content",
    )
    assert described(req(stop={"a": 1})) == (
        "Invalid 'stop': Input should be a valid list or a valid string (got an object: "
        '{"a":1}).',
        "stop",
    )


def test_union_member_that_got_further_wins() -> None:
    # A list of strings is a list (so the str branch is the wrong guess): blame the element.
    assert described(req(messages=[{"role": "user", "content": ["hi"]}])) == (
        "Invalid 'messages[0].content[0]': Input should be an object (got a string: \"hi\").",
        "messages[0].content[0]",
    )
    assert described(req(tool_choice="always")) == (
        "Invalid 'tool_choice': Input should be 'none', 'auto' or 'required' "
        '(got a string: "always").',
        "tool_choice",
    )


def test_top_level_problem_has_no_param() -> None:
    assert described([]) == (
        "Invalid request body: Input should be an object (got an array: []).",
        None,
    )


def test_long_inputs_are_shortened_in_the_message() -> None:
    message, _ = described(req(model=["x" * 500]))
    assert message.endswith("...).")
    assert len(message) < 150


# ---- bodies that are not JSON objects -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "The request body is empty: send a JSON object."),
        (b"  \n", "The request body is empty: send a JSON object."),
        (b"[1]", "The request body must be a JSON object, not an array."),
        (b'"x"', "The request body must be a JSON object, not a string."),
        (b"1.5", "The request body must be a JSON object, not a number."),
        (b"false", "The request body must be a JSON object, not a boolean."),
        (b"null", "The request body must be a JSON object, not null."),
        (
            b'{"model": "\xc3\x28"}',
            "The request body is not valid UTF-8 (byte 0xc3 at offset 11). Encode the JSON as "
            "UTF-8.",
        ),
    ],
)
def test_body_that_is_not_an_object(raw: bytes, message: str) -> None:
    error = refusal(raw)
    assert (error.message, error.code, error.param) == (message, "invalid_json", None)


def test_bad_json_says_where() -> None:
    error = refusal(b'{"model": "m",}')
    assert error.code == "invalid_json" and error.param is None
    assert error.message.startswith("The request body is not valid JSON (")
    assert "line 1 column" in error.message


# ---- what must be accepted ----------------------------------------------------------------


def test_content_string_or_parts() -> None:
    plain = parse(req())
    assert plain.messages[0].content == "hi"
    parts = parse(
        req(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
                    ],
                }
            ]
        )
    )
    content = parts.messages[0].content
    assert isinstance(content, list) and all(isinstance(p, ContentPart) for p in content)
    assert [p.type for p in content] == ["text", "image_url", "text"]
    assert content[1].model_extra == {"image_url": {"url": "data:,"}}
    assert content[2].model_extra == {"text": "b", "cache_control": {"type": "ephemeral"}}
    assert parts.messages[0].text() == "ab"


def test_unknown_top_level_fields_are_kept_in_model_extra() -> None:
    request = parse(req(top_k=40, chat_template_kwargs={"enable_thinking": False}))
    assert request.model_extra == {"top_k": 40, "chat_template_kwargs": {"enable_thinking": False}}
    assert parse(req()).model_extra == {}


def test_sdk_echoed_assistant_fields_are_accepted() -> None:
    echoed = {
        "role": "assistant",
        "content": "Paris.",
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
    }
    request = parse(req(messages=[HI, echoed, {"role": "user", "content": "And Rome?"}]))
    assistant = request.messages[1]
    assert assistant.content == "Paris."
    assert assistant.model_extra == {
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
    }


def test_assistant_with_tool_calls_and_null_content() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    request = parse(
        req(
            messages=[
                HI,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
            tools=[TOOL],
        )
    )
    assistant = request.messages[1]
    assert assistant.content is None
    assert assistant.tool_calls is not None
    assert [(t.id, t.function.name, t.function.arguments) for t in assistant.tool_calls] == [
        ("call_1", "lookup", "{}")
    ]
    assert request.messages[2].tool_call_id == "call_1"


def test_token_limit_prefers_max_completion_tokens() -> None:
    assert parse(req(max_tokens=10, max_completion_tokens=20)).token_limit == 20
    assert parse(req(max_completion_tokens=20)).token_limit == 20
    assert parse(req(max_tokens=10)).token_limit == 10
    assert parse(req()).token_limit is None


def test_stop_list() -> None:
    assert parse(req()).stop_list == []
    assert parse(req(stop="END")).stop_list == ["END"]
    assert parse(req(stop=["a", "b"])).stop_list == ["a", "b"]


def test_valid_edge_values_pass() -> None:
    request = parse(
        req(
            temperature=0,
            top_p=1,
            max_tokens=1,
            n=1,
            stop=["a", "b", "c", "d"],
            stream=True,
            stream_options={"include_usage": True},
            logit_bias={"50256": -100},
            tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "lookup"}},
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        )
    )
    assert request.temperature == 0 and request.wants_usage_in_stream
    assert request.response_format is not None and request.response_format.json_schema is not None
    assert request.response_format.json_schema.schema_ == {}
