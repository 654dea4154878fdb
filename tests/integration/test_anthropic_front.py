"""`POST /v1/messages` through a real `hedge serve`, with the official `anthropic` SDK unchanged.

Against the built-in default (SmolLM2 in-process, small budgets) and against loopback upstreams
of both other wires: the OpenAI-compatible fake (text, streams, tool calls, fail-over, a stream
cut mid-answer, policies) and the Messages API fake (Anthropic in, Anthropic out). Malformed
requests go out as raw HTTP so the bytes are ours; every error must come back in Anthropic's
shape with the right status, and the server must stay up.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam

from tests.conftest import Gateway, run_gateway
from tests.fakes.anthropic_fake import API_KEY, FakeAnthropic, running_fake
from tests.fakes.openai_fake import FakeOpenAI, counted, fake_openai

MESSAGES = "/v1/messages"
# This SDK's typed create() has no sampling parameters; the Messages API still takes them.
GREEDY = {"temperature": 0}
LIMIT = 4 * 1024 * 1024  # server.max_body_bytes in the built-in config
TEN_MB = 10 * 1024 * 1024
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
}

CONFIG = """\
ledger: {{backend: sqlite, path: {db}, flush_interval_s: 0.05}}
policies:
  no-cn:
    origins: {{deny: [CN]}}
deployments:
  echo:
    kind: openai_compat
    base_url: {openai}
    upstream_model: echo
    hosting: hosted
  broken:
    kind: openai_compat
    base_url: {openai}
    upstream_model: fail-500
    hosting: hosted
  cut:
    kind: openai_compat
    base_url: {openai}
    upstream_model: stream-cut-8-of-30
    hosting: hosted
  deepseek:
    kind: openai_compat
    model: deepseek-v4-pro
    base_url: {openai}
    upstream_model: echo-deepseek
    hosting: hosted
    operator: DeepSeek
    operator_jurisdiction: CN
  claude:
    kind: anthropic
    base_url: {anthropic}
    upstream_model: claude-test
routes:
  chat:
    deployments: [echo]
  failover:
    deployments: [broken, echo]
    retry: {{attempts_per_deployment: 1}}
  cut:
    deployments: [cut]
    retry: {{attempts_per_deployment: 1}}
  cn-only:
    deployments: [deepseek]
  claude:
    deployments: [claude]
"""


def client(gw: Gateway) -> anthropic.Anthropic:
    # max_retries=0: a retrying client would hide failures the gateway should not have.
    return anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=120)


def user(text: str) -> MessageParam:
    return {"role": "user", "content": text}


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


@contextlib.contextmanager
def anthropic_upstream() -> Iterator[FakeAnthropic]:
    """The Messages API fake on its own thread and loop, so a gateway subprocess can call it."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: list[Any] = []

    async def serve() -> None:
        async with running_fake() as fake:
            done = loop.create_future()
            box.extend([fake, done])
            ready.set()
            await done

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the Anthropic fake did not start"
    try:
        yield box[0]
    finally:
        loop.call_soon_threadsafe(box[1].set_result, None)
        thread.join(10)
        loop.close()


@dataclass
class Loopback:
    gw: Gateway
    openai: FakeOpenAI
    claude: FakeAnthropic
    db: Path


@pytest.fixture(scope="module")
def loop_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    tmp = tmp_path_factory.mktemp("anthropic-front")
    db = tmp / "ledger.db"
    with fake_openai() as openai_fake, anthropic_upstream() as claude_fake:
        config = CONFIG.format(db=db, openai=openai_fake.url, anthropic=claude_fake.base_url)
        with run_gateway(config, tmp, env={"ANTHROPIC_API_KEY": API_KEY}) as gw:
            start = len(gw.output())
            yield Loopback(gw, openai_fake, claude_fake, db)
            assert "unhandled error" not in gw.output()[start:]


