"""The dashboard through a real `hedge serve` and a real browser: requests sent with the openai
SDK to a loopback fake upstream (served, refused by policy, failed, judged by a validator), then
headless Chromium (Playwright, driving the system's /usr/bin/chromium) signs in with the admin
key and finds them on the page; a revocation shows up live.

Set HEDGE_UPDATE_SCREENSHOT=1 to write the page's screenshot to docs/dashboard.png (README).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import REPO, Gateway, run_gateway
from tests.fakes.openai_fake import fake_openai

ADMIN = "dashboard-admin-key-for-tests"
CHROMIUM = Path("/usr/bin/chromium")

CONFIG = """\
server: {{admin_key_env: HEDGE_TEST_DASHBOARD_ADMIN}}
ledger: {{backend: sqlite, path: {dir}/ledger.db, flush_interval_s: 0.1}}
policies:
  no-cn:
    description: no model from a Chinese lab
    origins: {{deny: [CN]}}
deployments:
  deepseek-hosted:
    kind: openai_compat
    model: deepseek-v4-pro
    base_url: {url}
    upstream_model: echo-deepseek
    hosting: hosted
    operator: DeepSeek
    operator_jurisdiction: CN
    prices: {{input: 270, output: 870}}
  mistral-hosted:
    kind: openai_compat
    model: mistral-small-4
    base_url: {url}
    upstream_model: echo-mistral
    hosting: hosted
    operator: Mistral AI
    operator_jurisdiction: FR
    prices: {{input: 100, output: 300}}
  broken:
    kind: openai_compat
    base_url: {url}
    upstream_model: fail-500
    hosting: hosted
routes:
  chat:
    deployments: [deepseek-hosted, mistral-hosted]
  cn-only:
    deployments: [deepseek-hosted]
  checked:
    cascade:
      stages:
        - deployments: [mistral-hosted]
          validators: [{{kind: regex, pattern: "^echo: "}}]
        - deployments: [deepseek-hosted]
  broken:
    deployments: [broken]
    retry: {{attempts_per_deployment: 1}}
"""


def get(url: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post(url: str, key: str) -> int:
    req = urllib.request.Request(
        url, data=b"{}", headers={"Authorization": f"Bearer {key}"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status)


def send(client: openai.OpenAI, model: str, text: str, **headers: str) -> tuple[str, int]:
    """One chat completion; (its x-request-id, its HTTP status)."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            extra_headers=headers or None,
        )
    except openai.APIStatusError as e:
        return e.response.headers["x-request-id"], e.status_code
    return raw.headers["x-request-id"], raw.status_code


def summary(gw: Gateway) -> dict[str, Any]:
    status, _, body = get(f"{gw.url}/admin/dashboard/summary", ADMIN)
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def test_the_json_endpoints_need_the_admin_key(tmp_path: Path) -> None:
    with (
        fake_openai() as fake,
        run_gateway(
            CONFIG.format(dir=tmp_path, url=fake.url),
            tmp_path,
            ready_timeout=30,
            env={"HEDGE_TEST_DASHBOARD_ADMIN": ADMIN},
        ) as gw,
    ):
        # The page holds no data and needs no key; it must not pull anything from elsewhere.
        status, headers, page = get(f"{gw.url}/dashboard")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in headers["content-security-policy"]
        assert b"deepseek" not in page and b"src=" not in page and b"href=" not in page
        assert set(re.findall(rb"https?://[^\s\"']+", page)) == {b"http://www.w3.org/2000/svg"}
        for path in ("summary", "catalog"):
            for key in (None, "wrong-key"):
                status, _, body = get(f"{gw.url}/admin/dashboard/{path}", key)
                error = json.loads(body)["error"]
                assert status == 401 and error["type"] == "authentication_error", body
                assert "HEDGE_TEST_DASHBOARD_ADMIN" in error["message"]
        status, _, body = get(f"{gw.url}/admin/dashboard/nothing", ADMIN)
        assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"
        status, _, body = get(f"{gw.url}/admin/dashboard/summary?bucket_s=0", ADMIN)
        assert status == 400 and json.loads(body)["error"]["param"] == "bucket_s"
        catalog = json.loads(get(f"{gw.url}/admin/dashboard/catalog", ADMIN)[2])
        models = {m["id"]: m for m in catalog["models"]}
        assert set(models) == {"deepseek-v4-pro", "mistral-small-4"}
        licence = models["deepseek-v4-pro"]["facts"]["licence"]
        assert licence["value"] == "MIT" and licence["source"] in catalog["sources"]


