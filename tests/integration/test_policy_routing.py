"""Policies through the running server: refused deployments are never called, and the client
sees why."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai

CONFIG = """\
policies:
  no-cn:
    description: no model from a Chinese lab
    origins: {{deny: [CN]}}
  sovereign:
    operator_jurisdictions: {{allow: [FR, DE]}}
  base:
    data_classes:
      pii: {{hosting: self-hosted}}
deployments:
  deepseek-hosted:
    kind: openai_compat
    model: deepseek-v4-pro
    base_url: {url}
    upstream_model: echo-deepseek
    hosting: hosted
    operator: DeepSeek
    operator_jurisdiction: CN
    prices: {{input: 0.27, output: 0.87}}
  mistral-hosted:
    kind: openai_compat
    model: mistral-small-4
    base_url: {url}
    upstream_model: echo-mistral
    hosting: hosted
    operator: Mistral AI
    operator_jurisdiction: FR
  smollm2-local:
    kind: embedded
    model: smollm2-135m-instruct
    bundled: smollm2-135m-instruct
    defaults: {{temperature: 0, max_tokens: 4}}
routes:
  chat:
    policies: [base]
    deployments: [deepseek-hosted, mistral-hosted, smollm2-local]
  cn-only:
    deployments: [deepseek-hosted]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, FakeOpenAI]]:
    with (
        fake_openai() as fake,
        run_gateway(CONFIG.format(url=fake.url), tmp_path_factory.mktemp("policy")) as gw,
    ):
        yield gw, fake


