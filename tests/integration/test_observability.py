"""Prometheus /metrics and the JSON request log, through a running gateway.

Requests of every kind (answered, cached, refused by policy, failed upstream, validated) are
sent with the openai SDK; the counters /metrics then shows, and the log lines the gateway
wrote, must add up to exactly what was sent.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai

ADMIN = "admin-secret-for-metrics"

CONFIG = """\
server: {{admin_key_env: {admin_env}}}
policies:
  self-hosted-only: {{hosting: self-hosted}}
deployments:
  cheap:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo-metrics
    hosting: hosted
    prices: {{input: 1.0, output: 2.0}}
  broken:
    kind: openai_compat
    base_url: {url}
    upstream_model: fail-500#metrics
    hosting: hosted
routes:
  chat:
    deployments: [cheap]
    cache: {{enabled: true}}
  down:
    deployments: [broken]
    retry: {{attempts_per_deployment: 1}}
    accept_single_point_of_failure: true
  checked:
    cascade:
      stages:
        - deployments: [cheap]
          validators: [{{kind: regex, pattern: "^echo"}}]
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(gw: Gateway, key: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(f"{gw.url}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, FakeOpenAI]]:
    tmp = tmp_path_factory.mktemp("observability")
    with (
        fake_openai() as fake,
        run_gateway(
            CONFIG.format(url=fake.url, admin_env="HEDGE_TEST_METRICS_ADMIN"),
            tmp,
            env={"HEDGE_TEST_METRICS_ADMIN": ADMIN},
        ) as gw,
    ):
        yield gw, fake


def chat(gw: Gateway, route: str, text: str, **extra: Any) -> Any:
    api = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)
    return api.chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": text}], **extra
    )


def test_metrics_count_what_happened(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    before = scrape(gw, ADMIN)
    ids = []
    for text in ("one", "two", "one"):  # the second "one" is a cache hit
        raw = chat(gw, "chat", text, temperature=0)
        ids.append(raw.headers["x-request-id"])
    usage = [chat(gw, "chat", "three", temperature=0.5).parse().usage]
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, "chat", "refused", extra_headers={"X-Hedge-Policy": "self-hosted-only"})
    with pytest.raises(openai.APIStatusError):
        chat(gw, "down", "fails")
    usage.append(chat(gw, "checked", "validated").parse().usage)
    for name in ("no-such-route-1", "no-such-route-2"):
        with pytest.raises(openai.NotFoundError):
            chat(gw, name, "x")
    after = scrape(gw, ADMIN)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hedge_requests_total", route="chat", deployment="cheap", status="200") == 4
    assert delta("hedge_requests_total", route="chat", deployment="", status="403") == 1
    assert delta("hedge_request_errors_total", route="chat", code="policy_refused") == 1
    assert delta("hedge_requests_total", route="down", deployment="", status="502") == 1
    assert delta("hedge_attempts_total", deployment="broken", outcome="error") == 1
    # 4 calls reached the cheap upstream: one, two, three and the validated one
    assert delta("hedge_attempts_total", deployment="cheap", outcome="ok") == 4
    assert delta("hedge_cache_total", route="chat", result="hit") == 1
    assert delta("hedge_cache_total", route="chat", result="miss") == 2
    assert delta("hedge_cache_total", route="chat", result="bypass") == 1
    assert delta("hedge_successes_total", route="checked") == 1
    assert delta("hedge_request_duration_seconds_count", route="chat") == 5
    spent = (usage[1].prompt_tokens * 1.0 + usage[1].completion_tokens * 2.0) / 1e6
    assert delta("hedge_spend_usd_total", route="checked") == pytest.approx(spent)
    assert value(after, "hedge_cost_per_success_usd", route="checked") == pytest.approx(spent)
    assert value(after, "hedge_breaker_state", deployment="cheap") == 0
    # a client's model names never become label values
    assert delta("hedge_requests_total", route="_unknown", deployment="", status="404") == 2
    assert not any("no-such-route" in str(labels) for _, labels in after)
    assert ids[0] != ids[2]


def test_breaker_and_revocation_show_as_a_gauge(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    req = urllib.request.Request(
        f"{gw.url}/admin/deployments/broken/revoke",
        data=b"{}",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10):
        pass
    assert value(scrape(gw, ADMIN), "hedge_breaker_state", deployment="broken") == 3


def test_metrics_need_the_admin_key(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    for key in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            scrape(gw, key)
        assert caught.value.code == 401
        body = json.loads(caught.value.read())
        assert body["error"]["type"] == "authentication_error"


def test_one_json_log_line_per_request_and_no_prompt_text(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, _ = setup
    raw = chat(gw, "chat", "a secret prompt 7731", temperature=0)
    rid = raw.headers["x-request-id"]
    with pytest.raises(openai.APIStatusError):
        chat(gw, "down", "another 7731")

    def logged() -> list[dict[str, Any]]:
        return [json.loads(line) for line in gw.output().splitlines() if line.startswith("{")]

    # A request's line is written just after its answer went out: wait for both.
    deadline = time.monotonic() + 5
    while True:
        lines = logged()
        done = any(x.get("request_id") == rid for x in lines) and any(
            x.get("route") == "down" and x.get("status") == 502 for x in lines
        )
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    mine = [line for line in lines if line.get("request_id") == rid]
    assert len(mine) == 1
    (line,) = mine
    assert line["logger"] == "hedge.requests" and line["level"] == "info"
    assert (line["route"], line["deployment"], line["status"]) == ("chat", "cheap", 200)
    assert line["attempts"] == 1 and line["cache"] == "miss" and line["latency_ms"] > 0
    failed = [x for x in lines if x.get("route") == "down" and x.get("status") == 502]
    assert failed and failed[-1]["level"] == "warning" and failed[-1]["error"]
    assert "7731" not in gw.output(), "prompts never reach the log"
    assert ADMIN not in gw.output()


def test_text_logs_when_configured(tmp_path: Path) -> None:
    with fake_openai() as fake:
        cfg = CONFIG.format(url=fake.url, admin_env="HEDGE_TEST_METRICS_ADMIN").replace(
            "server: {", "server: {log_format: text, "
        )
        with run_gateway(cfg, tmp_path, env={"HEDGE_TEST_METRICS_ADMIN": ADMIN}) as gw:
            rid = chat(gw, "chat", "hello", temperature=0).headers["x-request-id"]
        out = gw.output()  # the request's line is written just after its answer went out
    (line,) = [x for x in out.splitlines() if f"request_id={rid}" in x]
    assert "INFO hedge.requests: request" in line and "route=chat" in line
