"""Kill-switch drill under load: `hedge drill --revoke` cuts a deployment off while clients keep
sending, and not one of their requests fails.

A bounded loopback load generator (aiohttp, a fixed number of workers for a fixed time) sends
to a route [primary, backup] served by the fake upstream; mid-way the drill revokes the
primary through the admin API, as an operator would. Then the admin API itself: closed to
non-loopback clients when no admin key is configured, and to anyone without the key when one is.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import HEDGE, Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai

WORKERS = 8
LOAD_SECONDS = 10.0
DRILL_AT = 4.0
MAX_REQUESTS_PER_WORKER = 20_000
ADMIN_ENV = "HEDGE_TEST_ADMIN_KEY"
ADMIN_KEY = "s3cret-admin-key"


def config(fake_url: str, server: dict[str, Any] | None = None) -> str:
    def echo(name: str) -> dict[str, Any]:
        return {
            "kind": "openai_compat",
            "hosting": "self-hosted",
            "base_url": fake_url,
            "upstream_model": f"echo#{name}",
            "timeouts": {"connect": 1, "first_token": 5, "idle": 5, "total": 10},
        }

    cfg: dict[str, Any] = {
        "deployments": {"primary": echo("primary"), "backup": echo("backup")},
        "routes": {"chat": {"deployments": ["primary", "backup"]}},
    }
    if server:
        cfg["server"] = server
    return yaml.safe_dump(cfg, sort_keys=False)


@dataclass
class Setup:
    fake: FakeOpenAI
    gw: Gateway
    tmp: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("drill")
    with fake_openai() as fake, run_gateway(config(fake.url), tmp) as gw:
        yield Setup(fake, gw, tmp)


def drill(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("HEDGE_CONFIG", ADMIN_ENV)}
    return subprocess.run(
        [*HEDGE, "drill", *args],
        cwd=cwd,
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"{}" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def admin_entry(payload: Any, name: str) -> dict[str, Any]:
    """The deployment's entry in GET /admin/deployments, whichever of the usual shapes it is."""
    if isinstance(payload, dict) and "deployments" in payload:
        payload = payload["deployments"]
    if isinstance(payload, dict) and "data" in payload:
        payload = payload["data"]
    if isinstance(payload, dict):
        return dict(payload[name])
    for item in payload:
        if item.get("name") == name or item.get("id") == name:
            return dict(item)
    raise AssertionError(f"{name} not in {payload!r}")


def readyz(gw: Gateway) -> dict[str, Any]:
    return dict(request(f"{gw.url}/readyz")[1])