def post(
    gw: Gateway, model: str, headers: dict[str, str], **extra: Any
) -> tuple[int, dict[str, str], Any]:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            **extra,
        }
    ).encode()
    req = urllib.request.Request(
        f"{gw.v1}/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_without_narrowing_the_first_deployment_answers(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    status, headers, body = post(gw, "chat", {})
    assert status == 200, body
    assert headers["x-hedge-deployment"] == "deepseek-hosted"
    assert headers["x-hedge-origin"] == "CN"
    assert headers["x-hedge-licence"] == "MIT"
    assert headers["x-hedge-hosting"] == "hosted"
    assert headers["x-hedge-operator-jurisdiction"] == "CN"
    assert headers["x-hedge-policies"] == "base"
    assert headers["x-hedge-refused"] == ""
    assert body["choices"][0]["message"]["content"] == "echo: hello"


def test_no_cn_policy_skips_the_chinese_model_without_calling_it(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, fake = setup
    before = len(fake.hits_for("echo-deepseek"))
    status, headers, _ = post(gw, "chat", {"X-Hedge-Policy": "no-cn"})
    assert status == 200
    assert headers["x-hedge-deployment"] == "mistral-hosted"
    assert headers["x-hedge-origin"] == "FR"
    assert headers["x-hedge-policies"] == "base,no-cn"
    # SmolLM2's origin is not reported by any cited source: an origin rule fails closed.
    assert headers["x-hedge-refused"] == "deepseek-hosted,smollm2-local"
    assert len(fake.hits_for("echo-deepseek")) == before


def test_pii_stays_on_self_hosted_deployments(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, fake = setup
    hits = len(fake.hits)
    status, headers, body = post(gw, "chat", {"X-Hedge-Data-Class": "pii"})
    assert status == 200, body
    assert headers["x-hedge-deployment"] == "smollm2-local"
    assert headers["x-hedge-hosting"] == "self-hosted"
    assert headers["x-hedge-licence"] == "Apache-2.0"
    assert headers["x-hedge-refused"] == "deepseek-hosted,mistral-hosted"
    assert len(fake.hits) == hits, "no hosted upstream saw the pii request"


def test_nothing_admitted_is_a_403_listing_refusals_and_nothing_goes_upstream(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, fake = setup
    hits = len(fake.hits)
    status, _, body = post(gw, "cn-only", {"X-Hedge-Policy": "no-cn, sovereign"})
    assert status == 403
    err = body["error"]
    assert err["type"] == "permission_error" and err["code"] == "policy_refused"
    assert (
        "deepseek-hosted: refused by policy 'no-cn' (origins): model origin CN is denied"
        in (err["message"])
    )
    rules = {(r["policy"], r["rule"]) for r in err["refusals"]}
    assert rules == {("no-cn", "origins"), ("sovereign", "operator_jurisdictions")}
    assert len(fake.hits) == hits


def test_narrowing_cannot_widen(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    # The route's own policy still applies when the request adds another.
    status, headers, _ = post(
        gw, "chat", {"X-Hedge-Policy": "sovereign", "X-Hedge-Data-Class": "pii"}
    )
    assert status == 403  # pii: self-hosted only; sovereign: FR/DE operators only
    status, headers, _ = post(gw, "chat", {"X-Hedge-Policy": "sovereign"})
    assert status == 200 and headers["x-hedge-deployment"] == "mistral-hosted"


@pytest.mark.parametrize(
    ("headers", "param", "needle"),
    [
        ({"X-Hedge-Policy": "no-such"}, "X-Hedge-Policy", "Unknown policy 'no-such'"),
        ({"X-Hedge-Data-Class": "secret"}, "X-Hedge-Data-Class", "Unknown data class 'secret'"),
    ],
)
def test_unknown_narrowing_is_a_clear_400(
    setup: tuple[Gateway, FakeOpenAI], headers: dict[str, str], param: str, needle: str
) -> None:
    gw, _ = setup
    status, _, body = post(gw, "chat", headers)
    assert status == 400
    assert body["error"]["param"] == param and needle in body["error"]["message"]


def test_models_lists_admitted_deployments_with_provenance(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, _ = setup
    with urllib.request.urlopen(f"{gw.v1}/models", timeout=10) as r:
        cards = {m["id"]: m for m in json.loads(r.read())["data"]}
    chat = cards["chat"]
    assert chat["policies"] == ["base"]
    assert [d["name"] for d in chat["deployments"]] == [
        "deepseek-hosted",
        "mistral-hosted",
        "smollm2-local",
    ]
    first = chat["deployments"][0]
    assert (first["licence"], first["origin"], first["hosting"]) == ("MIT", "CN", "hosted")
    assert chat["deployments"][1]["origin"] == "FR"


def test_a_policy_naming_an_unknown_licence_is_refused_at_start_up(tmp_path: Path) -> None:
    bad = CONFIG.format(url="http://127.0.0.1:9/v1").replace(
        "origins: {deny: [CN]}", "licences: {allow: [MIT, BSD-9]}"
    )
    with (
        pytest.raises(RuntimeError, match="exited with 2"),
        run_gateway(bad, tmp_path, ready_timeout=30),
    ):
        pass
    log = next(tmp_path.glob("hedge-*.log")).read_text()
    assert "policies.no-cn.licences.allow[1]" in log and "unknown licence 'BSD-9'" in log


def test_the_body_field_narrows_like_the_headers(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, fake = setup
    hits = len(fake.hits_for("echo-deepseek"))
    status, headers, _ = post(gw, "chat", {}, hedge={"policies": ["no-cn"]})
    assert status == 200 and headers["x-hedge-deployment"] == "mistral-hosted"
    assert headers["x-hedge-policies"] == "base,no-cn"
    status, headers, _ = post(gw, "chat", {}, hedge={"data_class": "pii"})
    assert status == 200 and headers["x-hedge-deployment"] == "smollm2-local"
    # header and body add up
    status, _, body = post(
        gw, "cn-only", {"X-Hedge-Policy": "sovereign"}, hedge={"policies": ["no-cn"]}
    )
    assert status == 403 and {r["policy"] for r in body["error"]["refusals"]} == {
        "no-cn",
        "sovereign",
    }
    # the field never reaches the upstream
    status, _, _ = post(gw, "chat", {}, hedge={"policies": []})
    assert status == 200
    last = fake.hits_for("echo-deepseek")[-1]
    assert "hedge" not in last.body
    assert len(fake.hits_for("echo-deepseek")) == hits + 1


def test_conflicting_data_classes_are_refused(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    status, _, body = post(
        gw, "chat", {"X-Hedge-Data-Class": "pii"}, hedge={"data_class": "public"}
    )
    assert status == 400 and body["error"]["param"] == "hedge.data_class"
