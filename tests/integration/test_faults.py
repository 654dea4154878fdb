"""Route-level resilience against every fault the fake upstream can stage.

One hedge process and one loopback fake OpenAI upstream serve the module. Every scenario has
its own deployments (the fake keys its state on the full model name, `behaviour#scenario`), so
hit counts and "first hit" clocks never leak between tests; every prompt also carries a fresh
marker, so `x-hedge-attempts` can be checked against the upstream hits one request caused.

What each test checks: what the caller got, how many hits each upstream saw (and, where it
matters, when), and that the gateway is still healthy afterwards.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import CONTENT_POLICY_REASON, FakeOpenAI, Hit, counted, fake_openai

MODES = ("plain", "stream")
ATTEMPTS = 2  # retry.attempts_per_deployment on the module's routes unless a route says 1
RETRY = {
    "attempts_per_deployment": ATTEMPTS,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.2,
    "retry_after_cap_s": 3.0,
}
NO_RETRY = {**RETRY, "attempts_per_deployment": 1}
QUICK = {"connect": 1, "first_token": 2, "idle": 1, "total": 5}
SLACK = 1.5  # seconds allowed beyond a timeout for the fail-over itself
# hedge resumes a broken stream only on a deployment that says it continues a final assistant
# message; a generic OpenAI-compatible server is not assumed to.
PREFILL = {"quirks": {"assistant_prefill": True}}


@dataclass
class Dep:
    behaviour: str
    timeouts: dict[str, float] = field(default_factory=lambda: dict(QUICK))
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    deployments: dict[str, Dep]  # role -> deployment, in route order
    route: dict[str, Any] = field(default_factory=dict)
    modes: tuple[str, ...] = MODES


def echo() -> Dep:
    return Dep("echo")


SCENARIOS: dict[str, Scenario] = {
    # 429 with a Retry-After under the cap: wait, then the same deployment again.
    "ra": Scenario({"primary": Dep("rate-limit-once-1"), "backup": echo()}),
    "ra-date": Scenario({"primary": Dep("rate-limit-date"), "backup": echo()}),
    # 429 with a Retry-After over the cap: fail over at once.
    "ra-long": Scenario({"primary": Dep("rate-limit-once-30"), "backup": echo()}),
    "rl": Scenario({"primary": Dep("rate-limit"), "backup": echo()}),
    "f500": Scenario({"primary": Dep("fail-once"), "backup": echo()}),
    "f503": Scenario({"primary": Dep("fail-503"), "backup": echo()}),
    "reset": Scenario({"primary": Dep("reset"), "backup": echo()}),
    "blackhole": Scenario(
        {
            "primary": Dep("blackhole", {"connect": 1, "first_token": 1, "idle": 1, "total": 2}),
            "backup": echo(),
        },
        {"retry": NO_RETRY},
    ),
    "first-token": Scenario(
        {
            "primary": Dep(
                "first-token-20", {"connect": 1, "first_token": 1, "idle": 1, "total": 3}
            ),
            "backup": echo(),
        },
        {"retry": NO_RETRY},
    ),
    "cut-resume": Scenario(
        {"primary": Dep("stream-cut-40-of-60"), "backup": Dep("echo", extra=PREFILL)},
        {"stream_resume": True, "stream_head_chunks": 8},
    ),
    "cut-refused": Scenario(
        {"primary": Dep("stream-cut-40-of-60"), "backup": Dep("no-prefill", extra=PREFILL)},
        {"stream_resume": True, "stream_head_chunks": 8},
        ("stream",),
    ),
    "cut-no-prefill-quirk": Scenario(
        {"primary": Dep("stream-cut-40-of-60"), "backup": echo()},
        {"stream_resume": True, "stream_head_chunks": 8},
        ("stream",),
    ),
    "stall-resume": Scenario(
        {
            "primary": Dep(
                "stream-stall-20", {"connect": 1, "first_token": 2, "idle": 1, "total": 2}
            ),
            "backup": Dep("echo", extra=PREFILL),
        },
        {"stream_resume": True, "stream_head_chunks": 8, "retry": NO_RETRY},
    ),
    "stall-refused": Scenario(
        {"primary": Dep("stream-stall-20"), "backup": Dep("no-prefill", extra=PREFILL)},
        {"stream_resume": True, "stream_head_chunks": 8},
        ("stream",),
    ),
    "malformed": Scenario(
        {"primary": Dep("malformed-event"), "backup": echo()}, {"stream_head_chunks": 8}
    ),
    "no-done": Scenario({"only": Dep("no-done")}, {}, ("stream",)),
    "ctx": Scenario(
        {
            "primary": Dep("context-length", extra={"context_window": 4096}),
            "same": Dep("echo", extra={"context_window": 4096}),
            "unknown": echo(),
            "smaller": Dep("echo", extra={"context_window": 2048}),
            "larger": Dep("echo", extra={"context_window": 32768}),
        }
    ),
    "ctx-none": Scenario(
        {
            "primary": Dep("context-length", extra={"context_window": 8192}),
            "smaller": Dep("echo", extra={"context_window": 4096}),
        }
    ),
    "policy": Scenario({"primary": Dep("content-policy"), "backup": echo()}),
    "revoked": Scenario({"primary": Dep("unauthorized"), "backup": echo()}, {}, ("plain",)),
    "hedge": Scenario(
        {
            "primary": Dep(
                "first-token-2", {"connect": 1, "first_token": 5, "idle": 2, "total": 10}
            ),
            "backup": echo(),
        },
        {"hedge_after_ms": 200},
    ),
    "acct": Scenario({"first": Dep("rate-limit"), "second": Dep("fail-503"), "third": echo()}),
    "max-attempts": Scenario(
        {"a": Dep("fail-500"), "b": Dep("fail-500"), "c": Dep("fail-500")}, {"max_attempts": 3}
    ),
    "deadline": Scenario(
        {
            "a": Dep("blackhole", {"connect": 1, "first_token": 10, "idle": 10, "total": 10}),
            "b": Dep("blackhole", {"connect": 1, "first_token": 10, "idle": 10, "total": 10}),
        },
        {"deadline_s": 1.5},
    ),
    "balance": Scenario(
        {"heavy": echo(), "light": echo()},
        {"strategy": "balance", "weights": {"{heavy}": 3, "{light}": 1}},
        ("plain",),
    ),
    "breaker": Scenario(
        {
            "primary": Dep("down-for-60", extra={"breaker": {"failures": 3, "cooldown_s": 5}}),
            "backup": echo(),
        },
        {"retry": NO_RETRY},
        ("plain",),
    ),
}


def dep_name(scenario: str, mode: str, role: str) -> str:
    return f"{scenario}-{mode}-{role}"


def upstream_model(scenario: str, mode: str, role: str) -> str:
    return f"{SCENARIOS[scenario].deployments[role].behaviour}#{scenario}-{mode}-{role}"


def route_name(scenario: str, mode: str) -> str:
    return f"{scenario}-{mode}"


def config(fake_url: str) -> str:
    deployments: dict[str, Any] = {}
    routes: dict[str, Any] = {}
    for name, sc in SCENARIOS.items():
        for mode in sc.modes:
            names = {role: dep_name(name, mode, role) for role in sc.deployments}
            for role, d in sc.deployments.items():
                deployments[names[role]] = {
                    "kind": "openai_compat",
                    "hosting": "self-hosted",
                    "base_url": fake_url,
                    "upstream_model": upstream_model(name, mode, role),
                    "timeouts": d.timeouts,
                    **d.extra,
                }
            route: dict[str, Any] = {"deployments": list(names.values()), "retry": RETRY}
            for key, value in sc.route.items():
                route[key] = value
            if "weights" in sc.route:
                route["weights"] = {k.format(**names): v for k, v in sc.route["weights"].items()}
            routes[route_name(name, mode)] = route
    return yaml.safe_dump({"deployments": deployments, "routes": routes}, sort_keys=False)


# ---- talking to the gateway -----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes
    elapsed: float
    stream: bool

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def events(self) -> list[Any]:
        """The JSON payloads of an SSE body, [DONE] excluded."""
        out = []
        for block in self.raw.decode().split("\n\n"):
            data = "\n".join(
                line[5:].lstrip() for line in block.splitlines() if line.startswith("data:")
            )
            if data and data != "[DONE]":
                out.append(json.loads(data))
        return out

    @property
    def done(self) -> bool:
        return self.raw.rstrip().endswith(b"data: [DONE]")

    @property
    def text(self) -> str:
        if not self.stream:
            return str(self.json["choices"][0]["message"]["content"])
        return "".join(
            e["choices"][0]["delta"].get("content") or "" for e in self.events if e.get("choices")
        )

    @property
    def finishes(self) -> list[str]:
        if not self.stream:
            return [c["finish_reason"] for c in self.json["choices"]]
        return [
            e["choices"][0]["finish_reason"]
            for e in self.events
            if e.get("choices") and e["choices"][0].get("finish_reason")
        ]

    @property
    def error(self) -> dict[str, Any] | None:
        if self.status != 200:
            return dict(self.json["error"])
        found = [e["error"] for e in self.events if "error" in e] if self.stream else []
        return found[-1] if found else None

    @property
    def usage(self) -> dict[str, Any] | None:
        if not self.stream:
            return dict(self.json["usage"])
        found = [e["usage"] for e in self.events if e.get("usage")]
        return found[-1] if found else None

    @property
    def deployment(self) -> str:
        return self.headers.get("x-hedge-deployment", "")

    @property
    def attempts(self) -> int:
        return int(self.headers["x-hedge-attempts"])


def post(gw: Gateway, route: str, content: str, stream: bool, timeout: float = 60) -> Reply:
    body: dict[str, Any] = {
        "model": route,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    request = urllib.request.Request(
        f"{gw.v1}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, headers = resp.status, dict(resp.headers.items())
            try:
                raw = resp.read()
            except http.client.IncompleteRead as e:
                raw = e.partial  # judged by what arrived: a broken stream shows as such
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers.items()), e.read()
    return Reply(
        status, {k.lower(): v for k, v in headers.items()}, raw, time.monotonic() - t0, stream
    )


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@dataclass
class Setup:
    fake: FakeOpenAI
    gw: Gateway

    def hits(self, scenario: str, mode: str, role: str, marker: str | None = None) -> list[Hit]:
        return self.fake.hits_for(upstream_model(scenario, mode, role), marker)

    def ask(self, scenario: str, mode: str, content: str = "hello") -> tuple[Reply, str]:
        m = uuid.uuid4().hex[:12]
        reply = post(self.gw, route_name(scenario, mode), f"{content} [{m}]", mode == "stream")
        return reply, m

    def deployment_state(self, scenario: str, mode: str, role: str) -> dict[str, Any]:
        _, body = get_json(f"{self.gw.url}/readyz")
        return dict(body["deployments"][dep_name(scenario, mode, role)])

    def assert_healthy(self) -> None:
        assert self.gw.proc.poll() is None, self.gw.output()[-3000:]
        status, body = get_json(f"{self.gw.url}/healthz")
        assert status == 200, body

    def assert_accounted(self, reply: Reply, marker: str) -> None:
        """x-hedge-attempts counts every call any upstream saw for this request."""
        assert reply.attempts == len(self.fake.hits_with(marker)), [
            (h.model, h.outcome) for h in self.fake.hits_with(marker)
        ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with (
        fake_openai() as fake,
        run_gateway(config(fake.url), tmp_path_factory.mktemp("faults")) as gw,
    ):
        yield Setup(fake, gw)
        assert "Traceback" not in gw.output(), gw.output()[-5000:]


def assert_clean(reply: Reply, text: str) -> None:
    """A complete, successful answer with exactly this text."""
    assert reply.status == 200, reply.raw[:2000]
    assert reply.error is None, reply.raw[-2000:]
    assert reply.text == text
    assert reply.finishes == ["stop"]
    if reply.stream:
        assert reply.done, reply.raw[-500:]


def echoed(marker: str, content: str = "hello") -> str:
    return f"echo: {content} [{marker}]"


# ---- rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_429_with_retry_after_waits_and_retries_the_same_deployment(
    setup: Setup, mode: str
) -> None:
    reply, m = setup.ask("ra", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("ra", mode, "primary")
    hits = setup.hits("ra", mode, "primary")
    assert len(hits) == 2
    assert hits[0].status == 429 and hits[0].retry_after == "1"
    assert hits[1].at - hits[0].at >= 0.98, "Retry-After: 1 was not honoured"
    assert reply.elapsed < 1 + SLACK
    assert setup.hits("ra", mode, "backup") == []
    assert reply.attempts == 2
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_429_with_an_http_date_retry_after_waits_until_then(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("ra-date", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("ra-date", mode, "primary")
    hits = setup.hits("ra-date", mode, "primary")
    assert len(hits) == 2
    assert hits[0].retry_after_at is not None
    # The retry came no earlier than the instant the HTTP-date named (wall clock).
    assert hits[1].wall >= hits[0].retry_after_at - 0.05, hits[1].wall - hits[0].retry_after_at
    assert hits[1].at - hits[0].at < 2 + SLACK
    assert setup.hits("ra-date", mode, "backup") == []
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_429_with_a_retry_after_over_the_cap_fails_over_at_once(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("ra-long", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("ra-long", mode, "backup")
    assert len(setup.hits("ra-long", mode, "primary")) == 1
    assert len(setup.hits("ra-long", mode, "backup")) == 1
    assert reply.elapsed < 1.0, "a 30 s Retry-After over the 3 s cap must not be waited for"
    assert reply.attempts == 2
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_persistent_429_without_retry_after_fails_over_after_the_retries(
    setup: Setup, mode: str
) -> None:
    reply, m = setup.ask("rl", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("rl", mode, "backup")
    assert len(setup.hits("rl", mode, "primary")) == ATTEMPTS
    assert len(setup.hits("rl", mode, "backup")) == 1
    assert reply.attempts == ATTEMPTS + 1
    assert reply.elapsed < 1.0  # backoff is capped at 0.2 s
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


# ---- server errors and broken connections ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_500_once_is_retried_on_the_same_deployment(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("f500", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("f500", mode, "primary")
    hits = setup.hits("f500", mode, "primary")
    assert [h.status for h in hits] == [500, 200]
    assert setup.hits("f500", mode, "backup") == []
    assert reply.attempts == 2
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_a_persistent_503_fails_over(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("f503", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("f503", mode, "backup")
    assert [h.status for h in setup.hits("f503", mode, "primary")] == [503] * ATTEMPTS
    assert len(setup.hits("f503", mode, "backup")) == 1
    assert reply.attempts == ATTEMPTS + 1
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_a_tcp_reset_before_the_headers_fails_over(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("reset", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("reset", mode, "backup")
    assert [h.outcome for h in setup.hits("reset", mode, "primary")] == ["reset"] * ATTEMPTS
    assert len(setup.hits("reset", mode, "backup")) == 1
    assert reply.attempts == ATTEMPTS + 1
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


# ---- silence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_an_upstream_that_never_answers_is_abandoned(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("blackhole", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("blackhole", mode, "backup")
    # streams wait for the first token (1 s), plain requests for the total (2 s)
    limit = 1 if mode == "stream" else 2
    assert 0.9 <= reply.elapsed < limit + SLACK, reply.elapsed
    hits = setup.hits("blackhole", mode, "primary")
    assert len(hits) == 1
    wait_for(lambda: hits[0].ended is not None, 3)
    assert hits[0].outcome == "client-gone"  # hedge hung up rather than keep the socket
    assert reply.attempts == 2
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_a_first_token_after_20s_is_abandoned_at_the_timeout(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("first-token", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("first-token", mode, "backup")
    # streams: timeouts.first_token (1 s); plain: timeouts.total (3 s)
    limit = 1 if mode == "stream" else 3
    assert 0.9 <= reply.elapsed < limit + SLACK, reply.elapsed
    hits = setup.hits("first-token", mode, "primary")
    assert len(hits) == 1
    wait_for(lambda: hits[0].ended is not None, 3)
    assert hits[0].outcome == "client-gone"
    assert hits[0].ended is not None and hits[0].ended - hits[0].at < limit + SLACK
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


# ---- streams that break after their first bytes --------------------------------------------------


def _resumed_stream(setup: Setup, scenario: str, sent: int) -> None:
    reply, _ = setup.ask(scenario, "stream", "count 60")
    # One complete answer: the part the primary sent, then the rest from the backup.
    assert_clean(reply, counted(60))
    backup = setup.hits(scenario, "stream", "backup")
    assert len(backup) == 1
    assert backup[0].prefill == counted(sent), backup[0].prefill
    assert backup[0].outcome == "answered"
    assert len(setup.hits(scenario, "stream", "primary")) == 1
    setup.assert_healthy()


def _refused_resume(setup: Setup, scenario: str, sent: int) -> None:
    reply, _ = setup.ask(scenario, "stream", "count 60")
    assert reply.status == 200
    error = reply.error
    assert error is not None, reply.raw[-1000:]
    assert "error" in reply.events[-1], "the error event must be the last event"
    assert "stop" not in reply.finishes
    assert b"[DONE]" not in reply.raw
    assert reply.text == counted(sent)  # what went out before the break, nothing twice
    refused = setup.hits(scenario, "stream", "backup")
    assert len(refused) == 1 and refused[0].status == 400
    assert refused[0].prefill == counted(sent)
    setup.assert_healthy()


def test_a_stream_cut_after_40_of_60_tokens_is_resumed_with_a_prefill(setup: Setup) -> None:
    _resumed_stream(setup, "cut-resume", 40)


def test_a_stream_cut_whose_resume_is_refused_ends_in_an_error_event(setup: Setup) -> None:
    _refused_resume(setup, "cut-refused", 40)


def test_a_cut_stream_is_not_resumed_where_prefill_is_not_declared(setup: Setup) -> None:
    reply, _ = setup.ask("cut-no-prefill-quirk", "stream", "count 60")
    assert reply.status == 200
    assert reply.error is not None, reply.raw[-1000:]
    assert "stop" not in reply.finishes
    assert b"[DONE]" not in reply.raw
    assert reply.text == counted(40)
    # The backup would answer anew rather than continue: it is not asked at all.
    assert setup.hits("cut-no-prefill-quirk", "stream", "backup") == []
    setup.assert_healthy()


def test_a_plain_answer_cut_midway_fails_over(setup: Setup) -> None:
    reply, m = setup.ask("cut-resume", "plain", "count 60")
    assert_clean(reply, counted(60))
    assert reply.deployment == dep_name("cut-resume", "plain", "backup")
    assert [h.outcome for h in setup.hits("cut-resume", "plain", "primary")] == ["cut"] * ATTEMPTS
    assert setup.hits("cut-resume", "plain", "backup")[0].prefill is None
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


def test_a_stream_stalled_after_20_tokens_is_resumed_with_a_prefill(setup: Setup) -> None:
    _resumed_stream(setup, "stall-resume", 20)


def test_a_stalled_stream_whose_resume_is_refused_ends_in_an_error_event(setup: Setup) -> None:
    _refused_resume(setup, "stall-refused", 20)


def test_a_plain_answer_stalled_midway_fails_over(setup: Setup) -> None:
    reply, m = setup.ask("stall-resume", "plain", "count 60")
    assert_clean(reply, counted(60))
    assert reply.deployment == dep_name("stall-resume", "plain", "backup")
    assert reply.elapsed < 2 + SLACK  # timeouts.total, one attempt
    assert len(setup.hits("stall-resume", "plain", "primary")) == 1
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_a_malformed_event_within_the_head_fails_over_invisibly(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("malformed", mode, "count 60")
    assert_clean(reply, counted(60))  # one clean answer: nothing of the broken stream shows
    assert reply.deployment == dep_name("malformed", mode, "backup")
    primary = setup.hits("malformed", mode, "primary")
    assert 1 <= len(primary) <= ATTEMPTS
    assert len(setup.hits("malformed", mode, "backup")) == 1
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


def test_a_stream_without_done_is_complete(setup: Setup) -> None:
    reply, m = setup.ask("no-done", "stream", "count 60")
    assert_clean(reply, counted(60))  # and hedge adds the [DONE] its client expects
    assert len(setup.hits("no-done", "stream", "only")) == 1
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


# ---- client errors from upstream ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_context_length_fails_over_only_to_a_larger_window(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("ctx", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("ctx", mode, "larger")
    assert len(setup.hits("ctx", mode, "primary")) == 1  # no retry: it would fail again
    for role in ("same", "unknown", "smaller"):
        assert setup.hits("ctx", mode, role) == [], role
    assert len(setup.hits("ctx", mode, "larger")) == 1
    assert reply.attempts == 2
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_context_length_with_no_larger_window_reaches_the_client(setup: Setup, mode: str) -> None:
    reply, _ = setup.ask("ctx-none", mode)
    assert reply.status == 400, reply.raw[:1000]
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.error
    assert error is not None
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 4096" in error["message"]
    assert len(setup.hits("ctx-none", mode, "primary")) == 1
    assert setup.hits("ctx-none", mode, "smaller") == []
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_a_content_policy_refusal_is_returned_and_not_failed_over(setup: Setup, mode: str) -> None:
    reply, _ = setup.ask("policy", mode)
    assert reply.status == 400, reply.raw[:1000]
    error = reply.error
    assert error is not None
    assert error["code"] == "content_policy_violation"
    assert CONTENT_POLICY_REASON in error["message"]  # the provider's reason, passed on
    assert len(setup.hits("policy", mode, "primary")) == 1
    assert setup.hits("policy", mode, "backup") == []
    setup.assert_healthy()


def test_a_401_revokes_the_deployment(setup: Setup) -> None:
    reply, m = setup.ask("revoked", "plain")
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("revoked", "plain", "backup")
    assert len(setup.hits("revoked", "plain", "primary")) == 1  # a 401 is not retried
    setup.assert_accounted(reply, m)
    state = setup.deployment_state("revoked", "plain", "primary")
    assert state["state"] == "revoked", state
    for _ in range(3):
        for stream in (False, True):
            again = post(setup.gw, route_name("revoked", "plain"), "hello again", stream)
            assert again.status == 200
            assert again.deployment == dep_name("revoked", "plain", "backup")
            assert again.attempts == 1
    assert len(setup.hits("revoked", "plain", "primary")) == 1  # never called again
    setup.assert_healthy()


# ---- hedging and accounting ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_hedged_request_answers_from_the_backup_and_cancels_the_primary(
    setup: Setup, mode: str
) -> None:
    reply, m = setup.ask("hedge", mode)
    done = time.monotonic()
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("hedge", mode, "backup")
    assert 0.15 <= reply.elapsed < 1.0, reply.elapsed  # hedge_after_ms 200, primary takes 2 s
    primary = setup.hits("hedge", mode, "primary")
    backup = setup.hits("hedge", mode, "backup")
    assert len(primary) == 1 and len(backup) == 1
    assert backup[0].at - primary[0].at >= 0.18
    wait_for(lambda: primary[0].ended is not None, 3)
    assert primary[0].outcome == "client-gone"  # cancelled, not left to finish
    assert primary[0].ended is not None and primary[0].ended - done < 0.5
    assert reply.attempts == 2
    setup.assert_accounted(reply, m)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_attempts_header_counts_every_upstream_call_and_usage_is_the_answerers(
    setup: Setup, mode: str
) -> None:
    reply, m = setup.ask("acct", mode)
    assert_clean(reply, echoed(m))
    assert reply.deployment == dep_name("acct", mode, "third")
    assert len(setup.hits("acct", mode, "first")) == ATTEMPTS
    assert len(setup.hits("acct", mode, "second")) == ATTEMPTS
    answered = setup.hits("acct", mode, "third")
    assert len(answered) == 1
    assert reply.attempts == 2 * ATTEMPTS + 1
    setup.assert_accounted(reply, m)
    usage = reply.usage
    assert usage is not None
    expected = answered[0].usage
    assert expected is not None
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage[key] == expected[key], (key, usage, expected)
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_max_attempts_bounds_the_calls_across_the_route(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("max-attempts", mode)
    assert reply.status in (502, 504), reply.raw[:500]
    assert len(setup.fake.hits_with(m)) == 3
    assert reply.attempts == 3
    setup.assert_healthy()


@pytest.mark.parametrize("mode", MODES)
def test_the_deadline_bounds_the_whole_request(setup: Setup, mode: str) -> None:
    reply, m = setup.ask("deadline", mode)
    assert reply.status in (502, 504), reply.raw[:500]
    assert reply.elapsed < 1.5 + SLACK, reply.elapsed
    hits = setup.fake.hits_with(m)
    assert 1 <= len(hits) <= 2
    wait_for(lambda: all(h.ended is not None for h in hits), 3)
    assert {h.outcome for h in hits} == {"client-gone"}
    setup.assert_healthy()


def test_balance_spreads_first_picks_by_weight(setup: Setup) -> None:
    served: dict[str, int] = {}
    for _ in range(200):
        reply = post(setup.gw, route_name("balance", "plain"), "hi", False)
        assert reply.status == 200
        served[reply.deployment] = served.get(reply.deployment, 0) + 1
    heavy = served.get(dep_name("balance", "plain", "heavy"), 0)
    assert 0.6 <= heavy / 200 <= 0.9, served
    assert sum(served.values()) == 200
    setup.assert_healthy()


# ---- the breaker over a long outage ------------------------------------------------------------


def test_a_60s_outage_opens_the_breaker_and_traffic_returns_after(setup: Setup) -> None:
    route = route_name("breaker", "plain")
    primary = dep_name("breaker", "plain", "primary")
    backup = dep_name("breaker", "plain", "backup")
    results: list[tuple[float, int, str]] = []
    breaker_states: list[tuple[float, str]] = []
    start = time.monotonic()
    for i in range(200):
        now = time.monotonic() - start
        recovered = [d for _, _, d in results[-4:]] == [primary] * 4
        if now > 80 or (now > 62 and recovered):
            break
        reply = post(setup.gw, route, f"tick {i}", False, timeout=10)
        results.append((now, reply.status, reply.deployment))
        state = setup.deployment_state("breaker", "plain", "primary")
        breaker_states.append((now, state["breaker"]))
        time.sleep(max(0.0, start + 0.5 * (i + 1) - time.monotonic()))

    print(
        f"breaker: {len(results)} requests over {results[-1][0]:.1f}s; primary hits "
        f"{[round(h.at - start, 1) for h in setup.hits('breaker', 'plain', 'primary')][:30]}; "
        f"first open at {next((t for t, st in breaker_states if st == 'open'), None)}"
    )
    assert all(status == 200 for _, status, _ in results), [r for r in results if r[1] != 200]
    assert "open" in {s for _, s in breaker_states}, breaker_states
    hits = setup.hits("breaker", "plain", "primary")
    outage_end = hits[0].at + 60
    during = [h for h in hits if h.at < outage_end]
    asked_during = sum(1 for t, _, _ in results if start + t < outage_end)
    # 3 failures open it, then one probe per 5 s cooldown: about 3 + 12, far fewer than asked.
    assert len(during) <= 3 + 60 / 5 + 2, [round(h.at - hits[0].at, 2) for h in during]
    assert len(during) < asked_during / 4, (len(during), asked_during)
    probes = [h.at for h in during[3:]]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(g >= 4.8 for g in gaps), gaps  # one probe per cooldown
    assert any(d == backup for _, _, d in results)
    assert [d for _, _, d in results[-4:]] == [primary] * 4, results[-8:]
    assert setup.deployment_state("breaker", "plain", "primary")["breaker"] == "closed"
    setup.assert_healthy()


def wait_for(predicate: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not predicate():
        time.sleep(0.02)
