"""hedge in front of an upstream no one here wrote: llama-cpp-python's own OpenAI-compatible
server, reached over HTTP through an `openai_compat` deployment with provider `llamacpp`.

Each answer through hedge is compared with the same request sent straight to the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.conftest import Gateway, run_gateway

ROUTE = "smol-upstream"
DEPLOYMENT = "llamacpp-smollm2"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]
# Greedy decoding with a seed, so hedge and a direct call must produce the same tokens.
TEMPERATURE, SEED, MAX_TOKENS = 0, 11, 24
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def upstream_gateway(
    llamacpp_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = f"""
deployments:
  {DEPLOYMENT}:
    kind: openai_compat
    hosting: self-hosted
    provider: llamacpp
    base_url: {llamacpp_server}
    upstream_model: smollm2
    timeouts: {{first_token: 60, total: 120}}
routes:
  {ROUTE}:
    deployments: [{DEPLOYMENT}]
"""
    with run_gateway(config, tmp_path_factory.mktemp("llamacpp-upstream")) as gw:
        yield gw


def via_hedge(gw: Gateway) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key="any-key", max_retries=0, timeout=120)


def direct(llamacpp_server: str) -> OpenAI:
    return OpenAI(base_url=llamacpp_server, api_key="any-key", max_retries=0, timeout=120)


def test_answers_round_trip_unchanged(upstream_gateway: Gateway, llamacpp_server: str) -> None:
    straight = direct(llamacpp_server).chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        temperature=TEMPERATURE,
        seed=SEED,
        max_tokens=MAX_TOKENS,
    )
    raw = via_hedge(upstream_gateway).chat.completions.with_raw_response.create(
        model=ROUTE, messages=MESSAGES, temperature=TEMPERATURE, seed=SEED, max_tokens=MAX_TOKENS
    )
    assert raw.headers["x-hedge-deployment"] == DEPLOYMENT
    assert raw.headers["x-hedge-attempts"] == "1"
    relayed = raw.parse()
    assert relayed.model == ROUTE  # the client sees the route it asked for
    (mine,), (theirs,) = relayed.choices, straight.choices
    assert mine.message.content
    assert mine.message.content == theirs.message.content
    assert mine.finish_reason == theirs.finish_reason
    assert relayed.usage is not None and straight.usage is not None
    assert relayed.usage.prompt_tokens == straight.usage.prompt_tokens
    assert relayed.usage.completion_tokens == straight.usage.completion_tokens
    assert relayed.usage.total_tokens == straight.usage.total_tokens


def test_streamed_chunks_concatenate_to_the_answer(upstream_gateway: Gateway) -> None:
    client = via_hedge(upstream_gateway)
    whole = client.chat.completions.create(
        model=ROUTE, messages=MESSAGES, temperature=TEMPERATURE, seed=SEED, max_tokens=MAX_TOKENS
    )
    raw = client.chat.completions.with_raw_response.create(
        model=ROUTE,
        messages=MESSAGES,
        stream=True,
        temperature=TEMPERATURE,
        seed=SEED,
        max_tokens=MAX_TOKENS,
    )
    assert raw.headers["x-hedge-deployment"] == DEPLOYMENT
    chunks = list(raw.parse())
    assert len(chunks) > 3  # really streamed, not one lump
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]


def test_max_tokens_reaches_the_upstream(upstream_gateway: Gateway) -> None:
    whole = via_hedge(upstream_gateway).chat.completions.create(
        model=ROUTE, messages=MESSAGES, temperature=0, max_tokens=3
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 3


def test_forced_tool_call_round_trips(upstream_gateway: Gateway) -> None:
    ask: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"}
    ]
    whole = via_hedge(upstream_gateway).chat.completions.create(
        model=ROUTE,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=48,
    )
    (choice,) = whole.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call_accumulates_cleanly(upstream_gateway: Gateway) -> None:
    """llama-cpp-python repeats the call's id and name in every delta; the SDK concatenates
    fragments, so without hedge's clean-up the name would come out as get_weatherget_weather..."""
    ask: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"}
    ]
    with via_hedge(upstream_gateway).chat.completions.stream(
        model=ROUTE,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=48,
    ) as stream:
        final = stream.get_final_completion()
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.id.startswith("call_") and call.id.count("call_") == 1
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_upstream_context_length_error_is_mapped(upstream_gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        via_hedge(upstream_gateway).chat.completions.create(
            model=ROUTE, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=5
        )
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 2048" in info.value.message
    assert DEPLOYMENT in info.value.message
