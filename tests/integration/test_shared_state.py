"""Two gateway processes sharing breaker state and drill revocations through one real Redis.

Each process would otherwise learn about a failing upstream only from its own failures, and a
drill would cut only the process it reached.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import HEDGE, Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai
from tests.redis_server import RedisServer, find_redis_server, throwaway_redis

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="redis-server is not installed")

CONFIG = """\
shared_state: {{backend: {backend}, sync_interval_s: 0.2, prefix: "test:{tag}:"}}
deployments:
  flaky:
    kind: openai_compat
    base_url: {url}
    upstream_model: fail-500#{tag}
    hosting: hosted
    breaker: {{failures: 2, cooldown_s: 60}}
  backup:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo#{tag}
    hosting: hosted
routes:
  chat:
    deployments: [flaky, backup]
    retry: {{attempts_per_deployment: 1}}
"""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    binary = find_redis_server()
    assert binary is not None
    with throwaway_redis(binary) as server:
        yield server


def ask(gw: Gateway) -> dict[str, str]:
    api = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)
    raw = api.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "echo: hi"
    return dict(raw.headers)


def deployments(gw: Gateway) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gw.url}/admin/deployments", timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())["deployments"]
    return body


def admin(gw: Gateway, action: str, deployment: str) -> None:
    req = urllib.request.Request(
        f"{gw.url}/admin/deployments/{deployment}/{action}",
        data=json.dumps({"reason": "drill"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the other process never saw it"
        time.sleep(0.05)


def flaky_hits(fake: FakeOpenAI, tag: str) -> int:
    return len(fake.hits_for(f"fail-500#{tag}"))


@pytest.mark.parametrize("backend", ["redis", "none"])
def test_a_breaker_opened_by_one_process_is_open_in_the_other(
    tmp_path: Path, redis: RedisServer, backend: str
) -> None:
    tag = f"breaker-{backend}"
    env = {"HEDGE_STATE_URL": redis.url}
    with fake_openai() as fake:
        cfg = CONFIG.format(url=fake.url, backend=backend, tag=tag)
        with run_gateway(cfg, tmp_path, env=env) as a, run_gateway(cfg, tmp_path, env=env) as b:
            for _ in range(2):  # two failures through A open its breaker
                assert ask(a)["x-hedge-attempts"] == "2"
            assert deployments(a)["flaky"]["breaker"] == "open"
            before = flaky_hits(fake, tag)
            assert before == 2
            if backend == "none":
                # Without sharing, B learns only from its own failures.
                assert ask(b)["x-hedge-attempts"] == "2"
                assert flaky_hits(fake, tag) == before + 1
                return
            eventually(lambda: deployments(b)["flaky"]["breaker"] == "open")
            for _ in range(5):
                assert ask(b)["x-hedge-attempts"] == "1"
            assert flaky_hits(fake, tag) == before, "B never called the failing upstream"


def test_a_drill_on_one_process_cuts_and_restores_every_process(
    tmp_path: Path, redis: RedisServer
) -> None:
    tag = "drill"
    env = {"HEDGE_STATE_URL": redis.url}
    with fake_openai() as fake:
        cfg = CONFIG.format(url=fake.url, backend="redis", tag=tag).replace(
            "fail-500#", "echo-primary#"
        )
        with run_gateway(cfg, tmp_path, env=env) as a, run_gateway(cfg, tmp_path, env=env) as b:
            assert ask(b)["x-hedge-deployment"] == "flaky"
            admin(a, "revoke", "flaky")
            eventually(lambda: deployments(b)["flaky"]["revoked"])
            assert ask(b)["x-hedge-deployment"] == "backup"
            assert ask(a)["x-hedge-deployment"] == "backup"
            # restored through the other process: the one that revoked follows too
            admin(b, "restore", "flaky")
            eventually(lambda: not deployments(a)["flaky"]["revoked"])
            assert not deployments(b)["flaky"]["revoked"]
            assert ask(a)["x-hedge-deployment"] == "flaky"
            assert ask(b)["x-hedge-deployment"] == "flaky"
        # A process started later still sees a revocation made before it started.
        with run_gateway(cfg, tmp_path, env=env) as a:
            admin(a, "revoke", "flaky")
            with run_gateway(cfg, tmp_path, env=env) as late:
                assert deployments(late)["flaky"]["revoked"]
                assert ask(late)["x-hedge-deployment"] == "backup"
            admin(a, "restore", "flaky")


def test_a_state_url_is_required_for_redis(tmp_path: Path) -> None:
    cfg = tmp_path / "hedge.yaml"
    cfg.write_text(CONFIG.format(url="http://127.0.0.1:9/v1", backend="redis", tag="x"))
    out = subprocess.run(
        [*HEDGE, "config", "check", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode != 0
    assert "shared_state.backend is redis but $HEDGE_STATE_URL is not set" in out.stderr