def ledger_row(db: Path, request_id: str) -> tuple[Any, ...]:
    """(route, answered_by, status) of a request, once the ledger has flushed it."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.closing(sqlite3.connect(db)) as con:
            row = con.execute(
                "SELECT route, answered_by, status FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"{request_id} was not recorded"
            return tuple(row)
        time.sleep(0.05)


# ---- loopback upstreams -------------------------------------------------------------------


def test_text_through_an_openai_upstream(loop_gw: Loopback) -> None:
    raw = client(loop_gw.gw).messages.with_raw_response.create(
        model="chat",
        max_tokens=16,
        system="Be brief.",
        messages=[user("hello there")],
        metadata={"user_id": "u-7"},
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "chat"
    assert message.id.startswith("msg_")
    assert text_of(message) == "echo: hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    assert raw.headers["x-request-id"] == raw.headers["request-id"] == message.id
    assert raw.headers["x-hedge-deployment"] == "echo"
    (hit,) = loop_gw.openai.hits_for("echo", "hello there")
    assert hit.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert (hit.body["max_tokens"], hit.body["user"]) == (16, "u-7")
    assert ledger_row(loop_gw.db, message.id) == ("chat", "echo", 200)


def test_stream_through_an_openai_upstream(loop_gw: Loopback) -> None:
    with client(loop_gw.gw).messages.stream(
        model="chat", max_tokens=32, messages=[user("count 6 please")]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == counted(6) == text_of(final)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6
    assert final.usage.input_tokens == 3
    assert ledger_row(loop_gw.db, final.id) == ("chat", "echo", 200)


def test_effort_and_format_reach_an_openai_upstream(loop_gw: Loopback) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"answer": {"type": "string"}}}
    client(loop_gw.gw).messages.create(
        model="chat",
        max_tokens=16,
        messages=[user("structured please")],
        output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}},
        extra_body={"top_k": 5},
    )
    (hit,) = loop_gw.openai.hits_for("echo", "structured please")
    assert hit.body["reasoning_effort"] == "low"
    assert hit.body["top_k"] == 5
    assert hit.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_stream_events_in_order(loop_gw: Loopback) -> None:
    with client(loop_gw.gw).messages.create(
        model="chat", max_tokens=32, messages=[user("count 3")], stream=True
    ) as events:
        kinds = [e.type for e in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_tool_use_and_tool_result(loop_gw: Loopback) -> None:
    api = client(loop_gw.gw)
    asked = user("weather in Paris")
    message = api.messages.create(model="chat", max_tokens=64, messages=[asked], tools=[WEATHER])
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use"
    assert (call.name, call.input) == ("get_weather", {"q": "weather in Paris"})

    answered = api.messages.create(
        model="chat",
        max_tokens=64,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=[
            asked,
            {"role": "assistant", "content": message.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
            },
        ],
    )
    assert text_of(answered) == "echo: weather in Paris"
    assert answered.stop_reason == "end_turn"
    sent = loop_gw.openai.hits_for("echo", "sunny")[-1].body
    assert sent["tool_choice"] == "none"
    assert sent["messages"] == [
        {"role": "user", "content": "weather in Paris"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"q":"weather in Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": call.id},
    ]


def test_streamed_tool_use(loop_gw: Loopback) -> None:
    with client(loop_gw.gw).messages.stream(
        model="chat", max_tokens=64, messages=[user("weather in Oslo")], tools=[WEATHER]
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    (call,) = final.content
    assert call.type == "tool_use" and call.id == "call_fake_1"
    assert call.input == {"q": "weather in Oslo"}
    assert final.stop_reason == "tool_use"


def test_anthropic_upstream_round_trip(loop_gw: Loopback) -> None:
    """Messages in, Messages out: the Anthropic fake checks turn order and tool ids itself."""
    api = client(loop_gw.gw)
    asked = user("weather in Rome")
    message = api.messages.create(
        model="claude", max_tokens=64, system="Be kind.", messages=[asked], tools=[WEATHER]
    )
    (call,) = message.content
    assert call.type == "tool_use" and call.input == {"text": "weather in Rome"}
    followup: list[MessageParam] = [
        asked,
        {"role": "assistant", "content": message.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "hot"}],
        },
    ]
    with api.messages.stream(
        model="claude", max_tokens=64, system="Be kind.", messages=followup, tools=[WEATHER]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == text_of(final) == "echo: hot"
    assert final.stop_reason == "end_turn"
    sent = loop_gw.claude.bodies[-1]
    assert (sent["model"], sent["system"], sent["max_tokens"]) == ("claude-test", "Be kind.", 64)
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": call.input}
    ]


@pytest.mark.parametrize("streamed", [False, True])
def test_the_stop_sequence_that_ended_the_answer_is_named(
    loop_gw: Loopback, streamed: bool
) -> None:
    """The Anthropic upstream cuts at a stop sequence and names it; that name reaches the
    client through hedge, where a plain end of turn would hide why the answer is short."""
    api = client(loop_gw.gw)
    asked = [user("one two three four")]
    if streamed:
        with api.messages.stream(
            model="claude", max_tokens=64, messages=asked, stop_sequences=["zzz", "three"]
        ) as stream:
            message = stream.get_final_message()
    else:
        message = api.messages.create(
            model="claude", max_tokens=64, messages=asked, stop_sequences=["zzz", "three"]
        )
    assert text_of(message) == "echo: one two "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "three")
    assert loop_gw.claude.bodies[-1]["stop_sequences"] == ["zzz", "three"]


def test_fail_over_behind_the_messages_door(loop_gw: Loopback) -> None:
    raw = client(loop_gw.gw).messages.with_raw_response.create(
        model="failover", max_tokens=16, messages=[user("still there?")]
    )
    message = raw.parse()
    assert text_of(message) == "echo: still there?"
    assert raw.headers["x-hedge-deployment"] == "echo"
    assert raw.headers["x-hedge-attempts"] == "2"
    assert ledger_row(loop_gw.db, message.id) == ("failover", "echo", 200)


@pytest.mark.parametrize("how", ["header", "body"])
def test_policy_refusal_is_a_permission_error(loop_gw: Loopback, how: str) -> None:
    before = len(loop_gw.openai.hits_for("echo-deepseek"))
    narrowing: dict[str, Any] = (
        {"extra_headers": {"X-Hedge-Policy": "no-cn"}}
        if how == "header"
        else {"extra_body": {"hedge": {"policies": ["no-cn"]}}}
    )
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        client(loop_gw.gw).messages.create(
            model="cn-only", max_tokens=8, messages=[user("hi")], **narrowing
        )
    error = caught.value
    assert error.status_code == 403
    assert isinstance(error.body, dict)
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == "permission_error"
    assert "Policy refuses every deployment of model 'cn-only'" in error.body["error"]["message"]
    assert error.body["error"]["refusals"][0]["deployment"] == "deepseek"
    assert len(loop_gw.openai.hits_for("echo-deepseek")) == before  # nothing went upstream
    request_id = error.response.headers["request-id"]
    assert ledger_row(loop_gw.db, request_id) == ("cn-only", None, 403)


def test_a_stream_cut_mid_answer_ends_with_an_error_event(loop_gw: Loopback) -> None:
    got: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client(loop_gw.gw).messages.stream(
            model="cut", max_tokens=64, messages=[user("go")]
        ) as stream,
    ):
        request_id = stream.response.headers["request-id"]
        got.extend(stream.text_stream)
    assert "".join(got).startswith("t1 t2 t3 t4")  # the head went out before the cut
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "api_error"
    assert "deployment 'cut' stream broke" in caught.value.body["error"]["message"]
    assert ledger_row(loop_gw.db, request_id) == ("cut", "cut", 502)


def test_unknown_model_is_not_found(loop_gw: Loopback) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(loop_gw.gw).messages.create(model="nope", max_tokens=8, messages=[user("hi")])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "Available models:" in caught.value.body["error"]["message"]


def test_feedback_finds_a_message_by_its_id(loop_gw: Loopback) -> None:
    message = client(loop_gw.gw).messages.create(
        model="chat", max_tokens=8, messages=[user("rate me")]
    )
    status, payload = post_json(
        loop_gw.gw, "/v1/feedback", {"request_id": message.id, "success": True}
    )
    assert (status, payload) == (200, {"request_id": message.id, "recorded": True})


# ---- the embedded default -----------------------------------------------------------------


def test_embedded_message_and_stream_agree(embedded_gateway: Gateway) -> None:
    api = client(embedded_gateway)
    asked = [user("Name three colors.")]
    raw = api.messages.with_raw_response.create(
        model="smollm2", max_tokens=12, messages=asked, extra_body=GREEDY
    )
    message = raw.parse()
    assert raw.headers["x-hedge-deployment"] == "smollm2-local"
    assert message.model == "smollm2"
    text = text_of(message)
    assert text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 12

    with api.messages.stream(
        model="smollm2", max_tokens=12, messages=asked, extra_body=GREEDY
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text == text_of(final)
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens


def test_embedded_system_and_prefill(embedded_gateway: Gateway) -> None:
    message = client(embedded_gateway).messages.create(
        model="smollm2",
        max_tokens=6,
        extra_body=GREEDY,
        system=[{"type": "text", "text": "You answer in one word."}],
        messages=[
            user("Sky colour?"),
            {"role": "assistant", "content": "Blue"},
            user("And grass?"),
        ],
    )
    assert text_of(message)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"tools": [WEATHER]}, "tools are not supported by embedded deployments"),
        ({"extra_body": {"top_k": 40}}, "top_k"),
    ],
)
def test_embedded_refuses_what_it_cannot_do(
    embedded_gateway: Gateway, extra: dict[str, Any], says: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(embedded_gateway).messages.create(
            model="smollm2", max_tokens=8, messages=[user("hi")], **extra
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert says in caught.value.body["error"]["message"]


# ---- bad input, raw -----------------------------------------------------------------------

DROP = object()


def body(**fields: Any) -> bytes:
    """A valid request for the `smollm2` route with `fields` changed (DROP removes one)."""
    data: dict[str, Any] = {"model": "smollm2", "max_tokens": 4, "messages": [user("hi")]}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not DROP}).encode()


TOOL_USE = {"role": "assistant", "content": [
    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]}  # fmt: skip

STRAY_RESULT = {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}  # fmt: skip


@dataclass(frozen=True)
class Bad:
    id: str
    body: bytes | None
    status: int
    type: str
    says: tuple[str, ...]
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    # "plain": send the body; "declared": declare 10 MB and send 64 KB of it.
    how: str = "plain"


def bad(id: str, raw: bytes | None, status: int, kind: str, *says: str, **kw: Any) -> Any:
    return pytest.param(Bad(id, raw, status, kind, says, **kw), id=id)


def invalid(id: str, raw: bytes, *says: str) -> Any:
    return bad(id, raw, 400, "invalid_request_error", *says)


# fmt: off
CASES = [
    invalid("invalid-json", b'{"model": "smollm2", "messages": [', "not valid JSON"),
    invalid("empty-body", b"", "body is empty"),
    invalid("array-body", b"[]", "a JSON object, not an array"),
    invalid("missing-max-tokens", body(max_tokens=DROP), "'max_tokens'", "required"),
    invalid("max-tokens-string", body(max_tokens="4"), "'max_tokens'", "without quotes"),
    invalid("missing-messages", body(messages=DROP), "'messages'", "required"),
    invalid("messages-string", body(messages="hi"), "'messages'", "valid list"),
    invalid("bad-role-order", body(messages=[user("a"), user("b")]), "'messages[1].role'",
            "alternate"),
    invalid("assistant-first", body(messages=[{"role": "assistant", "content": "x"}]),
            "first message must have role 'user'"),
    invalid("only-system-messages", body(messages=[{"role": "system", "content": "x"}]),
            "'messages'", "must be a user message"),
    invalid("unknown-block-type", body(messages=[{"role": "user", "content": [{"type": "video"}]}]),
            "'messages[0].content[0].type'", "'video'"),
    invalid("tool-result-without-tool-use",
            body(messages=[user("q"), {"role": "assistant", "content": "ok"}, STRAY_RESULT]),
            "'messages[2].content[0].tool_use_id'", "'toolu_9' does not answer"),
    invalid("tool-use-without-result",
            body(messages=[user("q"), TOOL_USE, user("and?")], tools=[WEATHER]),
            "toolu_1", "need a tool_result"),
    invalid("temperature-over-1", body(temperature=1.5), "'temperature'",
            "less than or equal to 1"),
    invalid("top-p-string", body(top_p="0.9"), "'top_p'", "without quotes"),
    invalid("stream-string", body(stream="true"), "'stream'", "valid boolean"),
    invalid("tool-without-schema", body(tools=[{"name": "f"}]), "'tools[0].input_schema'",
            "required"),
    invalid("tool-choice-unknown-tool",
            body(tools=[WEATHER], tool_choice={"type": "tool", "name": "search"}),
            "'search'"),
    invalid("thinking-budget-too-small", body(thinking={"type": "enabled", "budget_tokens": 10}),
            "at least 1024"),
    invalid("stop-sequences-5", body(stop_sequences=list("abcde")), "at most 4"),
    invalid("unknown-field", body(n=2), "'n'", "unknown field"),
    bad("unknown-policy", body(), 400, "invalid_request_error", "Unknown policy 'nope'",
        headers=(("X-Hedge-Policy", "nope"),)),
    bad("unknown-model", body(model="claude-9"), 404, "not_found_error", "'claude-9'",
        "Available models: default, gemma-3-270m, ", "smollm2"),
    bad("unknown-model-streamed", body(model="claude-9", stream=True), 404, "not_found_error",
        "'claude-9'"),
    bad("10mb-declared", None, 413, "request_too_large", f"({TEN_MB} bytes)",
        "server.max_body_bytes", how="declared"),
    bad("10mb-sent", b" " * TEN_MB, 413, "request_too_large", f"({TEN_MB} bytes)"),
    bad("get", None, 405, "invalid_request_error", "GET", "use POST", method="GET"),
]
# fmt: on


def _connection(gw: Gateway, timeout: float = 60) -> http.client.HTTPConnection:
    url = urlsplit(gw.url)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)


def send(gw: Gateway, case: Bad) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = _connection(gw, timeout=20 if case.how == "declared" else 60)
    try:
        if case.how == "declared":
            # Only the head and 64 KB go out: if the server waited for the rest, this times out.
            conn.putrequest("POST", MESSAGES)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(TEN_MB))
            conn.endheaders(b"{" + b" " * 65535)
        else:
            headers = {"Content-Type": "application/json"} if case.body is not None else {}
            headers.update(dict(case.headers))
            conn.request(case.method, MESSAGES, body=case.body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def post_json(gw: Gateway, path: str, payload: Any) -> tuple[int, Any]:
    conn = _connection(gw)
    try:
        conn.request(
            "POST", path, body=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def get(gw: Gateway, path: str) -> tuple[int, Any]:
    conn = _connection(gw)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gw(embedded_gateway: Gateway) -> Iterator[Gateway]:
    """The shared gateway; on the way out, its log must show no unhandled error from here."""
    start = len(embedded_gateway.output())
    yield embedded_gateway
    assert "unhandled error" not in embedded_gateway.output()[start:]


@pytest.mark.parametrize("case", CASES)
def test_bad_request_gets_an_anthropic_error(gw: Gateway, case: Bad) -> None:
    status, headers, raw = send(gw, case)

    assert status == case.status, raw[:500]
    assert headers.get_content_type() == "application/json"
    payload = json.loads(raw)
    assert sorted(payload) == ["error", "type"]
    assert payload["type"] == "error"
    error = payload["error"]
    assert sorted(error) == ["message", "type"]
    assert error["type"] == case.type
    for words in case.says:
        assert words in error["message"], error["message"]
    if status == 405:
        assert headers["Allow"] == "POST"

    assert get(gw, "/healthz") == (200, {"status": "ok"})


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 15
    assert len({c.values[0].id for c in CASES}) == len(CASES)


def test_still_serving_after_the_bad_input(gw: Gateway) -> None:
    message = client(gw).messages.create(model="smollm2", max_tokens=4, messages=[user("hi")])
    assert message.type == "message"
    assert 1 <= message.usage.output_tokens <= 4
    assert get(gw, "/readyz")[0] == 200
