"""AnthropicBackend over a real socket against the loopback fake Messages API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hedge.backends.anthropic import AnthropicBackend
from hedge.backends.http import HttpPool
from hedge.config import AnthropicDeployment
from hedge.errors import Unsupported, UpstreamError
from hedge.types import ChatRequest, Chunk
from tests.fakes.anthropic_fake import API_KEY, CUT, ERROR, FakeAnthropic, running_fake

LOOKUP_TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object"}},
}

Scenario = Callable[[AnthropicBackend, FakeAnthropic], Awaitable[None]]


def req(text: str = "Hello there", **fields: Any) -> ChatRequest:
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": text}]
    return ChatRequest.model_validate({"model": "claude", "messages": messages, **fields})


def run(scenario: Scenario, api_key: str | None = API_KEY, **deployment: Any) -> None:
    async def main() -> None:
        async with running_fake() as fake:
            dep = AnthropicDeployment.model_validate(
                {"kind": "anthropic", "upstream_model": "claude-test", "base_url": fake.base_url}
                | deployment
            )
            pool = HttpPool()
            try:
                await scenario(AnthropicBackend("claude-dep", dep, api_key, pool), fake)
            finally:
                await pool.aclose()

    asyncio.run(main())


async def collect(backend: AnthropicBackend, request: ChatRequest) -> list[Chunk]:
    return [chunk async for chunk in backend.stream(request)]


def test_complete() -> None:
    async def scenario(backend: AnthropicBackend, fake: FakeAnthropic) -> None:
        response = await backend.complete(req())
        (choice,) = response.choices
        assert choice.content == "echo: Hello there"
        assert choice.finish_reason == "stop"
        assert response.usage.prompt_tokens == 2
        assert response.upstream_model == "claude-test"
        assert fake.hits == 1
        assert fake.bodies[0]["system"] == "Be kind."
        assert fake.bodies[0]["max_tokens"] == 4096
        assert "stream" not in fake.bodies[0]

    run(scenario)


def test_stream_matches_complete() -> None:
    async def scenario(backend: AnthropicBackend, fake: FakeAnthropic) -> None:
        whole = await backend.complete(req())
        chunks = await collect(backend, req(stream=True))
        assert chunks[0].role == "assistant"
        assert "".join(c.content or "" for c in chunks) == whole.choices[0].content
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
        usage = [c.usage for c in chunks if c.usage is not None]
        assert usage == [whole.usage]
        assert fake.bodies[-1]["stream"] is True
        assert fake.hits == 2

    run(scenario)


def test_tool_use_round_trip() -> None:
    async def scenario(backend: AnthropicBackend, fake: FakeAnthropic) -> None:
        asked = req("weather in Paris", tools=[LOOKUP_TOOL])
        (choice,) = (await backend.complete(asked)).choices
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.tool_calls
        assert (call.name, json.loads(call.arguments)) == ("lookup", {"text": "weather in Paris"})

        chunks = await collect(backend, req("weather in Paris", tools=[LOOKUP_TOOL], stream=True))
        deltas = [d for c in chunks for d in c.tool_calls]
        assert {d.index for d in deltas} == {0}
        assert [(d.id, d.name) for d in deltas if d.id] == [(call.id, "lookup")]
        assert "".join(d.arguments or "" for d in deltas) == '{"text": "weather in Paris"}'
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]

        answered = req(
            "weather in Paris",
            tools=[LOOKUP_TOOL],
            messages=[
                {"role": "user", "content": "weather in Paris"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
            ],
        )
        (final,) = (await backend.complete(answered)).choices
        assert (final.content, final.finish_reason) == ("echo: sunny, 21C", "stop")
        assert fake.bodies[-1]["messages"][1]["content"][0]["input"] == {"text": "weather in Paris"}

    run(scenario)


@pytest.mark.parametrize(
    ("api_key", "deployment"),
    [("sk-ant-wrong", {}), (API_KEY, {"anthropic_version": "2020-01-01"})],
)
def test_rejected_credentials_are_a_401_upstream_error(
    api_key: str, deployment: dict[str, Any]
) -> None:
    async def scenario(backend: AnthropicBackend, fake: FakeAnthropic) -> None:
        for attempt in (backend.complete(req()), collect(backend, req(stream=True))):
            with pytest.raises(UpstreamError) as info:
                await attempt
            assert info.value.upstream_status == 401
            assert info.value.code == "upstream_auth"
            assert info.value.retryable is False
            assert "deployment 'claude-dep' answered 401: " in info.value.message
        assert fake.hits == 2
        assert fake.bodies == []

    run(scenario, api_key, **deployment)


def test_truncated_stream_is_an_error_not_a_short_answer() -> None:
    async def scenario(backend: AnthropicBackend, fake: FakeAnthropic) -> None:
        seen: list[Chunk] = []
        with pytest.raises(UpstreamError) as info:
            async for chunk in backend.stream(req(CUT, stream=True)):
                seen.append(chunk)
        assert info.value.retryable is True
        assert info.value.message == (
            "deployment 'claude-dep' ended its stream before the answer was complete"
        )
        assert [c.content for c in seen] == [None, "echo"]
        assert all(c.finish_reason is None for c in seen)

    run(scenario)


def test_error_event_mid_stream() -> None:
    async def scenario(backend: AnthropicBackend, fake: FakeAnthropic) -> None:
        with pytest.raises(UpstreamError) as info:
            await collect(backend, req(ERROR, stream=True))
        assert info.value.retryable is True
        assert info.value.message.endswith("mid-stream: overloaded_error: Overloaded")

    run(scenario)


def test_unsupported_request_is_refused_before_sending() -> None:
    async def scenario(backend: AnthropicBackend, fake: FakeAnthropic) -> None:
        assert backend.unsupported(req(seed=1)) == (
            "seed is not supported by anthropic deployments (the Messages API has no seed)"
        )
        with pytest.raises(Unsupported):
            await backend.complete(req(temperature=1.7))
        with pytest.raises(Unsupported):
            await collect(backend, req(n=3, stream=True))
        assert fake.hits == 0

    run(scenario)


def test_status_follows_the_key() -> None:
    dep = AnthropicDeployment.model_validate(
        {"kind": "anthropic", "upstream_model": "claude-test", "api_key_env": "MY_CLAUDE_KEY"}
    )
    pool = HttpPool()
    missing = AnthropicBackend("claude-dep", dep, None, pool).status()
    assert (missing.state, missing.detail) == (
        "unavailable",
        "environment variable MY_CLAUDE_KEY is not set",
    )
    assert AnthropicBackend("claude-dep", dep, "sk-ant-x", pool).status().state == "ready"
