"""Reasoning effort as an ops knob, and how a cascade stage reshapes a request."""

from __future__ import annotations

import pytest

from hedge.backends.openai_compat import to_wire
from hedge.backends.quirks import quirks_for, reasoning_fields
from hedge.compose.cascade import effort_for_budget, stage_request
from hedge.config import SamplingDefaults, Stage
from hedge.types import ChatRequest


def req(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


@pytest.mark.parametrize(
    ("style", "effort", "expected"),
    [
        ("reasoning_effort", "low", {"reasoning_effort": "low"}),
        ("reasoning_effort", "none", {"reasoning_effort": "none"}),
        ("enable_thinking_kwarg", "high", {"chat_template_kwargs": {"enable_thinking": True}}),
        ("enable_thinking_kwarg", "none", {"chat_template_kwargs": {"enable_thinking": False}}),
        ("enable_thinking", "medium", {"enable_thinking": True}),
        ("enable_thinking", "minimal", {"enable_thinking": False}),
        ("thinking_type", "low", {"thinking": {"type": "enabled"}}),
        ("thinking_type", "none", {"thinking": {"type": "disabled"}}),
        ("drop", "high", {}),
    ],
)
def test_reasoning_fields(style: str, effort: str, expected: dict[str, object]) -> None:
    assert reasoning_fields(style, effort) == expected


@pytest.mark.parametrize(
    ("provider", "key", "value"),
    [
        ("openai", "reasoning_effort", "high"),
        ("vllm", "chat_template_kwargs", {"enable_thinking": True}),
        ("zai", "thinking", {"type": "enabled"}),
        ("dashscope", "enable_thinking", True),
    ],
)
def test_each_provider_gets_its_own_switch(provider: str, key: str, value: object) -> None:
    body = to_wire(req(reasoning_effort="high"), "up", quirks_for(provider, {}), SamplingDefaults())
    assert body[key] == value
    if key != "reasoning_effort":
        assert "reasoning_effort" not in body


def test_providers_without_a_switch_get_nothing() -> None:
    body = to_wire(
        req(reasoning_effort="high"), "up", quirks_for("deepseek", {}), SamplingDefaults()
    )
    assert not {"reasoning_effort", "thinking", "enable_thinking"} & set(body)


def test_budgets_map_to_coarse_efforts() -> None:
    assert [effort_for_budget(n) for n in (0, 1024, 2048, 4096, 8192, 20000)] == [
        "none",
        "low",
        "low",
        "medium",
        "medium",
        "high",
    ]


def test_stage_request_applies_params_reasoning_and_never_streams() -> None:
    stage = Stage.model_validate(
        {"deployments": ["d"], "reasoning": "low", "params": {"temperature": 0, "max_tokens": 64}}
    )
    shaped = stage_request(req(stream=True, temperature=0.9, max_tokens=200), stage, "high")
    assert shaped.temperature == 0 and shaped.max_tokens == 64
    assert shaped.reasoning_effort == "low"  # the stage beats the route
    assert shaped.stream is False and shaped.stream_options is None
    assert shaped.messages == req().messages


def test_stage_request_keeps_a_smaller_client_limit_and_the_route_effort() -> None:
    stage = Stage.model_validate({"deployments": ["d"], "params": {"max_tokens": 64}})
    shaped = stage_request(req(max_completion_tokens=10), stage, "medium")
    assert shaped.max_tokens == 10 and shaped.max_completion_tokens is None
    assert shaped.reasoning_effort == "medium"
    budget = Stage.model_validate({"deployments": ["d"], "reasoning": 16000})
    assert stage_request(req(), budget, None).reasoning_effort == "high"
