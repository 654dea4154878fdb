"""API keys, limits and budgets through real `hedge serve` processes, with the official openai
SDK as the client and loopback fake upstreams: authentication, admin vs client keys, per-key
policies, routes and ceilings, revocation while running, budgets under concurrent requests,
one rate limit shared by two gateways through a real redis-server, and the privacy defaults.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import redis_server
from tests.conftest import HEDGE, free_port, run_gateway
from tests.fakes.openai_fake import fake_openai

ADMIN = "admin-secret-for-tests"

CONFIG = """\
server: {{admin_key_env: HEDGE_TEST_ADMIN}}
ledger: {{backend: sqlite, path: {dir}/ledger.db, flush_interval_s: 0.1}}
keys: {{path: {dir}/keys.db, refresh_s: 0.2}}
limits: {{backend: {backend}}}
policies:
  self-hosted-only: {{hosting: self-hosted}}
deployments:
  paid:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo
    hosting: hosted
    prices: {{input: 0.0, output: 1000.0}}
routes:
  chat:
    deployments: [paid]
  other:
    deployments: [paid]
"""


def config(tmp: Path, url: str, backend: str = "memory") -> str:
    return CONFIG.format(dir=tmp, url=url, backend=backend)


def hedge_keys(cfg: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*HEDGE, "keys", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def request(
    url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def client(v1: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=v1, api_key=key, max_retries=0)


def ask(v1: str, key: str, text: str = "hello", model: str = "chat", **extra: Any) -> Any:
    return client(v1, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **extra
    )


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# One gateway for the whole tour: a start per check would multiply the suite's time.
def test_keys_guard_every_endpoint_and_nothing_private_is_stored(  # noqa: PLR0915
    tmp_path: Path,
) -> None:
    with fake_openai() as fake, fake_openai() as elsewhere:
        cfg = tmp_path / "hedge.yaml"
        cfg.write_text(config(tmp_path, fake.url))
        key = hedge_keys(cfg, "create", "--name", "app", "--rpm", "100")
        narrow = hedge_keys(
            cfg,
            "create",
            "--name",
            "narrow",
            "--route",
            "chat",
            "--max-messages",
            "2",
            "--max-tokens",
            "5",
            "--max-body-bytes",
            "2000",
        )
        policed = hedge_keys(cfg, "create", "--name", "policed", "--policy", "self-hosted-only")
        limited = hedge_keys(cfg, "create", "--name", "limited", "--rpm", "2")
        secret = key.rsplit("_", 1)[1]
        for f in tmp_path.glob("keys.db*"):  # the store holds salted hashes only
            assert secret.encode() not in f.read_bytes()
        listing = hedge_keys(cfg, "list", "--json")
        assert secret not in listing and len(json.loads(listing)) == 4

        env = {"HEDGE_TEST_ADMIN": ADMIN}
        with run_gateway(cfg.read_text(), tmp_path, ready_timeout=30, env=env) as gw:
            # open: health; closed: everything else without a valid key
            assert request(f"{gw.url}/healthz")[0] == 200
            assert request(f"{gw.url}/openapi.json", headers={})[0] == 401  # it names routes
            openapi_doc = request(
                f"{gw.url}/openapi.json", headers={"Authorization": f"Bearer {key}"}
            )
            assert openapi_doc[0] == 200 and "chat" in json.dumps(openapi_doc[2])
            with urllib.request.urlopen(f"{gw.url}/dashboard", timeout=10) as page:
                assert page.status == 200  # the page holds no data; its calls need the admin key
            assert request(f"{gw.url}/admin/dashboard/summary")[0] == 401
            as_client = {"Authorization": f"Bearer {key}"}
            assert request(f"{gw.url}/metrics", headers=as_client)[0] == 401  # not a client's
            status, _, body = request(f"{gw.v1}/models")
            assert status == 401 and body["error"]["type"] == "authentication_error"
            with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
                ask(gw.v1, key[:-1] + ("0" if key[-1] != "0" else "1"))
            with pytest.raises(openai.AuthenticationError):
                ask(gw.v1, "sk-not-a-hedge-key")
            status, _, body = request(
                f"{gw.v1}/messages",
                {"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            )
            assert status == 401 and body["type"] == "error"  # the Anthropic door's shape
            status, _, _ = request(
                f"{gw.v1}/messages",
                {"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
                {"x-api-key": key},
            )
            assert status == 200
            answer = ask(gw.v1, key, "hello there")
            assert answer.choices[0].message.content == "echo: hello there"
            # what the guard cannot parse, the handler still refuses precisely
            for raw_body, reason in ((b'{"model": "chat",', "not valid JSON"), (b"[1]", "array")):
                refused = urllib.request.Request(
                    f"{gw.v1}/chat/completions", data=raw_body, headers=as_client
                )
                with pytest.raises(urllib.error.HTTPError) as bad:
                    urllib.request.urlopen(refused, timeout=10)
                assert (
                    bad.value.code == 400
                    and reason in json.loads(bad.value.read())["error"]["message"]
                )

            # admin endpoints: the admin key, never a client key
            admin_url = f"{gw.url}/admin/deployments"
            assert request(admin_url, headers={"Authorization": f"Bearer {key}"})[0] == 401
            assert request(admin_url)[0] == 401
            assert request(admin_url, headers={"Authorization": f"Bearer {ADMIN}"})[0] == 200

            # a key's policy narrows the route; its routes and ceilings bind; nothing is sent
            hits = len(fake.hits)
            with pytest.raises(openai.PermissionDeniedError, match="Policy refuses"):
                ask(gw.v1, policed)
            with pytest.raises(openai.PermissionDeniedError, match="may not use model 'other'"):
                ask(gw.v1, narrow, model="other")
            with pytest.raises(openai.BadRequestError, match="at most 5"):
                ask(gw.v1, narrow, max_tokens=6)
            with pytest.raises(openai.BadRequestError, match="at most 2"):
                client(gw.v1, narrow).chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "a"}] * 3
                )
            with pytest.raises(openai.APIStatusError, match="2000 bytes") as too_big:
                ask(gw.v1, narrow, "x" * 3000)
            assert too_big.value.status_code == 413
            assert len(fake.hits) == hits
            ask(gw.v1, narrow)  # without max_tokens, the key's ceiling is sent upstream
            assert fake.hits[-1].body["max_tokens"] == 5

            # rate limit in one process, with Retry-After
            ask(gw.v1, limited)
            ask(gw.v1, limited)
            with pytest.raises(openai.RateLimitError, match="2 requests per minute") as limit:
                ask(gw.v1, limited)
            assert 1 <= int(limit.value.response.headers["retry-after"]) <= 30

            # a request cannot choose the address hedge calls
            marker = "private-prompt-7f3a9c"
            before = len(fake.hits)
            status, _, _ = request(
                f"{gw.v1}/chat/completions",
                {
                    "model": "chat",
                    "messages": [{"role": "user", "content": marker}],
                    "base_url": elsewhere.url,
                    "api_base": elsewhere.url,
                },
                {"Authorization": f"Bearer {key}", "X-Base-Url": elsewhere.url},
            )
            assert status == 200
            assert len(fake.hits) == before + 1 and elsewhere.hits == []

            # keys created and revoked while the gateway runs take effect within refresh_s
            late = hedge_keys(cfg, "create", "--name", "late")

            def works(k: str) -> bool:
                try:
                    ask(gw.v1, k)
                except openai.AuthenticationError:
                    return False
                return True

            wait_until(lambda: works(late))
            late_id = late.split("_")[1]
            hedge_keys(cfg, "revoke", late_id)
            wait_until(lambda: not works(late))
            with pytest.raises(openai.AuthenticationError, match="revoked"):
                ask(gw.v1, late)
            time.sleep(0.3)  # one ledger flush
            log = gw.output()

        # privacy: the ledger keeps metadata only, and no secret reaches the log
        for db_file in (tmp_path / "ledger.db", tmp_path / "keys.db", tmp_path / "keys-budgets.db"):
            with sqlite3.connect(db_file) as db:
                tables = [
                    r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                for table in tables:
                    for row in db.execute(f"SELECT * FROM {table}"):
                        text = " ".join(str(c) for c in row)
                        assert marker not in text and "hello there" not in text
                        assert secret not in text
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            assert db.execute("SELECT count(*) FROM requests").fetchone()[0] >= 5
            callers = {r[0] for r in db.execute("SELECT DISTINCT caller_key FROM requests")}
        assert key.split("_")[1] in callers, "spend is recorded against the key's id"
        for k in (key, narrow, policed, limited, late):
            assert k.rsplit("_", 1)[1] not in log
        assert ADMIN not in log


def test_start_up_rule_without_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "hedge.yaml"
    cfg.write_text(config(tmp_path, "http://127.0.0.1:9/v1"))
    refused = subprocess.run(
        [*HEDGE, "serve", "--config", str(cfg), "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "refusing to bind 0.0.0.0: no API key exists" in refused.stderr
    assert "hedge keys create" in refused.stderr
    with run_gateway(cfg.read_text(), tmp_path, ready_timeout=30, env={}) as gw:
        assert "open to local callers only" in gw.output()
        assert request(f"{gw.v1}/models")[0] == 200  # open to loopback callers


def test_budget_holds_under_concurrent_requests(tmp_path: Path) -> None:
    with fake_openai() as fake:
        cfg = tmp_path / "hedge.yaml"
        cfg.write_text(config(tmp_path, fake.url))
        # 10 completion tokens at $1000/1M = $0.01 per request: the budget covers five
        key = hedge_keys(cfg, "create", "--name", "spender", "--budget", "0.05", "--period", "day")
        with run_gateway(cfg.read_text(), tmp_path, ready_timeout=30) as gw:

            def one(i: int) -> str:
                try:
                    ask(gw.v1, key, f"count 10 #{i}", max_tokens=10)
                except openai.RateLimitError as e:
                    assert e.code == "budget_exceeded" and "Budget exhausted" in e.message
                    assert e.response.headers["x-should-retry"] == "false"
                    return "refused"
                return "ok"

            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                outcomes = list(pool.map(one, range(12)))
            assert outcomes.count("ok") == 5 and len(fake.hits) == 5
            with pytest.raises(openai.RateLimitError, match="spent"):
                ask(gw.v1, key, "count 1", max_tokens=1)
            assert len(fake.hits) == 5
        with sqlite3.connect(tmp_path / "keys-budgets.db") as db:
            spent = db.execute("SELECT sum(spent_usd) FROM budget_spend").fetchone()[0]
            held = db.execute("SELECT count(*) FROM budget_holds").fetchone()[0]
        assert spent == pytest.approx(0.05) and held == 0


def test_one_rate_limit_shared_by_two_gateways_through_redis(tmp_path: Path) -> None:
    binary = redis_server.find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed; run scripts/system-deps.sh")
    with redis_server.throwaway_redis(binary) as redis, fake_openai() as fake:
        cfg = tmp_path / "hedge.yaml"
        cfg.write_text(config(tmp_path, fake.url, backend="redis"))
        env = {"HEDGE_LIMITS_URL": redis.url}
        key = hedge_keys(cfg, "create", "--name", "shared", "--rpm", "3", env=env)
        with (
            run_gateway(cfg.read_text(), tmp_path, ready_timeout=30, env=env) as a,
            run_gateway(cfg.read_text(), tmp_path, ready_timeout=30, env=env) as b,
        ):
            results = []
            for gw in (a, b, a, b, a, b):
                try:
                    ask(gw.v1, key)
                    results.append("ok")
                except openai.RateLimitError as e:
                    assert int(e.response.headers["retry-after"]) >= 1
                    results.append("limited")
            assert results.count("ok") == 3 and results[:3] == ["ok"] * 3
            assert len(fake.hits) == 3


def test_revoking_the_last_key_shuts_the_door_and_ceilings_bind_null_max_tokens(
    tmp_path: Path,
) -> None:
    with fake_openai() as fake:
        cfg = tmp_path / "hedge.yaml"
        cfg.write_text(config(tmp_path, fake.url))
        key = hedge_keys(cfg, "create", "--name", "only", "--max-tokens", "7")
        env = {"HEDGE_TEST_ADMIN": ADMIN}
        with run_gateway(cfg.read_text(), tmp_path, ready_timeout=30, env=env) as gw:
            # an explicit null is no limit: the key's ceiling is sent upstream instead
            fake.reset()
            ask(gw.v1, key, extra_body={"max_tokens": None})
            assert fake.hits[-1].body["max_tokens"] == 7
            hedge_keys(cfg, "revoke", key.split("_")[1])
            # the revoked key itself is the signal: a keyless request was refused before too
            bearer = {"Authorization": f"Bearer {key}"}
            wait_until(lambda: request(f"{gw.v1}/models", headers=bearer)[0] == 401)
            status, _, body = request(f"{gw.v1}/models")
            assert status == 401 and body["error"]["type"] == "authentication_error"
            with pytest.raises(openai.AuthenticationError):
                ask(gw.v1, key)
