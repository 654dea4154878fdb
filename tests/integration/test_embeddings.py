"""POST /v1/embeddings through a running `hedge serve`, with the official `openai` SDK.

all-MiniLM-L6-v2 runs in-process for real; the fake OpenAI-compatible upstream stands in for a
hosted embeddings API (deterministic vectors, failures chosen by model name). Everything goes
through the same routes, policies, breakers, fail-over and ledger as chat.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai, fake_vector

CONFIG = """\
ledger: {{backend: sqlite, path: {db}, flush_interval_s: 0.2}}
policies:
  local-only:
    hosting: self-hosted
deployments:
  minilm-local:
    kind: embedded_embeddings
    model: all-minilm-l6-v2
    bundled: all-minilm-l6-v2
    max_batch: 64
    max_wait_ms: 20
  broken:
    kind: openai_compat
    base_url: {url}
    upstream_model: fail-500#emb
    hosting: hosted
  wrong-size:
    kind: openai_compat
    base_url: {url}
    upstream_model: ignores-dimensions#emb
    hosting: hosted
  hosted-embedder:
    kind: openai_compat
    base_url: {url}
    upstream_model: embed-32#emb
    hosting: hosted
    prices: {{input: 0.02}}
  qwen-chat:
    kind: openai_compat
    base_url: {url}
    model: qwen3.6-35b-a3b
    upstream_model: qwen-chat#emb
    hosting: hosted
  chat-only:
    kind: anthropic
    base_url: {url}
    upstream_model: claude-fake
    api_key_env: FAKE_ANTHROPIC_KEY
routes:
  minilm:
    deployments: [minilm-local]
  failover:
    deployments: [broken, hosted-embedder]
    retry: {{attempts_per_deployment: 1}}
  sized:
    deployments: [wrong-size, hosted-embedder]
  hosted-only:
    deployments: [hosted-embedder]
    policies: [local-only]
  either:
    deployments: [hosted-embedder, minilm-local]
  claude:
    deployments: [chat-only]
  chat-first:
    deployments: [qwen-chat, hosted-embedder]
