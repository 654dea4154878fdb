"""Ordered fallback over misbehaving upstreams.

One hedge process and one loopback fake OpenAI upstream serve the whole module. Each test
marks its prompt with a fresh token so it can count exactly the upstream hits it caused.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionChunk

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai

FAST = "{connect: 1, first_token: 1, idle: 1, total: 1}"
BEHAVIOURS = {
    # deployment name = the fake's behaviour (its upstream_model), with its timeouts
    "fail-500": None,
    "fail-503": None,
    "fail-429": None,
    "fail-400": None,
    "echo": None,
    "cut-stream": None,
    "no-done": None,
    "not-json": None,
    "slow-5": FAST,
    "stall-5": FAST,
}
ROUTES = {
    "failover": ["fail-500", "echo"],
    "cut": ["cut-stream"],
    "cut-then-echo": ["cut-stream", "echo"],
    "no-done": ["no-done"],
    "not-json": ["not-json", "echo"],
    "all-fail": ["fail-500", "fail-429", "slow-5"],
    "single": ["fail-503"],
    "client-error": ["fail-400", "echo"],
    "slow": ["slow-5", "echo"],
    "stall": ["stall-5", "echo"],
    "stall-stream": ["stall-5"],
}


@dataclass
class Setup:
    fake: FakeOpenAI
    gw: Gateway

    def client(self) -> OpenAI:
        # max_retries=0: the SDK would otherwise retry 5xx answers itself and hide what hedge did.
        return OpenAI(base_url=self.gw.v1, api_key="any-key", max_retries=0, timeout=30)

    def hits(self, model: str, marker: str) -> int:
        return sum(
            1
            for h in self.fake.hits
            if h.model == model and marker in json.dumps(h.body.get("messages"))
        )


def config(fake_url: str) -> str:
    lines = ["deployments:"]
    for name, timeouts in BEHAVIOURS.items():
        lines += [
            f"  {name}:",
            "    kind: openai_compat",
            "    hosting: self-hosted",
            f"    base_url: {fake_url}",
            f"    upstream_model: {name}",
        ]
        if timeouts:
            lines.append(f"    timeouts: {timeouts}")
    lines.append("routes:")
    for route, deployments in ROUTES.items():
        # One try per deployment and no held-back stream head: these tests are about
        # fail-over itself (retries and head buffering have their own tests in test_faults).
        lines.append(
            f"  {route}: {{deployments: [{', '.join(deployments)}], "
            "retry: {attempts_per_deployment: 1}, stream_head_chunks: 0}"
        )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with (
        fake_openai() as fake,
        run_gateway(config(fake.url), tmp_path_factory.mktemp("fallback")) as gw,
    ):
        yield Setup(fake, gw)


def ask(marker: str) -> list[Any]:
    return [{"role": "user", "content": f"hello {marker}"}]


def post_raw(gw: Gateway, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """POST without any SDK: status, headers and the exact bytes hedge sent."""
    request = urllib.request.Request(
        f"{gw.v1}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def stream_text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finishes(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def marker() -> str:
    return uuid.uuid4().hex[:12]


# ---- failing over ----------------------------------------------------------------------------


def test_a_failing_deployment_is_skipped(setup: Setup) -> None:
    m = marker()
    raw = setup.client().chat.completions.with_raw_response.create(
        model="failover", messages=ask(m)
    )
    assert raw.headers["x-hedge-deployment"] == "echo"
    assert raw.headers["x-hedge-attempts"] == "2"
    completion = raw.parse()
    assert completion.choices[0].message.content == f"echo: hello {m}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "failover"
    assert setup.hits("fail-500", m) == 1
    assert setup.hits("echo", m) == 1


def test_a_stream_fails_over_before_its_first_byte(setup: Setup) -> None:
    m = marker()
    raw = setup.client().chat.completions.with_raw_response.create(
        model="failover", messages=ask(m), stream=True
    )
    assert raw.status_code == 200
    assert raw.headers["x-hedge-deployment"] == "echo"
    chunks = list(raw.parse())
    # The client never hears about the 500: it gets one clean answer.
    assert stream_text(chunks) == f"echo: hello {m}"
    assert finishes(chunks) == ["stop"]
    assert setup.hits("fail-500", m) == 1
    assert setup.hits("echo", m) == 1


def test_a_failed_over_stream_counts_both_attempts(setup: Setup) -> None:
    raw = setup.client().chat.completions.with_raw_response.create(
        model="failover", messages=ask(marker()), stream=True
    )
    list(raw.parse())
    assert raw.headers["x-hedge-attempts"] == "2"


def test_a_body_that_is_not_json_fails_over(setup: Setup) -> None:
    m = marker()
    raw = setup.client().chat.completions.with_raw_response.create(
        model="not-json", messages=ask(m)
    )
    assert raw.headers["x-hedge-deployment"] == "echo"
    assert raw.headers["x-hedge-attempts"] == "2"
    assert raw.parse().choices[0].message.content == f"echo: hello {m}"
    assert setup.hits("not-json", m) == 1

    m = marker()
    chunks = list(
        setup.client().chat.completions.create(model="not-json", messages=ask(m), stream=True)
    )
    assert stream_text(chunks) == f"echo: hello {m}"
    assert setup.hits("not-json", m) == 1


def test_a_slow_deployment_times_out_and_fails_over(setup: Setup) -> None:
    m = marker()
    raw = setup.client().chat.completions.with_raw_response.create(model="slow", messages=ask(m))
    assert raw.headers["x-hedge-deployment"] == "echo"
    assert raw.headers["x-hedge-attempts"] == "2"
    assert raw.parse().choices[0].message.content == f"echo: hello {m}"
    assert setup.hits("slow-5", m) == 1


def test_a_body_that_stalls_after_its_head_fails_over(setup: Setup) -> None:
    # The head arrives at once; the total timeout must still cover the rest of the body.
    m = marker()
    raw = setup.client().chat.completions.with_raw_response.create(model="stall", messages=ask(m))
    assert raw.headers["x-hedge-deployment"] == "echo"
    assert raw.headers["x-hedge-attempts"] == "2"
    assert raw.parse().choices[0].message.content == f"echo: hello {m}"
    assert setup.hits("stall-5", m) == 1


# ---- streams that break after their first byte --------------------------------------------------


def test_a_cut_stream_is_an_error_never_a_short_answer(setup: Setup) -> None:
    m = marker()
    seen: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in setup.client().chat.completions.create(
            model="cut", messages=ask(m), stream=True
        ):
            seen.append(chunk)
    assert "cut-stream" in info.value.message
    assert stream_text(seen)  # part of the answer had already gone out...
    assert "stop" not in finishes(seen)  # ...but it is never presented as complete

    status, _, body = post_raw(
        setup.gw, {"model": "cut", "messages": ask(marker()), "stream": True}
    )
    assert status == 200
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    assert events[-1].startswith("data: ")
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["type"] == "upstream_error"
    assert b"[DONE]" not in body
    assert b'"finish_reason":"stop"' not in body


def test_a_stream_cut_midway_is_not_silently_switched(setup: Setup) -> None:
    # Once bytes have reached the client, another deployment cannot take over.
    m = marker()
    with pytest.raises(openai.APIError):
        list(
            setup.client().chat.completions.create(
                model="cut-then-echo", messages=ask(m), stream=True
            )
        )
    assert setup.hits("cut-stream", m) == 1
    assert setup.hits("echo", m) == 0


def test_a_stream_that_stalls_midway_ends_in_an_error(setup: Setup) -> None:
    status, _, body = post_raw(
        setup.gw, {"model": "stall-stream", "messages": ask(marker()), "stream": True}
    )
    assert status == 200
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == (
        "assistant"
    )
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_timeout"
    assert b"[DONE]" not in body


def test_a_stream_without_done_is_complete(setup: Setup) -> None:
    m = marker()
    chunks = list(
        setup.client().chat.completions.create(model="no-done", messages=ask(m), stream=True)
    )
    assert stream_text(chunks) == f"echo: hello {m}"
    assert finishes(chunks) == ["stop"]
    status, _, body = post_raw(setup.gw, {"model": "no-done", "messages": ask(m), "stream": True})
    assert status == 200
    assert body.endswith(b"data: [DONE]\n\n")  # hedge's client still gets its end marker
    assert b'"error"' not in body


# ---- when nothing answers ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_all_deployments_failing_is_a_502_listing_each(setup: Setup, stream: bool) -> None:
    m = marker()
    status, headers, body = post_raw(
        setup.gw, {"model": "all-fail", "messages": ask(m), "stream": stream}
    )
    assert status == 502
    assert headers["content-type"].startswith("application/json")
    assert headers["x-hedge-attempts"] == "3"
    error = json.loads(body)["error"]
    assert error["code"] == "all_deployments_failed"
    assert error["type"] == "upstream_error"
    for name, why in (("fail-500", "500"), ("fail-429", "429"), ("slow-5", "1s")):
        assert f"{name}: deployment '{name}'" in error["message"]
        assert why in error["message"]
    for name in ("fail-500", "fail-429", "slow-5"):
        assert setup.hits(name, m) == 1


def test_a_single_failing_deployment_gives_its_own_error(setup: Setup) -> None:
    m = marker()
    with pytest.raises(openai.APIStatusError) as info:
        setup.client().chat.completions.create(model="single", messages=ask(m))
    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert "deployment 'fail-503' answered 503: fake failure 503" in info.value.message
    assert info.value.response.headers["x-hedge-attempts"] == "1"
    assert setup.hits("fail-503", m) == 1


def test_a_client_error_from_upstream_is_not_failed_over(setup: Setup) -> None:
    m = marker()
    with pytest.raises(openai.BadRequestError) as info:
        setup.client().chat.completions.create(model="client-error", messages=ask(m))
    assert info.value.status_code == 400
    assert "fake failure 400" in info.value.message
    assert setup.hits("fail-400", m) == 1
    assert setup.hits("echo", m) == 0  # the same request would fail the same way everywhere


# ---- afterwards ---------------------------------------------------------------------------------


def test_the_gateway_is_healthy_after_all_that(setup: Setup) -> None:
    assert setup.gw.proc.poll() is None
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(setup.gw.url + path, timeout=5) as resp:
            assert resp.status == 200
    m = marker()
    answer = setup.client().chat.completions.create(model="failover", messages=ask(m))
    assert answer.choices[0].message.content == f"echo: hello {m}"
    assert "Traceback" not in setup.gw.output()
