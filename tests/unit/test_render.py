"""The exact JSON a client sees: completions, usage, stream chunks and in-stream errors."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from hedge.errors import AllAttemptsFailed, InvalidRequest
from hedge.server.openai_api import (
    DONE,
    ChunkRenderer,
    error_event,
    render_completion,
    render_usage,
)
from hedge.types import ChatResponse, Choice, Chunk, ToolCall, ToolCallDelta, Usage

NOW = 1_700_000_000


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW + 0.75)


def events(raw: bytes | None) -> list[dict[str, Any]]:
    """Parse SSE bytes into their JSON payloads, checking the framing exactly."""
    assert raw is not None
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    frames = raw[: -len(b"\n\n")].split(b"\n\ndata: ")
    return [json.loads(f.removeprefix(b"data: ")) for f in frames]


HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": NOW, "model": "smollm2"}


def chunk(choice: dict[str, Any], *, usage: bool) -> dict[str, Any]:
    out: dict[str, Any] = {**HEAD, "choices": [{**choice, "logprobs": None}]}
    if usage:
        out["usage"] = None
    return out


# ---- usage and completions -----------------------------------------------------------------


def test_render_usage_plain() -> None:
    assert render_usage(Usage(prompt_tokens=12, completion_tokens=5)) == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
    }


def test_render_usage_with_details() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=40, cached_tokens=64, reasoning_tokens=30)
    assert render_usage(usage) == {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }


def test_render_completion_text() -> None:
    response = ChatResponse(
        choices=(Choice(index=0, content="Hello.", finish_reason="stop"),),
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        upstream_model="SmolLM2-135M",
        created=1_600_000_000,
        system_fingerprint="fp_1",
    )
    assert render_completion(response, "smollm2", "chatcmpl-9") == {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1_600_000_000,
        "model": "smollm2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "system_fingerprint": "fp_1",
    }


def test_render_completion_tool_calls_reasoning_refusal_and_clock() -> None:
    response = ChatResponse(
        choices=(
            Choice(
                index=0,
                content=None,
                finish_reason="tool_calls",
                tool_calls=(
                    ToolCall("call_1", "lookup", '{"q":"x"}'),
                    ToolCall("call_2", "f", "{}"),
                ),
                reasoning="Need data.",
            ),
            Choice(index=1, content=None, finish_reason="content_filter", refusal="No."),
        ),
        usage=Usage(),
        upstream_model="x",
    )
    out = render_completion(response, "r", "chatcmpl-2")
    assert out["created"] == NOW  # the response had none: the gateway's clock, whole seconds
    assert out["system_fingerprint"] is None
    assert out["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    },
                ],
                "reasoning_content": "Need data.",
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": None, "refusal": "No."},
            "finish_reason": "content_filter",
            "logprobs": None,
        },
    ]
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# ---- stream chunks -------------------------------------------------------------------------


def test_exact_bytes_of_a_first_chunk() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=False)
    assert renderer.event(Chunk(content="Hi")) == (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"smollm2","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},'
        b'"finish_reason":null,"logprobs":null}]}\n\n'
    )


def test_role_only_on_the_first_delta_of_each_choice() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=False)
    deltas = [
        events(renderer.event(c))[0]["choices"][0]
        for c in (
            Chunk(index=0, content="He"),
            Chunk(index=1, content="Yo"),
            Chunk(index=0, content="llo"),
            Chunk(index=1, finish_reason="stop"),
            Chunk(index=0, finish_reason="length"),
        )
    ]
    assert [(d["index"], d["delta"], d["finish_reason"]) for d in deltas] == [
        (0, {"role": "assistant", "content": "He"}, None),
        (1, {"role": "assistant", "content": "Yo"}, None),
        (0, {"content": "llo"}, None),
        (1, {}, "stop"),
        (0, {}, "length"),
    ]


def test_without_include_usage_no_usage_anywhere() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=False)
    assert events(renderer.event(Chunk(content="a"))) == [
        chunk(
            {"index": 0, "delta": {"role": "assistant", "content": "a"}, "finish_reason": None},
            usage=False,
        )
    ]
    assert renderer.event(Chunk(usage=Usage(prompt_tokens=1, completion_tokens=1))) is None


def test_with_include_usage_null_usage_then_a_usage_chunk() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=True)
    assert events(renderer.event(Chunk(content="a"))) == [
        chunk(
            {"index": 0, "delta": {"role": "assistant", "content": "a"}, "finish_reason": None},
            usage=True,
        )
    ]
    assert events(renderer.event(Chunk(finish_reason="stop"))) == [
        chunk({"index": 0, "delta": {}, "finish_reason": "stop"}, usage=True)
    ]
    assert events(renderer.event(Chunk(usage=Usage(prompt_tokens=7, completion_tokens=2)))) == [
        {
            **HEAD,
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        }
    ]


def test_a_finish_chunk_that_carries_usage_keeps_both() -> None:
    last = Chunk(finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1))
    with_usage = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=True)
    assert events(with_usage.event(last)) == [
        chunk({"index": 0, "delta": {"role": "assistant"}, "finish_reason": "stop"}, usage=True),
        {
            **HEAD,
            "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
    ]
    without = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=False)
    assert events(without.event(last)) == [
        chunk({"index": 0, "delta": {"role": "assistant"}, "finish_reason": "stop"}, usage=False)
    ]


def test_a_reasoning_chunk_that_carries_usage_is_not_dropped() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=False)
    out = events(renderer.event(Chunk(reasoning="hmm", usage=Usage(completion_tokens=1))))
    assert [e["choices"][0]["delta"] for e in out] == [
        {"role": "assistant", "reasoning_content": "hmm"}
    ]


def test_tool_call_deltas() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=False)
    opening = Chunk(tool_calls=(ToolCallDelta(0, id="call_1", name="lookup", arguments=""),))
    piece = Chunk(tool_calls=(ToolCallDelta(0, arguments='{"q":'),))
    second = Chunk(
        tool_calls=(ToolCallDelta(0, arguments='"x"}'), ToolCallDelta(1, id="call_2", name="f"))
    )
    deltas = [events(renderer.event(c))[0]["choices"][0]["delta"] for c in (opening, piece, second)]
    assert deltas == [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": ""},
                }
            ],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]},
        {
            "tool_calls": [
                {"index": 0, "function": {"arguments": '"x"}'}},
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "f"}},
            ]
        },
    ]
    finish = events(renderer.event(Chunk(finish_reason="tool_calls")))[0]["choices"][0]
    assert (finish["delta"], finish["finish_reason"]) == ({}, "tool_calls")


def test_reasoning_delta() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=False)
    renderer.event(Chunk(content=""))
    assert events(renderer.event(Chunk(reasoning="think")))[0]["choices"][0]["delta"] == {
        "reasoning_content": "think"
    }


def test_empty_chunks_render_nothing_but_a_bare_role_opens_the_choice() -> None:
    renderer = ChunkRenderer("smollm2", "chatcmpl-1", include_usage=True)
    assert renderer.event(Chunk()) is None
    assert events(renderer.event(Chunk(role="assistant")))[0]["choices"][0]["delta"] == {
        "role": "assistant"
    }
    assert renderer.event(Chunk(role="assistant")) is None
    # The role was sent: the next delta does not repeat it.
    assert events(renderer.event(Chunk(content="x")))[0]["choices"][0]["delta"] == {"content": "x"}


# ---- errors inside a stream ----------------------------------------------------------------


def test_error_event_exact_bytes() -> None:
    assert error_event(InvalidRequest("Bad thing.", param="messages[0]")) == (
        b'data: {"error":{"message":"Bad thing.","type":"invalid_request_error",'
        b'"code":"invalid_request","param":"messages[0]"}}\n\n'
    )
    assert events(error_event(AllAttemptsFailed("All failed."))) == [
        {
            "error": {
                "message": "All failed.",
                "type": "upstream_error",
                "code": "all_deployments_failed",
                "param": None,
            }
        }
    ]


def test_done_marker() -> None:
    assert DONE == b"data: [DONE]\n\n"
