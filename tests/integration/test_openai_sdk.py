"""The official `openai` SDK, sync and async, against hedge's built-in default config.

Everything here runs the two embedded models for real, so budgets stay small.
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from tests.conftest import Gateway

MODELS = ["smollm2", "gemma-3-270m"]
DEPLOYMENT = {"smollm2": "smollm2-local", "gemma-3-270m": "gemma3-local"}
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colors."}]
# Greedy decoding with a seed: the same request gives the same tokens every time.
TEMPERATURE, SEED, MAX_TOKENS = 0, 7, 16


def sync_client(gw: Gateway) -> OpenAI:
    # max_retries=0: a retrying client would hide failures the gateway should not have.
    return OpenAI(base_url=gw.v1, api_key="any-key", max_retries=0, timeout=120)


def async_client(gw: Gateway) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gw.v1, api_key="any-key", max_retries=0, timeout=120)


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finishes_of(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def check_completion(whole: ChatCompletion, model: str) -> str:
    assert whole.object == "chat.completion"
    assert whole.model == model
    (choice,) = whole.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content, "the model produced no text"
    assert choice.finish_reason in ("stop", "length")
    usage = whole.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    return content


@pytest.mark.parametrize("model", MODELS)
def test_sync_stream_matches_completion_with_usage(embedded_gateway: Gateway, model: str) -> None:
    client = sync_client(embedded_gateway)
    whole = client.chat.completions.create(
        model=model, messages=PROMPT, temperature=TEMPERATURE, seed=SEED, max_tokens=MAX_TOKENS
    )
    content = check_completion(whole, model)

    stream = client.chat.completions.create(
        model=model,
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
        temperature=TEMPERATURE,
        seed=SEED,
        max_tokens=MAX_TOKENS,
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text_of(chunks) == content
    assert finishes_of(chunks) == [whole.choices[0].finish_reason]
    # The usage chunk comes last, with no choices, and agrees with the non-streamed count.
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and whole.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("model", MODELS)
def test_async_stream_matches_completion(embedded_gateway: Gateway, model: str) -> None:
    async def main() -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
        client = async_client(embedded_gateway)
        try:
            whole = await client.chat.completions.create(
                model=model,
                messages=PROMPT,
                temperature=TEMPERATURE,
                seed=SEED,
                max_tokens=MAX_TOKENS,
            )
            stream = await client.chat.completions.create(
                model=model,
                messages=PROMPT,
                stream=True,
                temperature=TEMPERATURE,
                seed=SEED,
                max_tokens=MAX_TOKENS,
            )
            chunks = [chunk async for chunk in stream]
        finally:
            await client.close()
        return whole, chunks

    whole, chunks = asyncio.run(main())
    content = check_completion(whole, model)
    assert text_of(chunks) == content
    assert finishes_of(chunks) == [whole.choices[0].finish_reason]
    # Without stream_options the client gets no usage chunk.
    assert all(c.choices and c.usage is None for c in chunks)


def test_models_list_names_the_four_routes(embedded_gateway: Gateway) -> None:
    models = sync_client(embedded_gateway).models.list()
    assert sorted(m.id for m in models) == ["default", "gemma-3-270m", "minilm", "smollm2"]
    assert all(m.object == "model" for m in models)


@pytest.mark.parametrize(
    ("route", "deployment"),
    [("smollm2", "smollm2-local"), ("gemma-3-270m", "gemma3-local"), ("default", "smollm2-local")],
)
def test_response_headers_trace_the_request(
    embedded_gateway: Gateway, route: str, deployment: str
) -> None:
    client = sync_client(embedded_gateway)
    raw = client.chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
    )
    assert raw.status_code == 200
    assert raw.headers["x-hedge-deployment"] == deployment
    assert raw.headers["x-hedge-attempts"] == "1"
    assert float(raw.headers["x-hedge-overhead-ms"]) >= 0.0
    completion = raw.parse()
    assert raw.headers["x-request-id"] == completion.id
    assert completion.model == route


def test_streamed_response_headers(embedded_gateway: Gateway) -> None:
    client = sync_client(embedded_gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        temperature=0,
        stream=True,
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-hedge-deployment"] == "gemma3-local"
    assert raw.headers["x-hedge-attempts"] == "1"
    assert float(raw.headers["x-hedge-overhead-ms"]) >= 0.0
    chunks = list(raw.parse())
    assert finishes_of(chunks) == ["length"]


def test_json_object_mode_yields_json(embedded_gateway: Gateway) -> None:
    client = sync_client(embedded_gateway)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": 'Return a JSON object with a key "color" set to a color name.'}
    ]
    # Left to itself the model answers this with code, not JSON...
    free = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, seed=1, max_tokens=12
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content or "")
    # ...and llama.cpp's JSON grammar makes it answer in JSON.
    constrained = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        temperature=0,
        seed=1,
        max_tokens=48,
        response_format={"type": "json_object"},
    )
    value = json.loads(constrained.choices[0].message.content or "")
    assert isinstance(value, dict)
    assert "color" in value


@pytest.mark.parametrize("model", MODELS)
def test_max_tokens_cuts_with_finish_reason_length(embedded_gateway: Gateway, model: str) -> None:
    client = sync_client(embedded_gateway)
    whole = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a long story about the sea."}],
        max_tokens=5,
        temperature=0,
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 5


def test_unknown_model_is_a_not_found_error(embedded_gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sync_client(embedded_gateway).chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.code == "model_not_found"
    assert "smollm2" in info.value.message