def test_the_dashboard_in_a_browser_shows_real_requests_live(tmp_path: Path) -> None:  # noqa: PLR0915
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (/usr/bin/chromium); run scripts/system-deps.sh")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    with (
        fake_openai() as fake,
        run_gateway(
            CONFIG.format(dir=tmp_path, url=fake.url),
            tmp_path,
            ready_timeout=30,
            env={"HEDGE_TEST_DASHBOARD_ADMIN": ADMIN},
        ) as gw,
    ):
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        served = [send(client, "chat", f"hello {i}") for i in range(3)]
        elsewhere = send(client, "chat", "no Chinese lab, please", **{"X-Hedge-Policy": "no-cn"})
        refused = send(client, "cn-only", "only CN", **{"X-Hedge-Policy": "no-cn"})
        judged = [send(client, "checked", f"check {i}") for i in range(2)]
        failed = send(client, "broken", "this fails")
        assert {s for _, s in [*served, elsewhere, *judged]} == {200}
        assert refused[1] == 403 and failed[1] == 502

        # The JSON first: every request, the refusals, and the ledger's spend once written.
        deadline = time.monotonic() + 10
        while not (data := summary(gw))["timeline"]["points"]:
            assert time.monotonic() < deadline, data["timeline"]
            time.sleep(0.1)
        rows = {r["request_id"]: r for r in data["requests"]}
        assert rows[elsewhere[0]]["answered_by"] == "mistral-hosted"
        assert rows[refused[0]]["status"] == 403 and rows[refused[0]]["error"] == "policy_refused"
        assert all(rows[rid]["success"] is True for rid, _ in judged)
        refusals = {
            (r["route"], r["deployment"], r["policy"], r["rule"]): r for r in data["refusals"]
        }
        assert refusals[("chat", "deepseek-hosted", "no-cn", "origins")]["refused"] == 0
        assert refusals[("cn-only", "deepseek-hosted", "no-cn", "origins")]["refused"] == 1

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{gw.url}/dashboard")
                expect = sync_api.expect

                # Signing in: a wrong key is refused, with the gateway's reason.
                expect(page.locator("#login")).to_be_visible()
                page.fill("#key", "not-the-admin-key")
                page.click("#sign-in")
                expect(page.locator("#login-error")).to_contain_text("Authorization: Bearer")
                expect(page.locator("#board")).to_be_hidden()
                page.fill("#key", ADMIN)
                page.click("#sign-in")
                expect(page.locator("#board")).to_be_visible()
                expect(page.locator("#login")).to_be_hidden()

                deployments = page.locator("#deployments")
                for name in ("deepseek-hosted", "mistral-hosted"):
                    row = deployments.locator(f'tr[data-deployment="{name}"]')
                    expect(row.locator("td.breaker")).to_have_text("closed")
                    expect(row.locator("td.revoked")).to_have_text("no")

                requests = page.locator("#requests")
                for rid, _ in served:
                    row = requests.locator(f'tr[data-request-id="{rid}"]')
                    expect(row).to_contain_text("chat")
                    expect(row).to_contain_text("deepseek-hosted")
                    expect(row.locator("td.outcome")).to_have_text("unjudged")
                expect(requests.locator(f'tr[data-request-id="{elsewhere[0]}"]')).to_contain_text(
                    "mistral-hosted"
                )
                for rid, _ in judged:
                    row = requests.locator(f'tr[data-request-id="{rid}"]')
                    expect(row).to_contain_text("checked")
                    expect(row.locator("td.outcome")).to_have_text("success")
                row = requests.locator(f'tr[data-request-id="{refused[0]}"]')
                expect(row.locator("td.outcome")).to_have_text("policy_refused")
                expect(row).to_contain_text("403")
                row = requests.locator(f'tr[data-request-id="{failed[0]}"]')
                expect(row).to_contain_text("502")

                refusal_rows = page.locator("#refusals tbody tr")
                expect(refusal_rows).to_have_count(2)
                expect(refusal_rows.first.locator("td.policy")).to_have_text("no-cn")
                expect(refusal_rows.first.locator("td.rule")).to_have_text("origins")

                # The ledger's spend, charted: one point per route that spent this minute.
                points = page.locator("#spend-chart circle.point")
                expect(points).to_have_count(len({"chat", "cn-only", "checked", "broken"}))
                expect(page.locator("#cps-chart circle.point")).to_have_count(1)  # checked

                catalog = page.locator("#catalog")
                expect(
                    catalog.locator('tr[data-model="deepseek-v4-pro"] td.licence')
                ).to_contain_text("MIT")
                expect(
                    catalog.locator('tr[data-model="mistral-small-4"] td.licence')
                ).to_contain_text("open-unspecified")

                # Live: a revocation through the admin API appears without reloading.
                assert post(f"{gw.url}/admin/deployments/mistral-hosted/revoke", ADMIN) == 200
                revoked = deployments.locator('tr[data-deployment="mistral-hosted"] td.revoked')
                expect(revoked).to_contain_text("revoked", timeout=8000)
                new = send(client, "chat", "after the revocation")
                expect(requests.locator(f'tr[data-request-id="{new[0]}"]')).to_be_visible(
                    timeout=8000
                )

                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert 10_000 < shot.stat().st_size < 300_000
                if os.environ.get("HEDGE_UPDATE_SCREENSHOT"):
                    shutil.copyfile(shot, REPO / "docs" / "dashboard.png")

                # Signing out forgets the key.
                page.click("#logout")
                expect(page.locator("#login")).to_be_visible()
                assert page.evaluate("sessionStorage.length") == 0
                assert errors == []
            finally:
                browser.close()