"""

PARAPHRASES = ("A man is playing a guitar.", "Someone is strumming a guitar.")
UNRELATED = "The central bank raised interest rates by half a point."


@dataclass
class Setup:
    gw: Gateway
    fake: FakeOpenAI
    db: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("embeddings")
    db = tmp / "ledger.db"
    with (
        fake_openai() as fake,
        run_gateway(
            CONFIG.format(url=fake.url, db=db), tmp, env={"FAKE_ANTHROPIC_KEY": "sk-fake"}
        ) as gw,
    ):
        yield Setup(gw, fake, db)


def client(s: Setup) -> OpenAI:
    return OpenAI(base_url=s.gw.v1, api_key="any-key", max_retries=0, timeout=60)


def vec(values: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.asarray(values, dtype=np.float32)


def cosine(a: Any, b: Any) -> float:
    x, y = vec(a), vec(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def stats(s: Setup, deployment: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{s.gw.url}/admin/deployments", timeout=10) as r:
        out: dict[str, int] = json.loads(r.read())["deployments"][deployment]["stats"]
    return out


# ---- the embedded model ----------------------------------------------------------------------


def test_a_single_string(setup: Setup) -> None:
    raw = client(setup).embeddings.with_raw_response.create(
        model="minilm",
        input="The quick brown fox jumps over the lazy dog.",
        encoding_format="float",
    )
    r = raw.parse()
    assert r.object == "list" and r.model == "minilm"
    (item,) = r.data
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == 384
    assert abs(float(np.linalg.norm(vec(item.embedding))) - 1.0) < 1e-4
    # Nine words and a full stop, with [CLS] and [SEP]; an embedding has no completion tokens.
    assert r.usage.prompt_tokens == r.usage.total_tokens == 12
    assert raw.headers["x-hedge-deployment"] == "minilm-local"
    assert raw.headers["x-hedge-model"] == "all-minilm-l6-v2"
    assert raw.headers["x-hedge-licence"] == "Apache-2.0"
    assert raw.headers["x-hedge-operator"] == "self"


def test_a_batch_keeps_input_order_and_adds_up_usage(setup: Setup) -> None:
    c = client(setup)
    texts = ["first text", "a second, longer piece of text", "third"]
    batch = c.embeddings.create(model="minilm", input=texts, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1, 2]
    singles = [c.embeddings.create(model="minilm", input=t, encoding_format="float") for t in texts]
    for item, single in zip(batch.data, singles, strict=True):
        assert np.allclose(vec(item.embedding), vec(single.data[0].embedding), atol=1e-5)
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)


def test_base64_decodes_to_the_float_answer(setup: Setup) -> None:
    c = client(setup)
    texts = ["base64 carries float32 bytes", "exactly the same values"]
    floats = c.embeddings.create(model="minilm", input=texts, encoding_format="float")
    packed = c.embeddings.create(model="minilm", input=texts, encoding_format="base64")
    default = c.embeddings.create(model="minilm", input=texts)  # the SDK asks for base64
    for f, b, d in zip(floats.data, packed.data, default.data, strict=True):
        assert isinstance(b.embedding, str)
        decoded = np.frombuffer(base64.b64decode(b.embedding), dtype="<f4")
        assert decoded.shape == (384,)
        assert np.array_equal(decoded, vec(f.embedding))  # bit for bit
        assert np.array_equal(vec(d.embedding), vec(f.embedding))


def test_the_same_text_gives_the_same_vector(setup: Setup) -> None:
    c = client(setup)
    text = "Determinism matters for caches and tests."
    first = c.embeddings.create(model="minilm", input=text, encoding_format="float")
    again = c.embeddings.create(model="minilm", input=text, encoding_format="float")
    assert first.data[0].embedding == again.data[0].embedding


def test_paraphrases_are_closer_than_an_unrelated_pair(setup: Setup) -> None:
    r = client(setup).embeddings.create(
        model="minilm", input=[*PARAPHRASES, UNRELATED], encoding_format="float"
    )
    a, b, other = (d.embedding for d in r.data)
    assert cosine(a, b) > 0.6
    assert cosine(a, b) > cosine(a, other) + 0.4
    assert cosine(a, b) > cosine(b, other) + 0.4


def test_dimensions_is_refused_with_a_clear_400(setup: Setup) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(setup).embeddings.create(model="minilm", input="hello", dimensions=128)
    body = info.value.body
    assert isinstance(body, dict)
    assert info.value.status_code == 400 and body["code"] == "unsupported_parameter"
    assert "'dimensions' is not supported" in body["message"]
    assert "minilm-local" in body["message"] and "384" in body["message"]


def test_concurrent_requests_are_batched_into_fewer_encode_calls(setup: Setup) -> None:
    n = 32
    texts = [f"concurrent request number {i}" for i in range(n)]
    before = stats(setup, "minilm-local")

    async def main() -> list[Any]:
        c = AsyncOpenAI(base_url=setup.gw.v1, api_key="any-key", max_retries=0, timeout=60)
        try:
            return await asyncio.gather(
                *(
                    c.embeddings.create(model="minilm", input=t, encoding_format="float")
                    for t in texts
                )
            )
        finally:
            await c.close()

    answers = asyncio.run(main())
    after = stats(setup, "minilm-local")
    calls = after["encode_calls"] - before["encode_calls"]
    assert after["texts"] - before["texts"] == n
    assert 1 <= calls < n // 2, f"{n} concurrent requests took {calls} encode calls"
    assert after["largest_batch"] > 1
    # Each answer is its own text's vector, batched or not.
    alone = client(setup).embeddings.create(model="minilm", input=texts[5], encoding_format="float")
    assert np.allclose(vec(answers[5].data[0].embedding), vec(alone.data[0].embedding), atol=1e-5)


# ---- routes, policies, fail-over, ledger --------------------------------------------------------


def test_a_policy_refusal_is_a_403_and_calls_nobody(setup: Setup) -> None:
    setup.fake.reset()
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(setup).embeddings.create(model="hosted-only", input="secret text")
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "policy_refused"
    assert [r["deployment"] for r in body["refusals"]] == ["hosted-embedder"]
    assert setup.fake.hits == []


def test_a_caller_policy_narrows_an_embeddings_route(setup: Setup) -> None:
    setup.fake.reset()
    raw = client(setup).embeddings.with_raw_response.create(
        model="either",
        input="stays on this machine",
        encoding_format="float",
        extra_headers={"X-Hedge-Policy": "local-only"},
    )
    assert raw.headers["x-hedge-deployment"] == "minilm-local"
    assert raw.headers["x-hedge-refused"] == "hosted-embedder"
    assert len(raw.parse().data[0].embedding) == 384
    assert setup.fake.hits == []


def test_fail_over_from_a_failing_upstream_is_recorded(setup: Setup) -> None:
    setup.fake.reset()
    texts = ["fail over, please", "and keep the order"]
    raw = client(setup).embeddings.with_raw_response.create(
        model="failover", input=texts, encoding_format="float"
    )
    r = raw.parse()
    assert raw.headers["x-hedge-deployment"] == "hosted-embedder"
    assert raw.headers["x-hedge-attempts"] == "2"
    assert [h.base for h in setup.fake.hits] == ["fail-500", "embed-32"]
    for item, text in zip(r.data, texts, strict=True):
        assert np.array_equal(vec(item.embedding), vec(fake_vector(text, 32)))
    words = sum(len(t.split()) for t in texts)  # the fake's token count
    assert r.usage.prompt_tokens == words == 7

    request_id = raw.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(setup.db) as con:
            row = con.execute(
                "SELECT route, answered_by, status, cost_usd FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            attempts = con.execute(
                "SELECT deployment, prompt_tokens, error FROM attempts WHERE request_id = ? "
                "ORDER BY seq",
                (request_id,),
            ).fetchall()
        if row is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert row is not None, "the request never reached the ledger"
    route, answered_by, status, cost = row
    assert (route, answered_by, status) == ("failover", "hosted-embedder", 200)
    assert cost == pytest.approx(words * 0.02 / 1_000_000)
    assert [a[0] for a in attempts] == ["broken", "hosted-embedder"]
    assert "500" in attempts[0][2] and attempts[1] == ("hosted-embedder", words, None)


def test_dimensions_pass_to_an_upstream_and_a_wrong_size_fails_over(setup: Setup) -> None:
    setup.fake.reset()
    raw = client(setup).embeddings.with_raw_response.create(
        model="sized", input="eight numbers", dimensions=8, encoding_format="float"
    )
    assert raw.headers["x-hedge-deployment"] == "hosted-embedder"
    assert len(raw.parse().data[0].embedding) == 8
    # The first upstream ignored `dimensions`: its 16 numbers were not passed off as 8.
    assert [h.base for h in setup.fake.hits] == ["ignores-dimensions", "embed-32"]
    assert all(h.body["dimensions"] == 8 for h in setup.fake.hits)


def test_chat_and_embeddings_backends_refuse_each_other(setup: Setup) -> None:
    c = client(setup)
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model="claude", input="hello")
    assert "chat-only: serves chat completions only, not embeddings" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert "minilm-local: its model 'all-minilm-l6-v2' is an embedding model" in str(info.value)


def test_a_chat_model_on_an_openai_compatible_server_is_never_asked_to_embed(
    setup: Setup,
) -> None:
    """The catalog says qwen3.6 is a chat model: its server (which speaks OpenAI's wire, so
    could be asked) is skipped, so its breaker never counts the 404 it would answer."""
    setup.fake.reset()
    raw = client(setup).embeddings.with_raw_response.create(model="chat-first", input="hi")
    assert raw.headers["x-hedge-deployment"] == "hosted-embedder"
    assert raw.headers["x-hedge-attempts"] == "1"
    assert [h.base for h in setup.fake.hits] == ["embed-32"]


# ---- bad input ---------------------------------------------------------------------------------

EMB = "/v1/embeddings"
DROP = object()


def body(**fields: Any) -> bytes:
    data: dict[str, Any] = {"model": "minilm", "input": "hello"}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not DROP}).encode()


@dataclass(frozen=True)
class Bad:
    id: str
    raw: bytes
    status: int
    code: str
    param: str | None
    says: tuple[str, ...]
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()


def bad(
    id: str, raw: bytes, status: int, code: str, param: str | None, *says: str, **kw: Any
) -> Any:
    return pytest.param(Bad(id, raw, status, code, param, says, **kw), id=id)


def invalid(id: str, raw: bytes, param: str, *says: str) -> Any:
    return bad(id, raw, 400, "invalid_request", param, *says)


def unsupported(id: str, raw: bytes, *says: str) -> Any:
    return bad(id, raw, 400, "unsupported_parameter", None, *says)


# fmt: off
CASES = [
    bad("empty-body", b"", 400, "invalid_json", None, "body is empty"),
    bad("not-json", b'{"model": "minilm", "input": ', 400, "invalid_json", None, "not valid JSON"),
    bad("array-body", b'["hello"]', 400, "invalid_json", None, "a JSON object, not an array"),
    invalid("missing-model", body(model=DROP), "model", "this field is required"),
    invalid("model-empty", body(model=""), "model", "at least 1 character"),
    bad("unknown-model", body(model="text-embedding-3-small"), 404, "model_not_found", "model",
        "'text-embedding-3-small'", "Available models:", "minilm"),
    invalid("missing-input", body(input=DROP), "input", "this field is required"),
    invalid("input-null", body(input=None), "input", "valid list or a valid string"),
    invalid("input-empty-string", body(input=""), "input", "must not be an empty string"),
    invalid("input-empty-array", body(input=[]), "input", "must not be an empty array"),
    invalid("input-empty-item", body(input=["ok", ""]), "input[1]", "must not be empty"),
    invalid("input-number", body(input=42), "input", "valid list or a valid string",
            "got a number: 42"),
    invalid("input-object", body(input={"text": "hi"}), "input", "valid list or a valid string"),
    invalid("input-mixed", body(input=["a", 1]), "input[1]", "mixes kinds", "item 0 is a string"),
    invalid("input-null-item", body(input=[None]), "input[0]", "got null"),
    invalid("input-negative-token", body(input=[[1, 2], [-3]]), "input[1][0]", "non-negative"),
    invalid("input-too-many", body(input=["x"] * 2049), "input", "at most 2048"),
    invalid("encoding-format", body(encoding_format="hex"), "encoding_format",
            "'float' or 'base64'"),
    invalid("dimensions-zero", body(dimensions=0), "dimensions", "greater than or equal to 1"),
    invalid("dimensions-quoted", body(dimensions="384"), "dimensions", "without quotes"),
    invalid("dimensions-bool", body(dimensions=True), "dimensions", "valid integer"),
    invalid("user-number", body(user=5), "user", "valid string"),
    invalid("hedge-policies", body(hedge={"policies": "local-only"}), "hedge.policies",
            "valid list"),
    unsupported("dimensions-on-minilm", body(dimensions=384), "minilm-local",
                "'dimensions' is not supported"),
    unsupported("token-ids-on-minilm", body(input=[101, 7592, 102]), "minilm-local",
                "token-array input is not supported"),
    unsupported("unknown-field-on-minilm", body(input_type="query"), "minilm-local",
                "input_type"),
    unsupported("chat-only-route", body(model="claude"), "chat-only",
                "serves chat completions only"),
    bad("too-long-input", body(input=["fine", "word " * 300]), 400, "context_length_exceeded",
        "input", "input[1] is 302 tokens", "at most 256", "does not truncate"),
    bad("unknown-policy", body(), 400, "invalid_request", "X-Hedge-Policy",
        "Unknown policy 'nope'", headers=(("X-Hedge-Policy", "nope"),)),
    bad("get", b"", 405, "method_not_allowed", None, "GET is not allowed on /v1/embeddings",
        method="GET"),
    bad("too-large", body(input="x" * (4 * 1024 * 1024)), 413, "request_too_large", None,
        "server.max_body_bytes"),
]
# fmt: on


def send(gw: Gateway, case: Bad) -> tuple[int, bytes]:
    url = urlsplit(gw.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    try:
        headers = {"Content-Type": "application/json", **dict(case.headers)}
        conn.request(case.method, EMB, body=case.raw or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_precise_openai_error(setup: Setup, case: Bad) -> None:
    status, raw = send(setup.gw, case)
    assert status == case.status, raw[:500]
    error = json.loads(raw)["error"]
    assert (error["code"], error["param"]) == (case.code, case.param), error
    assert error["type"] == "invalid_request_error"
    for piece in case.says:
        assert piece in error["message"], error["message"]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 15
    assert len({c.values[0].id for c in CASES}) == len(CASES)


def test_still_serving_after_the_bad_input(setup: Setup) -> None:
    r = client(setup).embeddings.create(model="minilm", input="still here")
    assert len(r.data[0].embedding) == 384