def chat_once(gw: Gateway, text: str = "hi") -> tuple[int, str]:
    req = urllib.request.Request(
        f"{gw.v1}/chat/completions",
        data=json.dumps(
            {"model": "chat", "messages": [{"role": "user", "content": text}]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers["x-hedge-deployment"]


# ---- the load generator ----------------------------------------------------------------------


@dataclass
class Result:
    sent: float
    done: float
    status: int
    deployment: str
    ok: bool
    detail: str = ""


@dataclass
class Drill:
    started: float = 0.0
    finished: float = 0.0
    returncode: int | None = None
    output: str = ""


async def _load(setup: Setup) -> tuple[list[Result], Drill]:
    results: list[Result] = []
    record = Drill()
    start = time.monotonic()
    end = start + LOAD_SECONDS
    url = f"{setup.gw.v1}/chat/completions"

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        for i in range(MAX_REQUESTS_PER_WORKER):
            if time.monotonic() >= end:
                return
            text = f"w{w} r{i}"
            sent = time.monotonic()
            try:
                async with session.post(
                    url, json={"model": "chat", "messages": [{"role": "user", "content": text}]}
                ) as resp:
                    body = await resp.read()
                    done = time.monotonic()
                    deployment = resp.headers.get("x-hedge-deployment", "")
                    ok = resp.status == 200
                    detail = ""
                    if ok:
                        answer = json.loads(body)["choices"][0]["message"]["content"]
                        ok = answer == f"echo: {text}"
                        detail = "" if ok else f"wrong answer {answer!r}"
                    else:
                        detail = body[:300].decode(errors="replace")
                    results.append(Result(sent, done, resp.status, deployment, ok, detail))
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                results.append(Result(sent, time.monotonic(), 0, "", False, repr(e)))

    async def run_drill() -> None:
        await asyncio.sleep(DRILL_AT)
        record.started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *HEDGE,
            "drill",
            "--revoke",
            "primary",
            "--url",
            setup.gw.url,
            cwd=setup.tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        record.finished = time.monotonic()
        record.returncode = proc.returncode
        record.output = out.decode(errors="replace")

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=WORKERS)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(run_drill(), *(worker(session, w) for w in range(WORKERS)))
    return results, record


def test_revoking_the_primary_under_load_fails_no_request(setup: Setup) -> None:
    assert chat_once(setup.gw) == (200, "primary")
    results, record = asyncio.run(_load(setup))
    before = [r for r in results if r.done < record.started]
    after = [r for r in results if r.sent > record.finished]

    print(
        f"load: {len(results)} requests, {len(before)} done before the drill, "
        f"{len(after)} sent after it; drill took {record.finished - record.started:.2f}s"
    )
    assert record.returncode == 0, record.output
    assert "revoked" in record.output, record.output
    failed = [r for r in results if not r.ok]
    assert len(results) >= 200, f"the load generator only managed {len(results)} requests"
    assert failed == [], f"{len(failed)} of {len(results)} failed, e.g. {failed[:3]}"

    assert len(before) >= 50 and len(after) >= 50, (len(before), len(after))
    assert {r.deployment for r in before} == {"primary"}
    assert {r.deployment for r in after} == {"backup"}
    # The upstream agrees: nothing reached the primary once the drill had returned.
    t_done = record.finished
    assert not [h for h in setup.fake.hits_for("echo#primary") if h.at > t_done]

    status, payload = request(f"{setup.gw.url}/admin/deployments")
    assert status == 200, payload
    assert admin_entry(payload, "primary")["state"] == "revoked", payload
    assert admin_entry(payload, "backup")["state"] == "ready", payload
    ready = readyz(setup.gw)
    assert ready["deployments"]["primary"]["state"] == "revoked", ready
    assert ready["routes"]["chat"] == "ready", ready  # the backup still serves the route

    restored = drill("--restore", "primary", "--url", setup.gw.url, cwd=setup.tmp)
    assert restored.returncode == 0, restored.stderr + restored.stdout
    status, payload = request(f"{setup.gw.url}/admin/deployments")
    assert admin_entry(payload, "primary")["state"] == "ready", payload
    assert readyz(setup.gw)["deployments"]["primary"]["state"] == "ready"
    served = [chat_once(setup.gw, f"after restore {i}") for i in range(20)]
    assert served == [(200, "primary")] * 20

    with urllib.request.urlopen(f"{setup.gw.url}/healthz", timeout=5) as resp:
        assert resp.status == 200
    assert "Traceback" not in setup.gw.output()


def test_revoking_an_unknown_deployment_is_refused(setup: Setup) -> None:
    status, payload = request(f"{setup.gw.url}/admin/deployments/nonexistent/revoke", method="POST")
    assert status == 404, payload
    done = drill("--revoke", "nonexistent", "--url", setup.gw.url, cwd=setup.tmp)
    assert done.returncode != 0
    assert chat_once(setup.gw) == (200, "primary")


# ---- who may use the admin API ---------------------------------------------------------------


def test_the_admin_api_wants_the_key_when_one_is_configured(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("drill-key")
    cfg = config("http://127.0.0.1:9/v1", {"admin_key_env": ADMIN_ENV})
    with run_gateway(cfg, tmp, env={ADMIN_ENV: ADMIN_KEY}) as gw:
        revoke = f"{gw.url}/admin/deployments/primary/revoke"
        listing = f"{gw.url}/admin/deployments"
        for headers in ({}, {"Authorization": "Bearer wrong-key"}):
            status, payload = request(revoke, "POST", headers)
            assert status in (401, 403), (headers, status, payload)
            status, payload = request(listing, "GET", headers)
            assert status in (401, 403), (headers, status, payload)
        assert readyz(gw)["deployments"]["primary"]["state"] == "ready"

        good = {"Authorization": f"Bearer {ADMIN_KEY}"}
        status, payload = request(revoke, "POST", good)
        assert status == 200, payload
        status, payload = request(listing, "GET", good)
        assert status == 200 and admin_entry(payload, "primary")["state"] == "revoked", payload
        status, payload = request(f"{gw.url}/admin/deployments/primary/restore", "POST", good)
        assert status == 200, payload
        assert readyz(gw)["deployments"]["primary"]["state"] == "ready"

        # The CLI reads the key from the environment variable the config names...
        config_file = next(tmp.glob("hedge-*.yaml"))
        args = ("--revoke", "primary", "--url", gw.url, "--config", str(config_file))
        refused = drill(*args, cwd=tmp)
        assert refused.returncode != 0, refused.stdout
        assert readyz(gw)["deployments"]["primary"]["state"] == "ready"
        allowed = drill(*args, cwd=tmp, env={ADMIN_ENV: ADMIN_KEY})
        assert allowed.returncode == 0, allowed.stderr + allowed.stdout
        assert readyz(gw)["deployments"]["primary"]["state"] == "revoked"


def test_without_a_key_the_admin_api_answers_loopback_only(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Without API keys the gateway binds loopback only (it refuses 0.0.0.0: see
    test_keys_and_limits), and its admin API answers only calls that are really local."""
    tmp = tmp_path_factory.mktemp("drill-loopback")
    cfg = config("http://127.0.0.1:9/v1")
    with run_gateway(cfg, tmp) as gw:
        listing = f"{gw.url}/admin/deployments"
        revoke = f"{gw.url}/admin/deployments/primary/revoke"
        # A loopback connection from a local reverse proxy that says whom it forwards for is
        # that client's call, not a local one.
        forwarded = {"X-Forwarded-For": "203.0.113.7"}
        status, payload = request(listing, "GET", forwarded)
        assert status in (401, 403), (status, payload)
        status, payload = request(revoke, "POST", forwarded)
        assert status in (401, 403), (status, payload)
        assert readyz(gw)["deployments"]["primary"]["state"] == "ready"

        status, payload = request(listing)  # a plain loopback call is let in
        assert status == 200, payload
        assert admin_entry(payload, "primary")["state"] == "ready"
