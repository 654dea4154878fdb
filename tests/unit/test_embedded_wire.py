"""The embedded backend's pure parts: Gemma's turn format, request mapping, capabilities."""

from __future__ import annotations

from typing import Any

from hedge.backends.embedded import gemma_turns, to_wire, unsupported
from hedge.config import SamplingDefaults
from hedge.types import ChatRequest


def req(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return ChatRequest.model_validate(body)


def test_gemma_turns_folds_system_into_first_user_turn() -> None:
    prompt = gemma_turns(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert prompt == (
        "<start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n"
        "<start_of_turn>model\nHi.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_turns_with_only_a_system_message_still_asks() -> None:
    assert gemma_turns([{"role": "system", "content": "S"}]) == (
        "<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>model\n"
    )


def test_to_wire_applies_defaults_only_where_the_client_was_silent() -> None:
    defaults = SamplingDefaults(temperature=0.2, max_tokens=64)
    silent = to_wire(req(), defaults)
    assert silent["temperature"] == 0.2 and silent["max_tokens"] == 64 and silent["top_p"] == 1.0
    explicit = to_wire(req(temperature=0, max_completion_tokens=5, top_p=0.5), defaults)
    assert explicit["temperature"] == 0 and explicit["max_tokens"] == 5
    assert explicit["top_p"] == 0.5


def test_to_wire_maps_roles_parts_stop_and_seed() -> None:
    kwargs = to_wire(
        req(
            messages=[
                {"role": "developer", "content": "rules"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            stop="END",
            seed=7,
        ),
        SamplingDefaults(),
    )
    assert kwargs["messages"] == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "ab"},
    ]
    assert kwargs["stop"] == ["END"] and kwargs["seed"] == 7
    assert kwargs["temperature"] == 1.0  # OpenAI's default when nothing else is said


def test_to_wire_turns_response_format_into_a_grammar_request() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    kwargs = to_wire(
        req(
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        ),
        SamplingDefaults(),
    )
    assert kwargs["response_format"] == {"type": "json_object", "schema": schema}
    plain = to_wire(req(response_format={"type": "json_object"}), SamplingDefaults())
    assert plain["response_format"] == {"type": "json_object"}
    assert "response_format" not in to_wire(
        req(response_format={"type": "text"}), SamplingDefaults()
    )


def test_unsupported_says_why() -> None:
    assert unsupported(req()) is None
    assert unsupported(req(n=1)) is None
    n2 = unsupported(req(n=2))
    assert n2 is not None and "n > 1" in n2
    tools = [{"type": "function", "function": {"name": "f"}}]
    tool_reason = unsupported(req(tools=tools))
    assert tool_reason is not None and "tools" in tool_reason
    extra = unsupported(req(top_k=40, mirostat=1))
    assert extra is not None and "mirostat, top_k" in extra
    image = unsupported(
        req(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        )
    )
    assert image is not None and "messages[0]" in image
    logprobs = unsupported(req(logprobs=True))
    assert logprobs is not None and "logprobs" in logprobs
